"""Whether a memory model's answer follows a fact it read in an earlier segment: the fact's room swapped for each room.

    python -m benchmarks.babilong_memory_probe MODEL --length 512 --samples 20 --output RESULT.json

Builds held-out single-fact qa1 samples (`--facts 1`: one fact hidden in the built-in background, then "Where is X?")
whose fact lies in the first segment and whose question lies in a later one, so that the fact can reach the answer
only through the memory. Each sample is read six times, its fact naming each of the six rooms in turn, everything
else unchanged. At the answer the model's score for each room is taken: an encoder's class logits, a decoder's logit
of the room's first token after "Answer:". It reports:
- follows: the share of readings whose top room is the room of the fact it read. 1.0 when the answer comes from the
  fact through the memory; when the memory carries nothing of it, every reading of a sample gives the same answer and
  the share is 1/6 (the chance of the rooms);
- distinct answers per sample (1 to 6, the top room over the six readings);
- lift: how much a room's score rises when the fact names it, against its mean score over the readings whose fact
  names another room (median over samples and rooms; 0 when the memory carries nothing of the fact), next to the
  spread of the six room scores within one reading (top minus lowest, median over readings) for scale.
With `--attention` (decoder RMT), it also measures where the answer position looks in the last segment: per layer,
the share of its attention (mean over heads and samples) on the memory read slots, on the segment's first token and
on the rest of the segment, next to the memory's share of the keys it sees (what uniform attention would give the
memory; it depends on how many tokens the last segment holds). A memory that is never attended to cannot be read.
The backbone runs its eager (reference) attention for this, which returns the weights.
The samples come from a seed stream of their own (`--seed`), not from the held-out samples of `rmt eval`; the
background is the built-in corpus or `--haystack FILE[,FILE]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.babilong_distractors import end_of_fact
from benchmarks.common import torch_threads, write_json
from rmt.build import pretrained_tokenizer
from rmt.cli.data_flags import load_background
from rmt.data.babilong import PLACES, BabilongSample, build_sample
from rmt.data.haystack import Haystack, whole_words
from rmt.eval.by_length import Reader
from rmt.memory.pretrained import load_memory_model
from rmt.memory.segments import closed_length


def with_fact_room(sample: BabilongSample, room: str) -> BabilongSample:
    """`sample` with its (single) fact naming `room` instead of its target, and `room` as the target."""
    fact = sample.facts[0]
    new_fact = whole_words([sample.target]).sub(room, fact)
    start = sample.input.index(fact)
    text = sample.input[:start] + new_fact + sample.input[start + len(fact) :]
    return dataclasses.replace(sample, input=text, target=room, facts=[new_fact])


def fact_end_token(sample: BabilongSample, tokenizer: Any) -> int:
    """How many context tokens come up to the end of the sample's fact."""
    end = end_of_fact(sample)
    return len(tokenizer(sample.input[:end], add_special_tokens=False, verbose=False).input_ids)


def probe_samples(
    tokenizer: Any, background: Haystack, length: int, segment_size: int, count: int, seed: int
) -> list[BabilongSample]:
    """`count` single-fact qa1 samples of `length` tokens whose fact ends within the first segment (a few tokens
    spare for a start token)."""
    seeds = random.Random(f"babilong-memory-probe/{seed}")
    first_segment = min(1.0, 0.9 * segment_size / length)
    samples: list[BabilongSample] = []
    for _ in range(50 * count):
        sample = build_sample("qa1", length, tokenizer, background, seeds.getrandbits(53), (0.0, first_segment), 1)
        if fact_end_token(sample, tokenizer) <= segment_size - 4:
            samples.append(sample)
            if len(samples) == count:
                return samples
    raise SystemExit(
        f"found {len(samples)} of {count} samples with the fact in the first segment; try a longer --length"
    )


