"""Plot held-out evaluation curves from trainer logs (`metrics.jsonl`), one line per run, where a run may be a chain
of logs: a model trained further from an earlier one (--init-model) continues the earlier log's step count.

Run from the repository root:
    python -m benchmarks.training_curves --metric eval_exact_match --output curves.png \
        "RMT=first/metrics.jsonl+second/metrics.jsonl" "Transformer-XL=trxl/metrics.jsonl" --target "RMT=0.99"

Each RUN argument is LABEL=LOG[+LOG...]. Within a chain, the steps of each log are shifted by the last step of the
logs before it, so the x axis counts the run's training steps from its first log. --target LABEL=VALUE draws a
dashed horizontal line in that run's colour (for example a published number).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rmt.errors import InputError
from rmt.plotting import pyplot, save_figure


def read_chain(logs: list[Path], metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` over a chain of trainer logs, each log's steps continuing the one before it."""
    points: list[tuple[int, float]] = []
    offset = 0
    for log in logs:
        if not log.exists():
            raise InputError(f"training_curves: no log at {log}")
        records: list[dict[str, Any]] = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not records:
            raise InputError(f"training_curves: {log} holds no records")
        points += [(offset + r["step"], float(r[metric])) for r in records if metric in r]
        offset += max(r["step"] for r in records)
    if not points:
        raise InputError(f"training_curves: no {metric!r} in {', '.join(map(str, logs))}")
    return points


def parse_run(text: str) -> tuple[str, list[Path]]:
    """'LABEL=LOG[+LOG...]' -> (label, logs)."""
    label, sep, logs = text.partition("=")
    if not sep or not label or not logs:
        raise InputError(f"training_curves: a run is LABEL=LOG[+LOG...], got {text!r}")
    return label, [Path(p) for p in logs.split("+")]


def parse_target(text: str, runs: dict[str, list[Path]]) -> tuple[str, float]:
    """'LABEL=VALUE' -> (label, value), the label one of the runs'."""
    label, _, value = text.partition("=")
    if label not in runs:
        raise InputError(f"training_curves: --target {text!r} names no run (runs: {', '.join(runs)})")
    try:
        return label, float(value)
    except ValueError:
        raise InputError(f"training_curves: --target {text!r}: {value!r} is not a number") from None


def plot(
    runs: dict[str, list[tuple[int, float]]], targets: dict[str, float], metric: str, title: str, output: Path
) -> None:
    """One line per run (markers at each evaluation), targets dashed in the run's colour."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for label, points in runs.items():
        steps = [step for step, _ in points]
        values = [value for _, value in points]
        (line,) = axes.plot(steps, values, marker="o", markersize=3, label=label)
        if label in targets:
            axes.axhline(targets[label], color=line.get_color(), linestyle="--", linewidth=1)
    axes.set_xlabel("training steps")
    axes.set_ylabel(metric.replace("_", " "))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="LABEL=LOG[+LOG...]")
    parser.add_argument("--metric", default="eval_accuracy", help="the logged value to plot (default: %(default)s)")
    parser.add_argument("--target", action="append", default=[], metavar="LABEL=VALUE", help="a dashed line")
    parser.add_argument("--title", default="", help="the plot's title")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        runs = dict(parse_run(text) for text in args.runs)
        targets = dict(parse_target(text, runs) for text in args.target)
        curves = {label: read_chain(logs, args.metric) for label, logs in runs.items()}
    except InputError as error:
        raise SystemExit(str(error)) from None
    plot(curves, targets, args.metric, args.title, Path(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
