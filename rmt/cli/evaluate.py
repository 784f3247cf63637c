"""Evaluate a saved memory model on a synthetic task, a data file, or BABILong by input length.

    rmt eval runs/copy/model --task copy --task-size 24 --segments 3
    rmt eval runs/mine/model --data valid.jsonl
    rmt eval runs/qa1/model --data babilong:qa1,qa2 --lengths 0k,1k,4k,16k,64k,128k,1M --samples 100 \\
        --methods memory,no_memory,full_attention --output runs/qa1/by-length

A data file: the first --batches x --batch-size records are scored (the output says how many of how many), the loss
averaged over every scored target (token or sample), whatever the batch size.

By length, it prints the accuracy table (task x length, 95% intervals), writes results.json, predictions.jsonl (every
answer), table.md, accuracy.png (the methods side by side) and a heatmap per method to --output after every finished
cell, and shows a progress bar with tokens/s. Every setting, and every sample (generated, or read from
--babilong-dir), is checked before the first cell runs. An --output that holds an earlier run's results is refused
unless --overwrite is given; the earlier files are then replaced when the first cell is written. --resume continues
an interrupted run in --output instead: given the flags results.json records (--threads, --device and --no-progress
aside), the same model weights and the same --haystack, --babilong-dir and --full-attention-model contents (each
recorded as a fingerprint), it keeps the cells measured there and computes only the others, as an
uninterrupted run would have; when every cell is there it says so and rewrites nothing. `--samples 0k=100,1M=10`
sets counts per length (the lengths not named get 100, or the bare count given: `--samples 50,1M=10`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rmt.cli.common import (
    DEFAULT_SEGMENTS,
    FACTS_HELP,
    TASK_SIZE_DEFAULTS,
    add_runtime_arguments,
    add_task_arguments,
    apply_runtime,
    flag_with_value,
    task_from_flags,
)
from rmt.cli.data_flags import DEFAULT_SEED, babilong_tasks, check_data_files, facts_setting, text_collator
from rmt.cli.evaluate_by_length import (
    DEFAULT_LENGTHS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHODS,
    DEFAULT_SAMPLES,
    DTYPE_SETTING,
    by_length_plan,
    check_same_weights,
    run_by_length,
    weights_dtype,
)
from rmt.errors import InputError

if TYPE_CHECKING:
    import torch

    from rmt.memory.recurrent import RecurrentMemoryModel

DEFAULT_BATCHES = 4
DEFAULT_BATCH_SIZE = 64

# The flags that only one kind of evaluation reads (dest names); each defaults to None so that a flag given to a kind
# that does not read it is refused rather than ignored.
SYNTHETIC_FLAGS = ("task_size", "segments")
BATCH_FLAGS = ("batches", "batch_size")
TEXT_FILE_FLAGS = ("max_length",)
BY_LENGTH_FLAGS = (
    "lengths",
    "samples",
    "methods",
    "window",
    "full_attention_model",
    "max_new_tokens",
    "haystack",
    "babilong_dir",
    "seed",
    "output",
    "overwrite",
    "resume",
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="evaluate a saved memory model (synthetic task, data file, or BABILong by length)",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="folder written by save_pretrained (e.g. OUTPUT/model), or its Hugging Face Hub id (owner/name)",
    )
    segments_help = (
        "synthetic tasks: detect_memorize's number of segments (the sample's length); the other tasks are cut as "
        "the model cuts them (a --segments that differs is refused), and so are a data file and BABILong"
    )
    add_task_arguments(
        parser,
        default_task=None,
        segments_given=True,
        segments_help=segments_help,
        segments_default=f"{DEFAULT_SEGMENTS} for detect_memorize",
    )
    parser.add_argument("--data", default=None, help="a data file, or babilong:TASK[,TASK...] to evaluate by length")
    parser.add_argument(
        "--batches", type=int, default=None, help=f"task/file: evaluation batches (default: {DEFAULT_BATCHES})"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"task/file: batch size (default: {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="text data file: cut documents to this many tokens, as rmt train --max-length did (default: whole "
        "documents)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("fp32", "bf16"),
        help="the weights' dtype, and so the computation's, for the memory model and a --full-attention-model "
        "(default: the checkpoint's own)",
    )
    babilong = parser.add_argument_group("BABILong by length")
    babilong.add_argument(
        "--lengths", default=None, help=f"lengths, e.g. 0k,1k,4k,16k,64k,128k,1M (default: {DEFAULT_LENGTHS})"
    )
    babilong.add_argument(
        "--samples",
        default=None,
        help=f"samples per length: N for every length, or LENGTH=N,... for the lengths named, the others getting "
        f"{DEFAULT_SAMPLES} or a bare N given with them (50,1M=10); a named length must be one of --lengths "
        f"(default: {DEFAULT_SAMPLES})",
    )
    babilong.add_argument(
        "--methods",
        default=None,
        help="comma-separated: memory, no_memory (same segments, no memory carried), full_attention (the backbone "
        f"reading its own window, the input's last tokens beyond it) (default: {DEFAULT_METHODS})",
    )
    babilong.add_argument(
        "--window",
        type=int,
        default=None,
        help="full_attention: tokens it reads, 1 to the backbone's positions (2 fewer for an encoder; a decoder's "
        "window also holds the --max-new-tokens answer) (default: the backbone's)",
    )
    babilong.add_argument(
        "--full-attention-model",
        default=None,
        help="backbone for full_attention (e.g. smollm2 for the original model; default: the checkpoint's own), read "
        "in the memory model's dtype (the checkpoint's, or --dtype)",
    )
    babilong.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"decoders: answer tokens to generate (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    babilong.add_argument("--haystack", default=None, help="background text files, comma-separated (default: built-in)")
    babilong.add_argument(
        "--babilong-dir", default=None, help="read samples from BABILong files DIR/data/<task>/<length>.json instead"
    )
    babilong.add_argument("--facts", default=None, help=FACTS_HELP)
    babilong.add_argument(
        "--seed", type=int, default=None, help=f"seed of the generated samples (default: {DEFAULT_SEED})"
    )
    babilong.add_argument(
        "--output", default=None, help="folder for results.json, predictions.jsonl, table.md and plots"
    )
    babilong.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --output (refused without it)",
    )
    babilong.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --output: keep its cells, compute the missing ones (the flags must be "
        "the run's, which results.json records)",
    )
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rmt.memory.memory_file import sampled_weights_fingerprint
    from rmt.memory.pretrained import local_checkpoint

    device = apply_runtime(args)
    if args.data is not None and args.task is not None:
        raise InputError("give either --task or --data, not both")
    check_data_files(args.data)
    tasks = babilong_tasks(args.data or "")
    kind = "by_length" if tasks else "file" if args.data is not None else "task"
    refuse_unused_flags(args, kind)
    num_facts = facts_setting(args.facts, tasks, "--data babilong:TASK")  # refused without BABILong data
    # A hub id: its snapshot, with its tokenizer in backbone/; after the checks of the flags (a mistyped local path
    # reads as a hub id, and its error would hide theirs), before the plan records the checkpoint's path.
    args.checkpoint = local_checkpoint(args.checkpoint)
    if kind == "by_length":
        plan = by_length_plan(args, tasks, num_facts)  # every check that needs no model, before loading it
        if plan.earlier is not None:
            results = Path(args.output) / "results.json"
            if not plan.todo:  # no model to load
                from rmt.eval.by_length import format_table

                print(format_table(plan.earlier))
                print(f"\n{results} holds every cell already: nothing computed, no file rewritten", file=sys.stderr)
                return 0
        model = _load_model(args, device)
        plan.weights = sampled_weights_fingerprint(model)  # recorded with the results, and checked on a resume
        plan.dtype = weights_dtype(model)
        if plan.earlier is not None:
            check_same_weights(args, plan.earlier, plan.weights, plan.dtype)
            if DTYPE_SETTING not in plan.earlier["settings"]:  # cells kept from a results.json that did not say
                plan.dtype = None

        return run_by_length(args, model, plan)
    args.batches = DEFAULT_BATCHES if args.batches is None else args.batches
    args.batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    for name in ("batches", "batch_size"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    model = _load_model(args, device)
    if kind == "file":
        return _on_file(args, model)
    return _on_task(args, model)


def _load_model(args: argparse.Namespace, device: torch.device) -> RecurrentMemoryModel:
    """The checkpoint's model on `device`, in --dtype when that is given."""
    from rmt.build import DTYPES
    from rmt.memory.recurrent import RecurrentMemoryModel

    dtype = {} if args.dtype is None else {"dtype": DTYPES[args.dtype]}
    return RecurrentMemoryModel.from_pretrained(args.checkpoint, **dtype).to(device).eval()


