"""The `rmt` command: `rmt demo`, `rmt train`, `rmt eval`.

Each subcommand maps onto a plain function of the library (run_demo, train, evaluate); the memory options are
generated from `RMTConfig`'s field documentation so the help text and the library never disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from rmt.config import RMTConfig, field_help

TASK_NAMES = ("copy", "reverse", "associative_retrieval", "quadratic", "detect_memorize")
MEMORY_OPTIONS = {  # RMTConfig field -> CLI flag (segment_size comes from --segments and the task)
    "num_memory_tokens": "--memory-tokens",
    "bptt_depth": "--bptt-depth",
    "write_init": "--write-init",
    "memory_positions": "--memory-positions",
    "loss_aggregation": "--loss-aggregation",
    "memory_kind": "--memory",
    "d_mem": "--d-mem",
    "read_memory_only": "--read-memory-only",
    "xl_cache_tokens": "--xl-cache-tokens",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rmt {args.command}: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmt",
        description="Recurrent memory for Hugging Face transformers: train and evaluate memory models "
        "(RMT, ARMT) on inputs longer than their context.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train RMT and a no-memory baseline on copy-24 in 3 segments (CPU, a few minutes)",
        description="Train the same small transformer with and without RMT memory on copy of 24 symbols cut "
        "into 3 segments; print held-out answer accuracy, write results.json and accuracy.png.",
    )
    demo.add_argument("--output", default="runs/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=None, help="training steps per model (default: the demo's own)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)

    train = sub.add_parser(
        "train",
        help="train a memory model on a synthetic task",
        description="Train a memory model on a synthetic task. The backbone is a random model of --family "
        "sized by --layers/--hidden/--heads. Checkpoints go to OUTPUT/checkpoint; --resume continues from it.",
    )
    _task_arguments(train)
    train.add_argument("--output", required=True, help="output folder for metrics.jsonl, checkpoint/, model/")
    train.add_argument("--family", default="gpt2", choices=["gpt2", "llama", "gpt_neox"], help="backbone family")
    train.add_argument("--layers", type=int, default=4, help="backbone layers (default: %(default)s)")
    train.add_argument("--hidden", type=int, default=128, help="backbone hidden size (default: %(default)s)")
    train.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    _memory_arguments(train)
    train.add_argument("--steps", type=int, default=2000, help="training steps (default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=32, help="batch size per process (default: %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    train.add_argument("--warmup", type=int, default=100, help="warmup steps (default: %(default)s)")
    train.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip, 0 = off")
    train.add_argument("--eval-every", type=int, default=200, help="evaluate every N steps")
    train.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint every N steps, 0 = never")
    train.add_argument(
        "--curriculum",
        default=None,
        help="curriculum over segments for detect_memorize, as STEP:SEGMENTS,... e.g. 0:1,500:2,1000:4",
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    train.add_argument(
        "--recompute",
        action="store_true",
        help="recompute each segment's activations during backward: peak memory of about one segment at any "
        "BPTT depth, for one extra forward pass",
    )
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint if present")
    train.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT/tensorboard")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a saved memory model on a synthetic task",
        description="Evaluate a model saved by `rmt train` (its OUTPUT/model folder, or any save_pretrained "
        "folder) on held-out samples of a task; prints JSON with loss, answer accuracy and exact match.",
    )
    evaluate.add_argument("checkpoint", help="folder written by save_pretrained (e.g. OUTPUT/model)")
    _task_arguments(evaluate)
    evaluate.add_argument("--batches", type=int, default=4, help="evaluation batches (default: %(default)s)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: %(default)s)")
    evaluate.set_defaults(handler=_eval)
    return parser


def _task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="copy", choices=TASK_NAMES, help="synthetic task (default: %(default)s)")
    parser.add_argument(
        "--task-size",
        type=int,
        default=None,
        help="copy/reverse: number of source symbols (24); associative_retrieval: key-value pairs (4); "
        "detect_memorize: tokens per segment (64)",
    )
    parser.add_argument(
        "--segments", type=int, default=3, help="number of segments the input is cut into (default: %(default)s)"
    )


def _memory_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory (RMTConfig)")
    defaults = {f.name: f.default for f in fields(RMTConfig)}
    for name, flag in MEMORY_OPTIONS.items():
        help_text = field_help(RMTConfig, name) + " (default: %(default)s)"
        if name == "read_memory_only":
            group.add_argument(flag, dest=name, action="store_true", help=field_help(RMTConfig, name))
        elif isinstance(defaults[name], int):
            group.add_argument(flag, dest=name, type=int, default=defaults[name], help=help_text)
        else:
            choices = _config_choices(name)
            group.add_argument(flag, dest=name, default=defaults[name], choices=choices, help=help_text)


def _config_choices(name: str) -> tuple[str, ...]:
    from rmt.config import _CHOICES

    return _CHOICES[name]


def _make_task(args: argparse.Namespace):
    from rmt.data.tasks import make_task

    size = args.task_size
    if args.task in ("copy", "reverse"):
        return make_task(args.task, length=size or 24)
    if args.task == "associative_retrieval":
        return make_task(args.task, num_pairs=size or 4)
    if args.task == "detect_memorize":
        return make_task(args.task, num_segments=args.segments, segment_size=size or 64)
    return make_task(args.task)


def _demo(args: argparse.Namespace) -> int:
    from rmt.demo import DemoSettings, format_table, run_demo

    settings = DemoSettings(seed=args.seed)
    if args.steps is not None:
        settings.steps = args.steps
    results = run_demo(args.output, settings, progress=not args.no_progress)
    print()
    print(format_table(results))
    example = results["models"]["RMT"]["example"]
    print(f"\nRMT example  source   : {example['source']}")
    print(f"             expected : {example['expected']}")
    print(f"             predicted: {example['predicted']}")
    print(f"\nwrote {Path(args.output) / 'results.json'} and {Path(args.output) / 'accuracy.png'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rmt.build import memory_model, random_backbone
    from rmt.data.tasks import make_task
    from rmt.train.loop import TaskSource, TrainConfig, evaluate, train

    task = _make_task(args)
    curriculum = _parse_curriculum(args.curriculum) if args.curriculum else None
    if curriculum and args.task != "detect_memorize":
        raise ValueError("--curriculum applies to detect_memorize, whose length grows with the number of segments")
    segment_size = task.segment_size_for(args.segments)
    memory = {name: getattr(args, name) for name in MEMORY_OPTIONS}
    config = RMTConfig(segment_size=segment_size, **memory)
    max_segments = max([n for _, n in curriculum] + [args.segments]) if curriculum else args.segments
    if curriculum:
        size = args.task_size or 64
        source = TaskSource(lambda n: make_task("detect_memorize", num_segments=n, segment_size=size), seed=args.seed)
    else:
        source = TaskSource(task, seed=args.seed)
    backbone = random_backbone(
        args.family,
        vocab_size=task.vocab_size,
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.heads,
        max_positions=segment_size + 2 * config.num_memory_tokens,
        seed=args.seed,
    )
    model = memory_model(backbone, config)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        curriculum=curriculum,
        recompute=args.recompute,
        seed=args.seed,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    output = Path(args.output)
    train(model, source, train_config, output, resume=args.resume)
    model.save_pretrained(output / "model")
    scores = evaluate(model, source, batches=4, batch_size=64, num_segments=max_segments if curriculum else None)
    print(json.dumps({"task": args.task, "segments": max_segments, **scores}, indent=2))
    print(f"model saved to {output / 'model'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rmt.memory.recurrent import RecurrentMemoryModel
    from rmt.train.loop import TaskSource, evaluate

    model = RecurrentMemoryModel.from_pretrained(args.checkpoint)
    task = _make_task(args)
    if task.segment_size_for(args.segments) != model.config.segment_size and args.task != "detect_memorize":
        print(
            f"note: the model was trained with segment_size={model.config.segment_size}; "
            f"{args.segments} segments of this task would need {task.segment_size_for(args.segments)}",
            file=sys.stderr,
        )
    scores = evaluate(model, TaskSource(task), batches=args.batches, batch_size=args.batch_size)
    print(json.dumps({"checkpoint": str(args.checkpoint), "task": args.task, **scores}, indent=2))
    return 0


def _parse_curriculum(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(a), int(b)) for a, b in (item.split(":") for item in text.split(","))]
    except ValueError as err:
        raise ValueError(f"--curriculum must look like 0:1,500:2,1000:4, got {text!r}") from err


if __name__ == "__main__":
    sys.exit(main())
