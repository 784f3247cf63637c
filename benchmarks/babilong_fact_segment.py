"""Accuracy by the segment that holds the supporting fact, from `rmt eval` predictions: whether a memory model's
wrong answers come from facts written late in the input (past the number of segments it was trained on) or from
facts read long before the question.

    python -m benchmarks.babilong_fact_segment --segment-size 128 --bin 4 \
        --run "8 segments @ 4k=RESULTS/by-length-write-norm-8seg-4k/predictions.jsonl" --trained "8 segments @ 4k=8" \
        --output RESULTS/fact-segment.json --plot RESULTS/fact-segment.png

A fact's segment is 1 + floor(offset / segment size), the offset being where the fact starts in the input, in
tokens (`supporting_offsets`, recorded by `rmt eval`). Predictions written before `rmt eval` recorded offsets have
only the fact's depth in the context (`supporting_depths`); their offset is estimated as depth * tokens, tokens being
the prompt length the model read, which also counts the question's few tokens, so a fact within a few tokens of a
segment's end may be counted in the next segment. A sample with several supporting facts counts by its last one.
Only the `memory` method's predictions count. Segments are grouped in bins of --bin; each bin's accuracy comes with
its 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from rmt.eval.by_length import wilson_interval
from rmt.plotting import pyplot, save_figure


def fact_segment(prediction: dict[str, Any], segment_size: int) -> int:
    """The 1-based segment that holds the prediction's last supporting fact."""
    if prediction.get("supporting_offsets"):
        return 1 + max(prediction["supporting_offsets"]) // segment_size
    depth = max(prediction["supporting_depths"])
    return 1 + math.floor(depth * prediction["tokens"] / segment_size)


def by_fact_segment(predictions: list[dict[str, Any]], segment_size: int, bin_size: int) -> list[dict[str, Any]]:
    """Right answers per bin of fact segments (bins of `bin_size` segments, from segment 1), in order; only bins
    that hold a sample."""
    counts: dict[int, list[int]] = {}
    for prediction in predictions:
        if prediction["method"] != "memory" or not prediction.get("supporting_depths"):
            continue
        first = (fact_segment(prediction, segment_size) - 1) // bin_size * bin_size + 1
        tally = counts.setdefault(first, [0, 0])  # [right, samples]
        tally[0] += bool(prediction["correct"])
        tally[1] += 1
    bins = []
    for first, (right, total) in sorted(counts.items()):
        low, high = wilson_interval(right, total)
        bins.append(
            {
                "segments": [first, first + bin_size - 1],
                "correct": right,
                "samples": total,
                "accuracy": right / total,
                "interval": [low, high],
            }
        )
    return bins


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    """LABEL=VALUE pairs in order (the label may itself hold '='; the value follows the last one)."""
    pairs = {}
    for value in values:
        label, sep, rest = value.rpartition("=")
        if not sep or not label or not rest:
            raise SystemExit(f"{what} must be LABEL=VALUE, got {value!r}")
        pairs[label] = rest
    return pairs


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per run, one column per bin of fact segments, 'right/samples' in each cell."""
    spans = sorted({tuple(b["segments"]) for bins in results.values() for b in bins})
    lines = [
        "| run | " + " | ".join(f"fact in {first}-{last}" for first, last in spans) + " |",
        "|---|" + "---|" * len(spans),
    ]
    for label, bins in results.items():
        cells = {tuple(b["segments"]): f"{b['correct']}/{b['samples']}" for b in bins}
        lines.append(f"| {label} | " + " | ".join(cells.get(span, "-") for span in spans) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], trained: dict[str, int], path: Path) -> None:
    """Accuracy against the fact's segment (bin middles) with 95% intervals, one line per run; a dotted line at
    each run's trained number of segments."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(7, 4))
    for label, bins in results.items():
        middles = [(b["segments"][0] + b["segments"][1]) / 2 for b in bins]
        accuracy = [b["accuracy"] for b in bins]
        errors = [
            [a - b["interval"][0] for a, b in zip(accuracy, bins, strict=True)],
            [b["interval"][1] - a for a, b in zip(accuracy, bins, strict=True)],
        ]
        line = axes.errorbar(middles, accuracy, yerr=errors, marker="o", capsize=3, label=label)
        if label in trained:
            axes.axvline(trained[label] + 0.5, color=line[0].get_color(), linestyle=":")
    axes.set_xlabel("segment that holds the fact")
    axes.set_ylabel("exact match")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("accuracy by the fact's segment (dotted: segments trained on)")
    axes.legend(fontsize=8)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=PREDICTIONS.jsonl (repeatable)")
    parser.add_argument("--trained", action="append", default=[], help="LABEL=SEGMENTS the run's model trained on")
    parser.add_argument("--segment-size", type=int, required=True, help="the models' segment size in tokens")
    parser.add_argument("--bin", type=int, default=4, help="segments per bin (default: %(default)s)")
    parser.add_argument("--output", default=None, help="JSON result file")
    parser.add_argument("--plot", default=None, help="PNG of accuracy by the fact's segment")
    args = parser.parse_args(argv)
    if args.segment_size < 1 or args.bin < 1:
        raise SystemExit("--segment-size and --bin must be positive")
    runs = parse_pairs(args.run, "--run")
    trained = {}
    for label, value in parse_pairs(args.trained, "--trained").items():
        if label not in runs:
            raise SystemExit(f"--trained {label}={value}: no --run is labelled {label!r}")
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--trained {label}={value}: the number of segments must be a positive integer")
        trained[label] = int(value)
    results = {}
    for label, path in runs.items():
        if not Path(path).is_file():
            raise SystemExit(f"--run {label}: no predictions file at {path}")
        predictions = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        results[label] = by_fact_segment(predictions, args.segment_size, args.bin)
    print(table(results))
    if args.output:
        record = {"segment_size": args.segment_size, "bin": args.bin, "runs": runs, "trained": trained}
        write_json(Path(args.output), {**record, "by_fact_segment": results})
    if args.plot:
        plot(results, trained, Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
