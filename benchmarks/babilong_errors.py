"""What a qa1 encoder's wrong answers are: which room it names when it does not name the asked person's last room.

    python -m benchmarks.babilong_errors MODEL --length 512 --samples 200 --output RESULT.json

Held-out qa1 samples (`rmt eval`'s: `build_dataset` with `--seed`, the built-in background unless `--haystack`, the
bAbI range of facts unless `--facts`) are read by the memory model; each answer is sorted by where the supporting
fact lies (in the last segment, or before it, so that only the memory can carry it) and by what it is, the first of
these that applies:
- right (and whether the right room is also the story's last-mentioned room, which a recency guess would name);
- the story's last fact's room (a recency guess);
- the asked person's earlier room (the person's later move did not overwrite it);
- another person's room (the room is in the story, bound to someone else);
- a room not in the story.
A memory that keeps which rooms were mentioned but not who went where fails mostly as "another person's room".
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from benchmarks.common import torch_threads, write_json
from rmt.build import pretrained_tokenizer
from rmt.data.babilong import BabilongSample, build_dataset, parse_num_facts
from rmt.data.haystack import default_haystack, load_haystack
from rmt.eval.by_length import Reader
from rmt.memory.pretrained import load_memory_model

KINDS = (
    "right, also the last fact's room",
    "right",
    "the last fact's room",
    "the asked person's earlier room",
    "another person's room",
    "a room not in the story",
)


def kind_of(sample: BabilongSample, answer: str) -> str:
    """Which of KINDS `answer` is for a qa1 sample ("Where is X?"; facts "X <verb> to the <room>.")."""
    person = sample.question.rstrip("?").split()[-1]
    moves = [fact.rstrip(".").split() for fact in sample.facts]
    last_room = moves[-1][-1]
    if answer == sample.target:
        return KINDS[0] if answer == last_room else KINDS[1]
    if answer == last_room:
        return KINDS[2]
    if any(words[-1] == answer for words in moves if words[0] == person):
        return KINDS[3]
    if any(words[-1] == answer for words in moves if words[0] != person):
        return KINDS[4]
    return KINDS[5]


def classify(
    model_path: str, length: int, samples: int, seed: int, num_facts: str | None = None, haystack: str | None = None
) -> dict[str, dict[str, int]]:
    """Counts of KINDS among the model's answers, by where the supporting fact lies."""
    model = load_memory_model(model_path).eval()
    if model.config.mode != "encoder":
        raise SystemExit("babilong_errors reads encoders (answers as classes)")
    tokenizer = pretrained_tokenizer(model_path)
    facts = parse_num_facts(num_facts, ["qa1"]) if num_facts else None
    background = load_haystack(haystack) if haystack else default_haystack()
    dataset = build_dataset("qa1", length, samples, tokenizer, background, seed=seed, num_facts=facts)
    reader = Reader(model, tokenizer)
    counts: dict[str, collections.Counter] = {"fact before the last segment": collections.Counter()}
    counts["fact in the last segment"] = collections.Counter()
    for sample in dataset:
        reading = reader.read(sample)
        where = "fact in the last segment" if reading.facts_in_last_span else "fact before the last segment"
        counts[where][kind_of(sample, reading.answer)] += 1
    return {where: {kind: counter[kind] for kind in KINDS} for where, counter in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an rmt encoder checkpoint folder trained on qa1")
    parser.add_argument("--length", type=int, default=512, help="sample length in tokens (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=200, help="samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="rmt eval's --seed (default: %(default)s)")
    parser.add_argument("--facts", default=None, help="facts per story, N or MIN-MAX (default: qa1's range)")
    parser.add_argument("--haystack", default=None, help="background text file (default: the built-in corpus)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="result JSON file")
    args = parser.parse_args()
    with torch_threads(args.threads):
        counts = classify(args.model, args.length, args.samples, args.seed, args.facts, args.haystack)
    for where, by_kind in counts.items():
        total = sum(by_kind.values())
        print(f"{where} ({total} samples):")
        for kind, count in by_kind.items():
            print(f"  {kind:<35} {count:>4}")
    settings = {"model": args.model, "length": args.length, "samples": args.samples, "seed": args.seed}
    write_json(args.output, {**settings, "facts": args.facts, "counts": counts})
    print(json.dumps({"written": str(args.output)}))


if __name__ == "__main__":
    main()
