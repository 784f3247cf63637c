"""`rmt demo`: train the same small transformer with and without RMT memory on copy-24 in 3 segments (CPU, about a
minute) and print what each learned (`rmt.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rmt.cli.common import add_runtime_arguments, apply_runtime, check_seed


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        allow_abbrev=False,
        help="train RMT and a no-memory baseline on copy-24 in 3 segments (CPU, about a minute)",
        description="Train the same small transformer with and without RMT memory on copy of 24 symbols cut "
        "into 3 segments; print held-out answer accuracy, write results.json and accuracy.png. Each model stops "
        "once its held-out accuracy has stopped improving.",
    )
    parser.add_argument(
        "--output",
        default="runs/demo",
        help="output folder; an earlier demo there is replaced once this one is complete (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="most training steps per model (default: 600, fewer on a plateau)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rmt.demo import DemoSettings, format_table, run_demo
    from rmt.errors import InputError

    # Checked here so that the message names the flag (TrainConfig would name its own field).
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    check_seed(args.seed)
    apply_runtime(args)
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
