"""Write the room-dense background of `--distractors` training as a text file, to evaluate a model on it.

    python -m benchmarks.babilong_mentions_haystack --tasks qa1 --output runs/rooms.txt
    rmt eval MODEL --data babilong:qa1 --facts 1 --lengths 16k --haystack runs/rooms.txt ...

The file holds `mentions_haystack` of the built-in corpus (or of `--haystack` files): every book sentence that
names one of the tasks' answers with one sentence either side, each name swapped for a random answer, one sentence
per paragraph, so that `rmt eval --haystack` reads back the same sentences. A different `--seed` from the training
run's swaps other words in (the training run uses its own `--seed`). About 80k MiniLM tokens for qa1.
"""

from __future__ import annotations

import argparse

from rmt.cli.train import load_background
from rmt.data.babilong_source import distractor_background
from rmt.files import write_atomic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="qa1", help="comma-separated BABILong tasks whose answers to name")
    parser.add_argument("--haystack", default=None, help="background text files (default: the built-in corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the swapped names (default: %(default)s)")
    parser.add_argument("--output", required=True, help="text file to write")
    args = parser.parse_args(argv)
    tasks = [task.strip() for task in args.tasks.split(",")]
    haystack = distractor_background(load_background(args.haystack), tasks, seed=args.seed)
    write_atomic(args.output, "\n\n".join(haystack.sentences) + "\n")
    print(f"{len(haystack)} sentences, {haystack.num_chars} characters -> {args.output}")


if __name__ == "__main__":
    main()
