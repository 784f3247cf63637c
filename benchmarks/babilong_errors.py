"""What a qa1 model's wrong answers are: which room it names when it does not name the asked person's last room.

    python -m benchmarks.babilong_errors MODEL --length 512 --samples 200 --output RESULT.json
    python -m benchmarks.babilong_errors MODEL --predictions EVAL/predictions.jsonl --output RESULT.json

The first form reads held-out qa1 samples (`rmt eval`'s: `build_dataset` with `--seed`, the built-in background
unless `--haystack`, the bAbI range of facts unless `--facts`) with an encoder memory model. The second sorts the
answers an `rmt eval` already gave (any model, generated answers too; MODEL only gives the tokenizer that rebuilds
each sample from its seed, with the evaluation's --facts and --haystack), one table per method (full_attention
reads its window as one span: on inputs within it, every answer counts as "fact in the last segment"). Each answer
is sorted by where the supporting fact lies (in the last segment, or before it, so that only the memory can carry
it) and by what it is, the first of these that applies. A generated answer is right or wrong as `rmt eval` scored it
(the public benchmark's check: the target must be the only room it names); a wrong one counts as the first room its
first sentence names:
- right (and whether the right room is also the story's last-mentioned room, which a recency guess would name);
- the right room first, with another (a hedge, or a list of rooms: scored wrong);
- the story's last fact's room (a recency guess);
- the asked person's earlier room (the person's later move did not overwrite it);
- another person's room (the room is in the story, bound to someone else);
- a room not in the story;
- no room at all (generated answers only).
A memory that keeps which rooms were mentioned but not who went where fails mostly as "another person's room".
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path
from typing import Any

from benchmarks.babilong_distractors import rebuild_samples
from benchmarks.common import torch_threads, write_json
from rmt.build import pretrained_tokenizer
from rmt.cli.data_flags import load_background
from rmt.data.babilong import PLACES, BabilongSample, build_dataset, parse_num_facts
from rmt.eval.by_length import Reader
from rmt.memory.pretrained import load_memory_model

KINDS = (
    "right, also the last fact's room",
    "right",
    "the right room first, with another",
    "the last fact's room",
    "the asked person's earlier room",
    "another person's room",
    "a room not in the story",
    "no room",
)
# Where the supporting fact lies, indexed by a reading's `facts_in_last_span` (False, True).
WHERE = ("fact before the last segment", "fact in the last segment")
_FIRST_SENTENCE = re.compile(r"[.!?\n]")


def named_room(answer: str) -> str | None:
    """The room a generated answer names: the first of bAbI's rooms in its first sentence (lower case)."""
    sentence = _FIRST_SENTENCE.split(answer.lower(), maxsplit=1)[0]
    found = [(sentence.find(room), room) for room in PLACES if room in sentence]
    return min(found)[1] if found else None


def kind_of(sample: BabilongSample, answer: str | None) -> str:
    """Which of KINDS `answer` (a room, or None for none) is for a qa1 sample ("Where is X?"; facts "X <verb> to the
    <room>.")."""
    if answer is None:
        return KINDS[7]
    person = sample.question.rstrip("?").split()[-1]
    moves = [fact.rstrip(".").split() for fact in sample.facts]
    last_room = moves[-1][-1]
    if answer == sample.target:
        return KINDS[0] if answer == last_room else KINDS[1]
    if answer == last_room:
        return KINDS[3]
    if any(words[-1] == answer for words in moves if words[0] == person):
        return KINDS[4]
    if any(words[-1] == answer for words in moves if words[0] != person):
        return KINDS[5]
    return KINDS[6]


def scored_kind(sample: BabilongSample, record: dict[str, Any]) -> str:
    """Which of KINDS an `rmt eval` answer is: right or wrong as the evaluation scored it (`record["correct"]`), a
    wrong one by the first room it names."""
    room = named_room(record["answer"])
    if record["correct"]:
        return kind_of(sample, sample.target)
    if room == sample.target:  # named first, but with another room: the public check scores it wrong
        return KINDS[2]
    return kind_of(sample, room)


