"""`rmt babilong`: build BABILong samples offline and write them in the public benchmark's file layout.

    rmt babilong --tasks qa1,qa2 --lengths 0k,1k,4k,16k --samples 100 --tokenizer minilm --output data/babilong

writes OUTPUT/data/<task>/<length>.json, the layout of the public data set: a JSON array of {"input", "question",
"target"} records plus metadata (the story's facts, the supporting facts and their depths, the seed), readable by
`rmt eval --babilong-dir` and by any tool that reads the public BABILong files. Lengths are counted in tokens of
--tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rmt.cli.common import FACTS_HELP, add_runtime_arguments, apply_runtime


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "babilong",
        help="build BABILong samples (bAbI facts hidden in long text) into BABILong's JSON files",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", default="qa1", help="comma-separated qa1..qa5 (default: %(default)s)")
    parser.add_argument("--lengths", default="0k,1k,4k", help="comma-separated lengths, e.g. 0k,1k,4k,16k,1M")
    parser.add_argument("--samples", type=int, default=100, help="samples per task and length (default: 100)")
    parser.add_argument(
        "--tokenizer",
        default="minilm",
        help="tokenizer that measures lengths: a model name or folder (default: minilm)",
    )
    parser.add_argument("--haystack", default=None, help="background text files, comma-separated (default: built-in)")
    parser.add_argument("--depth", default="0,1", help="facts only within this depth range of the context (0..1)")
    parser.add_argument("--facts", default=None, help=FACTS_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--output", required=True, help="output folder")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rmt.build import pretrained_tokenizer
    from rmt.cli.train import babilong_num_facts, babilong_tasks, load_background
    from rmt.data.babilong import babilong_file, build_dataset, length_name, parse_length, save_babilong
    from rmt.errors import InputError

    apply_runtime(args)
    tasks = babilong_tasks("babilong:" + args.tasks)
    num_facts = babilong_num_facts(args.facts, tasks)
    lengths = [length_name(parse_length(item)) for item in args.lengths.split(",") if item]
    try:
        depth = tuple(float(x) for x in args.depth.split(","))
    except ValueError as err:
        raise InputError(f"--depth must look like 0,0.5, got {args.depth!r}") from err
    if len(depth) != 2:
        raise InputError(f"--depth must give two numbers, got {args.depth!r}")
    if args.samples <= 0:
        raise InputError(f"--samples must be > 0, got {args.samples}")
    tokenizer = pretrained_tokenizer(args.tokenizer)
    haystack = load_background(args.haystack) if any(parse_length(n) > 0 for n in lengths) else None
    cells = [(task, name) for task in tasks for name in lengths]
    for task, name in tqdm(cells, desc="babilong", disable=args.no_progress):
        samples = build_dataset(
            task, name, args.samples, tokenizer, haystack, seed=args.seed, depth=depth, num_facts=num_facts
        )
        save_babilong(samples, babilong_file(args.output, task, name))
    print(f"wrote {len(cells)} files of {args.samples} samples under {Path(args.output)}")
    return 0
