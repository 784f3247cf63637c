"""Write the room-dense background of `--distractors` training as a text file, to evaluate a model on it.

    python -m benchmarks.babilong_mentions_haystack --tasks qa1 --output runs/rooms.txt --report REPORT.json
    rmt eval MODEL --data babilong:qa1 --facts 1 --lengths 16k --haystack runs/rooms.txt ...

The file holds `mentions_haystack` of the built-in corpus (or of `--haystack` files): every book sentence that
names one of the tasks' answers with one sentence either side, each name swapped for a random answer, one sentence
per paragraph, so that `rmt eval --haystack` reads back the same sentences. A different `--seed` from the training
run's swaps other words in (the training run uses its own `--seed`). `--report` writes, as JSON, how often the
source background and the written one name each answer, in tokens of `--tokenizer`.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

from rmt.build import pretrained_tokenizer
from rmt.cli.data_flags import load_background
from rmt.data.babilong import answer_labels, token_counter
from rmt.data.babilong_source import distractor_background
from rmt.data.haystack import Haystack, whole_words
from rmt.files import write_atomic, write_json_atomic

_BATCH = 2000  # sentences tokenized at a time


def mention_counts(haystack: Haystack, words: list[str], tokenizer: Any) -> dict[str, Any]:
    """Sentences, tokens and whole-word mentions of each of `words` (any case) in `haystack`."""
    pattern = whole_words(words)
    mentions = collections.Counter(m.group().lower() for s in haystack.sentences for m in pattern.finditer(s))
    count = token_counter(tokenizer)
    sentences = haystack.sentences
    tokens = sum(sum(count(list(sentences[i : i + _BATCH]))) for i in range(0, len(sentences), _BATCH))
    total = sum(mentions.values())
    return {
        "sentences": len(sentences),
        "tokens": tokens,
        "mentions": {word: mentions[word] for word in words},
        "mentions_per_million_tokens": round(total / tokens * 1e6, 1) if tokens else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="qa1", help="comma-separated BABILong tasks whose answers to name")
    parser.add_argument("--haystack", default=None, help="background text files (default: the built-in corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the swapped names (default: %(default)s)")
    parser.add_argument("--output", required=True, help="text file to write")
    parser.add_argument("--report", default=None, help="JSON file for the mention counts (default: none)")
    parser.add_argument("--tokenizer", default="minilm", help="tokenizer of the report (default: %(default)s)")
    args = parser.parse_args(argv)
    tasks = [task.strip() for task in args.tasks.split(",")]
    source = load_background(args.haystack)
    haystack = distractor_background(source, tasks, seed=args.seed)
    write_atomic(args.output, "\n\n".join(haystack.sentences) + "\n")
    print(f"{len(haystack)} sentences, {haystack.num_chars} characters -> {args.output}")
    if args.report:
        words = sorted({word for task in tasks for word in answer_labels(task)})
        tokenizer = pretrained_tokenizer(args.tokenizer)
        report = {
            "tasks": tasks,
            "seed": args.seed,
            "tokenizer": args.tokenizer,
            "source": mention_counts(source, words, tokenizer),
            "written": mention_counts(haystack, words, tokenizer),
        }
        write_json_atomic(args.report, report)
        print(f"mention counts -> {args.report}")


if __name__ == "__main__":
    main()