def classify(
    model_path: str, length: int, samples: int, seed: int, num_facts: str | None = None, haystack: str | None = None
) -> dict[str, dict[str, int]]:
    """Counts of KINDS among the model's answers, by where the supporting fact lies."""
    model = load_memory_model(model_path).eval()
    if model.config.mode != "encoder":
        raise SystemExit("babilong_errors reads encoders (answers as classes)")
    tokenizer = pretrained_tokenizer(model_path)
    facts = parse_num_facts(num_facts, ["qa1"]) if num_facts else None
    background = load_background(haystack)
    dataset = build_dataset("qa1", length, samples, tokenizer, background, seed=seed, num_facts=facts)
    reader = Reader(model, tokenizer)
    counts: dict[str, collections.Counter] = {where: collections.Counter() for where in WHERE}
    for sample in dataset:
        reading = reader.read(sample)
        counts[WHERE[reading.facts_in_last_span]][kind_of(sample, reading.answer)] += 1
    return {where: {kind: counter[kind] for kind in KINDS} for where, counter in counts.items()}


def classify_predictions(
    records: list[dict[str, Any]], tokenizer: Any, num_facts: str | None = None, haystack: str | None = None
) -> dict[str, dict[str, dict[str, int]]]:
    """Counts of KINDS among the qa1 answers of an `rmt eval` (its predictions.jsonl records), per "length/method";
    each sample is rebuilt from its seed to know its story."""
    records = [record for record in records if record["task"] == "qa1"]
    if not records:
        raise SystemExit("no qa1 predictions to sort")
    built = rebuild_samples(records, tokenizer, num_facts, haystack)
    counts: dict[str, dict[str, collections.Counter]] = {}
    for record in records:
        sample = built[(record["length"], record["seed"])]
        group = counts.setdefault(f"{record['length']}/{record['method']}", {w: collections.Counter() for w in WHERE})
        group[WHERE[record["facts_in_last_span"]]][scored_kind(sample, record)] += 1
    return {
        name: {where: {kind: counter[kind] for kind in KINDS} for where, counter in by_where.items()}
        for name, by_where in counts.items()
    }


def print_counts(counts: dict[str, dict[str, int]]) -> None:
    for where, by_kind in counts.items():
        print(f"{where} ({sum(by_kind.values())} samples):")
        for kind, count in by_kind.items():
            print(f"  {kind:<35} {count:>4}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an rmt checkpoint folder trained on qa1 (an encoder, unless --predictions)")
    parser.add_argument(
        "--predictions", type=Path, default=None, help="sort this rmt eval's answers instead of reading"
    )
    parser.add_argument("--length", type=int, default=512, help="sample length in tokens (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=200, help="samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="rmt eval's --seed (default: %(default)s)")
    parser.add_argument("--facts", default=None, help="facts per story, N or MIN-MAX (default: qa1's range)")
    parser.add_argument("--haystack", default=None, help="background text file (default: the built-in corpus)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="result JSON file")
    args = parser.parse_args(argv)
    if args.predictions is not None:
        records = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
        grouped = classify_predictions(records, pretrained_tokenizer(args.model), args.facts, args.haystack)
        for name, counts in grouped.items():
            print(f"== {name}")
            print_counts(counts)
        settings = {"model": args.model, "predictions": str(args.predictions), "facts": args.facts}
        write_json(args.output, {**settings, "counts": grouped})
        print(json.dumps({"written": str(args.output)}))
        return
    with torch_threads(args.threads):
        counts = classify(args.model, args.length, args.samples, args.seed, args.facts, args.haystack)
    print_counts(counts)
    settings = {"model": args.model, "length": args.length, "samples": args.samples, "seed": args.seed}
    write_json(args.output, {**settings, "facts": args.facts, "counts": counts})
    print(json.dumps({"written": str(args.output)}))


if __name__ == "__main__":
    main()