def refuse_unused_flags(args: argparse.Namespace, kind: str) -> None:
    """Refuse the flags that the kind of evaluation asked for ("task", "file" or "by_length") does not read: ignored,
    they would change nothing while the user thinks they did."""
    unused = {
        "task": (
            (BY_LENGTH_FLAGS, "BABILong by length (--data babilong:TASK)"),
            (TEXT_FILE_FLAGS, "a data file of text (--data FILE)"),
        ),
        "file": (
            (SYNTHETIC_FLAGS, "synthetic tasks (--task)"),
            (BY_LENGTH_FLAGS, "BABILong by length (--data babilong:TASK)"),
        ),
        "by_length": (
            (SYNTHETIC_FLAGS, "synthetic tasks (--task)"),
            (BATCH_FLAGS, "a synthetic task or a data file (--task or --data FILE)"),
            (TEXT_FILE_FLAGS, "a data file of text (--data FILE)"),
        ),
    }[kind]
    current = {
        "task": f"--task {args.task or 'copy'}",
        "file": f"--data {args.data}",
        "by_length": f"--data {args.data}",
    }
    for names, purpose in unused:
        given = [
            flag_with_value(args, name)
            for name in names
            if getattr(args, name) is not None and getattr(args, name) is not False
        ]
        if given:
            raise InputError(f"{', '.join(given)}: only for {purpose}, not with {current[kind]}")


