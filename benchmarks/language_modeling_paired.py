"""Two trained models of `benchmarks.language_modeling` compared document by document on their shared held-out
documents: the mean difference in bits per byte (or per word, for runs of `--unit word`) with its 95% interval, so
that a gap between two kinds of one seed can be told apart from which documents happened to be held out.

    python -m benchmarks.language_modeling_paired runs/lm-seg50-mem10-wscale-bpttall:rmt runs/lm-seg50-mem10:trxl \
        --from-segment 2 \
        --output benchmarks/results/language_modeling-seg50-cpu/paired/rmt-bptt-all-vs-trxl-seed0-from-segment-2.json

Each side is FOLDER:KIND, a --output folder of `benchmarks.language_modeling` (its results.json and the final model
in runs/KIND/checkpoint/model). Both folders must hold the same held-out documents (the same --seed, --unit and
document length, and for words the same --vocabulary), which every kind of one seed scores alike. Each model is read
again on the documents its run scored; the bits per byte or word it gives overall must equal what its results.json
records (to 1e-4), or the script stops: the checkpoint is then not the model that made the record. The two are paired
on the documents both runs scored.

Every held-out document has the same length, so the mean of the per-document differences is the difference of the
two overall scores (for words, 2 to its power is the ratio of the two perplexities, given with its interval). The
interval is mean +- 1.96 standard errors over the documents (a normal approximation; there are a hundred or more
documents). --from-segment 2 leaves out segment 1, where no model has context.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import torch_threads, write_json
from benchmarks.language_modeling import (
    ADDED_SETTINGS,
    corpus,
    document_length,
    metric_key,
    nats_by_document,
    predicted_tokens,
    read_run,
)
from rmt.memory.recurrent import RecurrentMemoryModel

# How close the recomputed overall bits per byte or word must come to the recorded ones (evaluation batches of
# another size round otherwise in the last digits; a different model differs in the second or third decimal)
REPRODUCED_TOLERANCE = 1e-4
# Settings that decide which documents are held out and how they are cut into segments
SAME_DOCUMENTS = ("seed", "unit", "document_bytes", "document_words", "vocabulary")


def side(spec: str) -> tuple[Path, str, dict[str, Any]]:
    """(folder, kind, its results.json) of FOLDER:KIND, refused with one line when it does not name a trained run."""
    folder, kind, results = read_run(spec)
    if not (folder / "runs" / kind / "checkpoint" / "model").is_dir():
        raise SystemExit(f"error: {folder / 'runs' / kind / 'checkpoint' / 'model'}: the trained model is missing")
    return folder, kind, results


def per_document_bits(nats: torch.Tensor, weights: list[int], from_segment: int) -> torch.Tensor:
    """Each document's bits per token (byte or word) over its segments from `from_segment` (1-based) on."""
    first = from_segment - 1
    return nats[:, first:].sum(1) / sum(weights[first:]) / math.log(2)


def compare(first: str, second: str, from_segment: int, batch_size: int) -> dict[str, Any]:
    """The paired comparison of two sides (FOLDER:KIND), as the result file keeps it."""
    sides = [side(spec) for spec in (first, second)]
    # A results.json from before a setting existed was made with that setting's first value (bytes, for --unit)
    settings = [{**ADDED_SETTINGS, **results["settings"]} for _, _, results in sides]
    differing = [name for name in SAME_DOCUMENTS if settings[0].get(name) != settings[1].get(name)]
    if differing:
        named = ", ".join(
            f"--{n.replace('_', '-')} {settings[0].get(n)} against {settings[1].get(n)}" for n in differing
        )
        raise SystemExit(f"error: the two runs held out other documents ({named}): compare runs of one seed")
    unit, key = settings[0]["unit"], metric_key(settings[0])
    if settings[0]["segment_size"] != settings[1]["segment_size"]:
        raise SystemExit(
            f"error: segments of {settings[0]['segment_size']} against {settings[1]['segment_size']} {unit}s: the "
            "per-segment comparison needs one segment size"
        )
    segment = settings[0]["segment_size"]
    weights = predicted_tokens(document_length(settings[0]), segment)
    if not 1 <= from_segment <= len(weights):
        raise SystemExit(f"error: --from-segment {from_segment}: the documents have segments 1 to {len(weights)}")
    held_out = corpus(settings[0]).held_out
    # Each run scored the first --eval-documents held-out documents (all, when fewer are held out): each is checked on
    # its own, and the two are paired on the documents both scored.
    own = [min(run_settings["eval_documents"], len(held_out)) for run_settings in settings]
    shared = min(own)
    bits = []
    for (folder, kind, results), scored in zip(sides, own, strict=True):
        model = RecurrentMemoryModel.from_pretrained(folder / "runs" / kind / "checkpoint" / "model")
        nats = nats_by_document(model, held_out[:scored], segment, batch_size)
        overall = float(nats.sum() / (scored * sum(weights)) / math.log(2))
        recorded = results["runs"][kind][key]
        if abs(overall - recorded) > REPRODUCED_TOLERANCE:
            raise SystemExit(
                f"error: {folder}:{kind} gives {overall:.5f} {key} now and its results.json records {recorded:.5f}: "
                "the checkpoint is not the model that made the record"
            )
        bits.append(per_document_bits(nats[:shared], weights, from_segment))
    difference = bits[0] - bits[1]
    mean = float(difference.mean())
    half = 1.96 * float(difference.std(unbiased=True)) / math.sqrt(shared)
    result = {
        "first": first,
        "second": second,
        "documents": shared,
        "from_segment": from_segment,
        key: {first: float(bits[0].mean()), second: float(bits[1].mean())},  # on the paired documents
        "mean_difference": mean,  # first - second, in bits per byte or word: below 0 when the first predicts better
        "interval_95": [mean - half, mean + half],
        "documents_first_better": int((difference < 0).sum()),
        "settings": {name: settings[0][name] for name in (*SAME_DOCUMENTS, "segment_size")},
    }
    if unit == "word":  # documents of one length: the ratio of the two perplexities over the paired documents
        result["perplexity_ratio"] = 2**mean
        result["perplexity_ratio_interval_95"] = [2 ** (mean - half), 2 ** (mean + half)]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="FOLDER:KIND, e.g. runs/lm-seg50-mem10-wscale-bpttall:rmt")
    parser.add_argument("second", help="FOLDER:KIND of the same seed, e.g. runs/lm-seg50-mem10:trxl")
    parser.add_argument(
        "--from-segment",
        type=int,
        default=1,
        help="score the segments from this one on (1-based; 2 leaves out segment 1) (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="documents per forward pass (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--output", default=None, help="JSON file for the comparison (default: printed only)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    with torch_threads(args.threads):
        result = compare(args.first, args.second, args.from_segment, args.batch_size)
    low, high = result["interval_95"]
    key = metric_key(result["settings"])
    print(
        f"{args.first} - {args.second}, {result['documents']} documents, segments {args.from_segment}+: "
        f"{result['mean_difference']:+.4f} {key}, 95% interval [{low:+.4f}, {high:+.4f}]; the first better on "
        f"{result['documents_first_better']} of {result['documents']} documents"
    )
    if "perplexity_ratio" in result:
        low, high = result["perplexity_ratio_interval_95"]
        print(f"perplexity ratio first / second: {result['perplexity_ratio']:.4f} [{low:.4f}, {high:.4f}]")
    if args.output:
        command = ["python -m benchmarks.language_modeling_paired", *(sys.argv[1:] if argv is None else argv)]
        write_json(Path(args.output), {**result, "command": " ".join(command)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