class RoomScorer:
    """The model's score for each room at the answer of a sample (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.encoder = model.config.mode == "encoder"
        self.collate = Reader(model, tokenizer).collate  # the collator and class labels `rmt eval` scores with
        if self.encoder:
            self.columns = [self.collate.label_of(room) for room in PLACES]
        else:
            self.columns = [tokenizer(" " + room, add_special_tokens=False).input_ids[0] for room in PLACES]
            if len(set(self.columns)) != len(PLACES):
                raise SystemExit(
                    "two rooms share their first token in this tokenizer: their logits cannot be told apart"
                )

    @torch.no_grad()
    def scores(self, sample: BabilongSample) -> list[float]:
        record = sample.to_dict()
        if self.encoder:
            logits = self.model(self.collate([record]).input_ids).logits[0]
        else:
            ids = torch.tensor(self.collate.prompt_ids([record]))
            logits = self.model(ids, logits=torch.tensor([[ids.shape[1] - 1]])).logits[0, -1]
        return [float(logits[column]) for column in self.columns]


@torch.no_grad()
def answer_attention(model: Any, prompts: list[torch.Tensor]) -> dict[str, Any]:
    """Per layer of a decoder RMT: the attention of each prompt's last token, in its last segment, on the memory read
    slots, the segment's first token and the rest of the segment (means over heads and prompts); with the memory's
    share of the keys that token sees (what uniform attention would give it) and the last segment's tokens."""
    config = model.config
    if config.mode != "decoder" or config.memory_kind != "rmt" or config.xl_cache_tokens:
        raise SystemExit("--attention reads decoder RMT windows [read memory | segment | write memory] only")
    previous = model.backbone.config._attn_implementation
    model.backbone.set_attn_implementation("eager")
    captured: list[torch.Tensor] = []

    def keep_weights(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]) and output[1].dim() == 4:
            captured.append(output[1])

    modules = [m for m in model.backbone.modules() if type(m).__name__.endswith("Attention")]
    handles = [m.register_forward_hook(keep_weights) for m in modules]
    memory, size, shares, last_tokens = config.num_memory_tokens, config.segment_size, [], []
    try:
        for ids in prompts:
            captured.clear()
            length = ids.shape[1]
            model(ids, logits=torch.tensor([[length - 1]]))
            segments = closed_length(length, size) // size + 1
            if not captured or len(captured) % segments:
                raise SystemExit("this backbone's attention modules do not return their weights")
            layers = len(captured) // segments
            last_tokens.append(length - closed_length(length, size))
            query = memory + last_tokens[-1] - 1  # the last token, after the read slots
            shares.append(
                [
                    [float(w[:memory].sum()), float(w[memory]), float(w[memory + 1 :].sum())]
                    for w in (weights[0, :, query].float().mean(0) for weights in captured[-layers:])
                ]
            )
    finally:
        for handle in handles:
            handle.remove()
        model.backbone.set_attn_implementation(previous)
    mean = torch.tensor(shares).mean(0)
    names = ("memory", "first_segment_token", "rest_of_segment")
    return {
        "last_segment_tokens": statistics.mean(last_tokens),
        "memory_share_of_keys": statistics.mean(memory / (memory + tokens) for tokens in last_tokens),
        "by_layer": [dict(zip(names, layer, strict=True)) for layer in mean.tolist()],
    }


def top_room(scores: list[float]) -> int:
    """The index of the highest of `scores`."""
    return max(range(len(scores)), key=scores.__getitem__)


def summarise(readings: list[list[list[float]]]) -> dict[str, Any]:
    """The module docstring's measures from readings[sample][fact room][room score]."""
    follows = [top_room(row) == fact for sample in readings for fact, row in enumerate(sample)]
    distinct = [len({top_room(row) for row in sample}) for sample in readings]
    rooms = range(len(PLACES))
    lift = [
        sample[room][room] - statistics.mean(sample[fact][room] for fact in rooms if fact != room)
        for sample in readings
        for room in rooms
    ]
    spread = [max(row) - min(row) for sample in readings for row in sample]
    return {
        "samples": len(readings),
        "follows": sum(follows) / len(follows),
        "chance": 1 / len(PLACES),
        "distinct_answers_per_sample": {str(k): distinct.count(k) for k in range(1, len(PLACES) + 1)},
        "median_lift": statistics.median(lift),
        "median_score_spread_within_a_reading": statistics.median(spread),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved memory model (rmt train's OUTPUT/model)")
    parser.add_argument("--length", type=int, default=512, help="tokens per sample (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=20, help="samples, each read six times (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
    parser.add_argument("--attention", action="store_true", help="decoder RMT: where the answer position attends")
    parser.add_argument("--haystack", default=None, help="background text files (default: the built-in corpus)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="result JSON file")
    args = parser.parse_args(argv)

    model = load_memory_model(args.model).eval()
    tokenizer = pretrained_tokenizer(args.model)
    segment_size = model.config.segment_size
    if args.length <= segment_size:
        raise SystemExit(f"--length {args.length} fits one segment of {segment_size}: the fact would not need memory")
    scorer = RoomScorer(model, tokenizer)
    background = load_background(args.haystack)
    samples = probe_samples(tokenizer, background, args.length, segment_size, args.samples, args.seed)
    with torch_threads(args.threads):
        readings = [[scorer.scores(with_fact_room(sample, room)) for room in PLACES] for sample in samples]
        summary = summarise(readings)
        if args.attention:
            prompts = [torch.tensor(scorer.collate.prompt_ids([sample.to_dict()])) for sample in samples]
            summary["answer_attention"] = answer_attention(model, prompts)
    print(json.dumps(summary, indent=1))
    settings = {"model": args.model, "length": args.length, "segment_size": segment_size, "seed": args.seed}
    records = [
        {"seed": sample.seed, "fact": sample.facts[0], "question": sample.question, "room_scores": rows}
        for sample, rows in zip(samples, readings, strict=True)
    ]
    write_json(args.output, {**settings, "rooms": list(PLACES), "summary": summary, "samples": records})


if __name__ == "__main__":
    main()