def _on_task(args: argparse.Namespace, model: RecurrentMemoryModel) -> int:
    from rmt.data.sources import TaskSource
    from rmt.train.evaluation import evaluate

    name = args.task or "copy"
    if model.config.mode == "encoder":
        raise InputError(f"{args.checkpoint} is an encoder (it answers with a class); synthetic tasks score a decoder")
    segments = DEFAULT_SEGMENTS if args.segments is None else args.segments
    task = task_from_flags(name, args.task_size, segments)
    if task.vocab_size > model.vocab_size:
        raise InputError(
            f"the {name} task uses {task.vocab_size} token ids but the model embeds only {model.vocab_size}"
        )
    size = model.config.segment_size
    cut = -(-task.sequence_length // size)  # the segments the model cuts a sample into
    if name == "detect_memorize":  # --segments sets the sample's length; its task size is its segment size
        if task.segment_size_for(segments) != size:
            print(
                f"note: the model was trained with segment_size={size}; "
                f"{segments} segments of this task would need {task.segment_size_for(segments)}",
                file=sys.stderr,
            )
    else:  # the sample's length is the task's: the model's segment size decides the segments
        if args.task_size is None and name in TASK_SIZE_DEFAULTS:  # nothing in a saved model says its task's size
            print(
                f"note: --task-size not given, so the {name} task has its default size {TASK_SIZE_DEFAULTS[name]}; "
                "give the size the model was trained on",
                file=sys.stderr,
            )
        if args.segments is not None and args.segments != cut:
            raise InputError(
                f"--segments {args.segments}: this model cuts the {name} task's {task.sequence_length} tokens into "
                f"segments of {size}, that is {cut}; its segment size, not --segments, decides (drop the flag)"
            )
    scores = evaluate(
        model, TaskSource(task), batches=args.batches, batch_size=args.batch_size, progress=not args.no_progress
    )
    made = {"checkpoint": str(args.checkpoint), "dtype": weights_dtype(model), "task": name, "segments": cut}
    print(json.dumps({**made, **scores}, indent=2))
    return 0


def _on_file(args: argparse.Namespace, model: RecurrentMemoryModel) -> int:
    from rmt.build import pretrained_tokenizer
    from rmt.data.collate import QACollator, check_tokenizer
    from rmt.data.files import DatasetSource, load_records, record_shape
    from rmt.train.evaluation import evaluate

    tokenizer = pretrained_tokenizer(args.checkpoint)
    check_tokenizer(tokenizer, model.backbone.get_input_embeddings().weight.shape[0])
    records = load_records(args.data, streaming=False)
    total = len(records)
    scored = min(args.batches * args.batch_size, total)  # evaluate() reads the first batches, the last maybe short
    # Only what is scored becomes Python records: the file stays memory-mapped by `datasets`, however large.
    head = records.select(range(scored))
    shape = record_shape(records.column_names, args.data)
    if shape == "qa":
        labels = None
        if model.config.mode == "encoder":
            config = model.backbone.config
            labels = [config.id2label[i] for i in range(config.num_labels)]
        if args.max_length is not None:
            raise InputError(f"--max-length: only for a data file of text, and {args.data} holds questions and answers")
        collate, metric = QACollator(tokenizer, model.config.mode, labels), "accuracy"
        collate.check_records(head, "the evaluation samples")  # named as what they are here, before the source
    else:
        if model.config.mode == "encoder":
            raise InputError(
                f"{args.data} holds text for language modelling, which needs a decoder; {args.checkpoint} is an encoder"
            )
        collate, metric = text_collator(tokenizer, args.max_length), "loss"
    source = DatasetSource(head, collate, validation=head, metric=metric)
    scores = evaluate(model, source, batches=args.batches, batch_size=args.batch_size, progress=not args.no_progress)
    print(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "dtype": weights_dtype(model),
                "data": str(args.data),
                "records": total,
                "scored": scored,
                **scores,
            },
            indent=2,
        )
    )
    if scored < total:
        print(
            f"note: scored the first {scored} of the {total} records (--batches {args.batches} x --batch-size "
            f"{args.batch_size}); raise --batches to score more",
            file=sys.stderr,
        )
    else:
        print(f"scored all {total} records", file=sys.stderr)
    return 0
