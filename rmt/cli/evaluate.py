"""`rmt eval`: evaluate a saved memory model on a synthetic task, a data file, or BABILong by input length.

    rmt eval runs/copy/model --task copy --task-size 24 --segments 3
    rmt eval runs/mine/model --data valid.jsonl
    rmt eval runs/qa1/model --data babilong:qa1,qa2 --lengths 0k,1k,4k,16k,64k,128k,1M --samples 100 \\
        --methods memory,no_memory,full_attention --output runs/qa1/by-length

By length, it prints the accuracy table (task x length, 95% intervals), writes results.json, predictions.jsonl (every
answer), table.md, accuracy.png (the methods side by side) and a heatmap per method to --output, and shows a progress
bar with tokens/s. `--samples 0k=100,1M=10` sets counts per length.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmt.cli.common import FACTS_HELP, add_runtime_arguments, add_task_arguments, apply_runtime, make_task
from rmt.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a saved memory model (synthetic task, data file, or BABILong by length)",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="folder written by save_pretrained (e.g. OUTPUT/model)")
    add_task_arguments(parser, default_task=None)
    parser.add_argument("--data", default=None, help="a data file, or babilong:TASK[,TASK...] to evaluate by length")
    parser.add_argument("--batches", type=int, default=4, help="task/file: evaluation batches (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="task/file: batch size (default: %(default)s)")
    babilong = parser.add_argument_group("BABILong by length")
    babilong.add_argument("--lengths", default="0k,1k,4k,16k", help="lengths, e.g. 0k,1k,4k,16k,64k,128k,1M")
    babilong.add_argument("--samples", default="100", help="samples per length: N, or LENGTH=N,... (default: 100)")
    babilong.add_argument(
        "--methods",
        default="memory",
        help="comma-separated: memory, no_memory (same segments, no memory carried), full_attention (the backbone "
        "reading its own window, the input's last tokens beyond it) (default: %(default)s)",
    )
    babilong.add_argument("--window", type=int, default=None, help="full_attention window (default: the backbone's)")
    babilong.add_argument(
        "--full-attention-model",
        default=None,
        help="backbone for full_attention (e.g. smollm2 for the original model; default: the checkpoint's own)",
    )
    babilong.add_argument("--max-new-tokens", type=int, default=8, help="decoders: answer tokens to generate")
    babilong.add_argument("--haystack", default=None, help="background text files, comma-separated (default: built-in)")
    babilong.add_argument(
        "--babilong-dir", default=None, help="read samples from BABILong files DIR/data/<task>/<length>.json instead"
    )
    babilong.add_argument("--facts", default=None, help=FACTS_HELP)
    babilong.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default: %(default)s)")
    babilong.add_argument(
        "--output", default=None, help="folder for results.json, predictions.jsonl, table.md and plots"
    )
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rmt.cli.train import babilong_num_facts, babilong_tasks
    from rmt.memory.recurrent import RecurrentMemoryModel

    device = apply_runtime(args)
    for name in ("batches", "batch_size"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.data is not None and args.task is not None:
        raise InputError("give either --task or --data, not both")
    tasks = babilong_tasks(args.data or "")
    num_facts = babilong_num_facts(args.facts, tasks)  # refused without BABILong data
    model = RecurrentMemoryModel.from_pretrained(args.checkpoint).to(device).eval()
    if tasks:
        return _by_length(args, model, tasks, num_facts)
    if args.data is not None:
        return _on_file(args, model)
    return _on_task(args, model)


def _on_task(args: argparse.Namespace, model) -> int:
    import sys

    from rmt.data.sources import TaskSource
    from rmt.train.evaluate import evaluate

    name = args.task or "copy"
    task = make_task(name, args.task_size, args.segments)
    if task.vocab_size > model.vocab_size:
        raise InputError(
            f"the {name} task uses {task.vocab_size} token ids but the model embeds only {model.vocab_size}"
        )
    if task.segment_size_for(args.segments) != model.config.segment_size and name != "detect_memorize":
        print(
            f"note: the model was trained with segment_size={model.config.segment_size}; "
            f"{args.segments} segments of this task would need {task.segment_size_for(args.segments)}",
            file=sys.stderr,
        )
    scores = evaluate(model, TaskSource(task), batches=args.batches, batch_size=args.batch_size)
    print(json.dumps({"checkpoint": str(args.checkpoint), "task": name, **scores}, indent=2))
    return 0


def _on_file(args: argparse.Namespace, model) -> int:
    from rmt.build import pretrained_tokenizer
    from rmt.data.collate import QACollator, TextCollator
    from rmt.data.files import DatasetSource, load_records, record_shape
    from rmt.train.evaluate import evaluate

    tokenizer = pretrained_tokenizer(args.checkpoint)
    records = load_records(args.data, streaming=False)
    shape = record_shape(records.column_names, args.data)
    if shape == "qa":
        labels = None
        if model.config.mode == "encoder":
            config = model.backbone.config
            labels = [config.id2label[i] for i in range(config.num_labels)]
        collate, metric = QACollator(tokenizer, model.config.mode, labels), "accuracy"
    else:
        collate, metric = TextCollator(tokenizer), "loss"
    source = DatasetSource(records, collate, validation=records, metric=metric)
    scores = evaluate(model, source, batches=args.batches, batch_size=args.batch_size)
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), **scores}, indent=2))
    return 0


def _by_length(args: argparse.Namespace, model, tasks: list[str], num_facts: int | tuple[int, int] | None) -> int:
    from rmt.build import pretrained_backbone, pretrained_tokenizer
    from rmt.cli.train import load_background
    from rmt.data.babilong import babilong_file, length_name, load_babilong, parse_length
    from rmt.eval.by_length import evaluate_by_length, format_table

    if num_facts is not None and args.babilong_dir:
        raise InputError("--facts sets the facts of generated samples; the files of --babilong-dir have their own")
    lengths = [length_name(parse_length(item)) for item in args.lengths.split(",") if item]
    samples = parse_samples(args.samples, lengths)
    methods = [m for m in args.methods.split(",") if m]
    tokenizer = pretrained_tokenizer(args.checkpoint)
    files = None
    haystack = None
    if args.babilong_dir:
        files = {(t, n): load_babilong(babilong_file(args.babilong_dir, t, n)) for t in tasks for n in lengths}
    elif any(parse_length(n) > 0 for n in lengths):
        haystack = load_background(args.haystack)
    baseline = None
    if args.full_attention_model and "full_attention" in methods:
        baseline = pretrained_backbone(args.full_attention_model, mode=model.config.mode).to(model.device).eval()
    results = evaluate_by_length(
        model,
        tokenizer,
        tasks,
        lengths,
        samples,
        haystack=haystack,
        seed=args.seed,
        methods=methods,
        window=args.window,
        max_new_tokens=args.max_new_tokens,
        output_dir=args.output,
        progress=not args.no_progress,
        files=files,
        full_attention_backbone=baseline,
        num_facts=num_facts,
    )
    print(format_table(results))
    if args.output:
        print(f"\nwrote {Path(args.output) / 'results.json'}, predictions.jsonl, table.md and plots")
    return 0


def parse_samples(text: str, lengths: list[str]) -> dict[str, int]:
    """'100' -> the same count for every length; '0k=100,1M=10' -> per length (lengths not named: the first count)."""
    from rmt.data.babilong import length_name, parse_length

    try:
        if "=" not in text:
            counts = dict.fromkeys(lengths, int(text))
        else:
            named = {length_name(parse_length(k)): int(v) for k, v in (item.split("=") for item in text.split(","))}
            default = next(iter(named.values()))
            counts = {name: named.get(name, default) for name in lengths}
    except ValueError as err:
        raise InputError(f"--samples must look like 100 or 0k=100,1M=10, got {text!r}") from err
    if any(c <= 0 for c in counts.values()):
        raise InputError(f"--samples must be > 0, got {text!r}")
    return counts
