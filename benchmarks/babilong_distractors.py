"""Whether a qa1 memory model's wrong answers are rooms the background text mentions after the fact.

    python -m benchmarks.babilong_distractors PREDICTIONS.jsonl --model MODEL --facts 1 --output RESULT.json

Reads the predictions.jsonl of `rmt eval --data babilong:qa1` (generated samples), rebuilds each sample from its seed
(the model's tokenizer, and the background and facts per story the evaluation used), and counts each bAbI room word
(whole word, any case) in the background after the last supporting fact, where it could overwrite what the memory
holds. It reports, by method and length:
- the wrong answers whose room occurs after the fact, next to a control: the share of (sample, room other than the
  target) pairs whose room occurs after the fact, i.e. how often a wrong room drawn at random would;
- per room: the samples whose background mentions it after the fact (it not being the target), and how many of them
  the model answered with it.
With `--reread`, each wrong answer whose room occurs after the fact is read again by the model with that room
word replaced after the fact by "cellar" (a place that is none of the six rooms): if the answer then turns right, the
background sentence, not a fading memory, caused the error. Rebuilding long samples takes time (about 15 s per
256k-token sample on one thread), rereading them more (the model's tokens/s).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

from benchmarks.common import torch_threads, write_json
from rmt.build import pretrained_tokenizer
from rmt.cli.data_flags import load_background
from rmt.data.babilong import PLACES, BabilongSample, build_sample, parse_num_facts
from rmt.data.haystack import whole_words
from rmt.eval.by_length import Reader
from rmt.memory.pretrained import load_memory_model

NEUTRAL_PLACE = "cellar"


def end_of_fact(sample: BabilongSample) -> int:
    """Where the sample's last supporting fact ends in its context. Facts are inserted verbatim and in order, so each
    is searched after the one before it (a story can repeat a sentence)."""
    end = 0
    for fact in sample.facts[: max(sample.supporting_facts) + 1]:
        end = sample.input.index(fact, end) + len(fact)
    return end


def rooms_after_fact(sample: BabilongSample) -> dict[str, int]:
    """How often each room word occurs in the background after the sample's last supporting fact."""
    after = sample.input[end_of_fact(sample) :]
    return {room: len(whole_words([room]).findall(after)) for room in PLACES}


def without_room_after_fact(sample: BabilongSample, room: str) -> BabilongSample:
    """The sample with every `room` word after its last supporting fact replaced by NEUTRAL_PLACE."""
    end = end_of_fact(sample)
    after = whole_words([room]).sub(NEUTRAL_PLACE, sample.input[end:])
    return dataclasses.replace(sample, input=sample.input[:end] + after)


def rebuild_samples(
    records: list[dict[str, Any]], tokenizer: Any, num_facts: str | None, haystack: str | None
) -> dict[tuple[str, int], BabilongSample]:
    """The qa1 sample behind each `rmt eval` prediction record, by (length, seed): rebuilt from its seed with the
    evaluation's --facts and --haystack; a rebuilt target that differs from the record's is refused."""
    facts = parse_num_facts(num_facts, ["qa1"]) if num_facts else None
    background = load_background(haystack)
    built: dict[tuple[str, int], BabilongSample] = {}
    for record in records:
        key = (record["length"], record["seed"])
        if key not in built:  # every method read the same sample
            built[key] = build_sample("qa1", record["length"], tokenizer, background, record["seed"], num_facts=facts)
            if built[key].target != record["target"]:
                raise SystemExit(f"sample seed {record['seed']}: rebuilt with another target; check --facts/--haystack")
    return built


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts of the module docstring for the records of one method and length (each with its `rooms`)."""
    wrong = [r for r in records if not r["correct"]]
    others = [(r, room) for r in records for room in PLACES if room != r["target"]]
    per_room = {}
    for room in PLACES:
        mentioned = [r for r in records if r["target"] != room and r["rooms"][room] > 0]
        per_room[room] = {
            "samples_mentioning_it_after_the_fact": len(mentioned),
            "answered_with_it": sum(r["answer"] == room for r in mentioned),
        }
    summary = {
        "samples": len(records),
        "wrong": len(wrong),
        "wrong_answer_mentioned_after_fact": sum(r["rooms"].get(r["answer"], 0) > 0 for r in wrong),
        "control_other_room_mentioned_after_fact": sum(r["rooms"][room] > 0 for r, room in others) / len(others),
        "by_room": per_room,
    }
    reread = [r for r in records if "answer_without_the_room" in r]
    if reread:
        summary["reread_without_the_room"] = len(reread)
        summary["reread_now_right"] = sum(r["right_without_the_room"] for r in reread)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path, help="predictions.jsonl of `rmt eval --data babilong:qa1`")
    parser.add_argument("--model", required=True, help="the evaluated model folder (for its tokenizer)")
    parser.add_argument("--facts", default=None, help="the evaluation's --facts (default: qa1's range)")
    parser.add_argument("--haystack", default=None, help="the evaluation's --haystack (default: the built-in corpus)")
    parser.add_argument("--reread", action="store_true", help="read wrong answers' samples again without the room")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --reread (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="result JSON file")
    args = parser.parse_args(argv)

    records = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["task"] == "qa1"]
    if not records:
        raise SystemExit(f"{args.predictions}: no qa1 predictions")
    tokenizer = pretrained_tokenizer(args.model)
    built = rebuild_samples(records, tokenizer, args.facts, args.haystack)
    for record in records:
        record["rooms"] = rooms_after_fact(built[(record["length"], record["seed"])])
    if args.reread:
        reader = Reader(load_memory_model(args.model).eval(), tokenizer)
        with torch_threads(args.threads):
            for record in records:
                if record["method"] != "memory" or record["correct"] or not record["rooms"].get(record["answer"]):
                    continue
                sample = without_room_after_fact(built[(record["length"], record["seed"])], record["answer"])
                right, reading = reader.answer(sample)  # scored as rmt eval scores it
                record["answer_without_the_room"], record["right_without_the_room"] = reading.answer, right
                print(
                    f"{record['length']} sample {record['sample']}: target {record['target']}, answered "
                    f"{record['answer']}; without '{record['answer']}' after the fact: {reading.answer}"
                )
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in records:
        groups[f"{record['length']}/{record['method']}"].append(record)
    summary = {group: summarise(members) for group, members in groups.items()}
    for group, counts in summary.items():
        print(
            f"{group}: {counts['wrong']} wrong of {counts['samples']}; wrong answer's room mentioned after the fact: "
            f"{counts['wrong_answer_mentioned_after_fact']} of {counts['wrong']} (a random other room: "
            f"{counts['control_other_room_mentioned_after_fact']:.2f})"
        )
        for room, by_room in counts["by_room"].items():
            mentioned, answered = by_room["samples_mentioning_it_after_the_fact"], by_room["answered_with_it"]
            print(f"  {room:<9} after the fact (not the target) in {mentioned:>3} samples, answered in {answered}")
    fields = ("length", "method", "sample", "seed", "target", "answer", "correct", "supporting_depths", "rooms")
    rereads = ("answer_without_the_room", "right_without_the_room")
    samples = [{field: r[field] for field in (*fields, *rereads) if field in r} for r in records]
    settings = {"predictions": str(args.predictions), "model": args.model, "facts": args.facts}
    write_json(args.output, {**settings, "summary": summary, "samples": samples})
    print(json.dumps({"written": str(args.output)}))


if __name__ == "__main__":
    main()
