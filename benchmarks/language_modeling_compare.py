"""Several trained runs of `benchmarks.language_modeling` in one plot and one table: perplexity (words) or bits per
byte by the segment's position in the document, a line per run, when their settings differ and so sit in separate
output folders (another seed, BPTT depth or memory size).

    python -m benchmarks.language_modeling_compare \
        runs/lm-words-seg50-mem10:trxl=Transformer-XL runs/lm-words-seg50-mem10-wscale-bpttall:rmt=RMT \
        --output benchmarks/results/language_modeling-words-cpu/compare

Each run is FOLDER:KIND[=LABEL]: a --output folder of `benchmarks.language_modeling` and a kind its results.json
holds (the label defaults to FOLDER:KIND). Only the results.json files are read, nothing is trained or scored again.
The runs must read the same text the same way (unit, vocabulary, document length and segment size), so that their
scores and segment positions compare; every other setting in which they differ (seed, steps, memory, BPTT, model
size...) gets a column of the table. Runs of other seeds hold out other documents: for a gap between two runs of one
seed with its interval, use `benchmarks.language_modeling_paired`.
The output folder gets comparison.png, comparison.md and comparison.json (the inputs, their settings and the
values), each written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import write_atomically, write_json
from benchmarks.language_modeling import (
    ADDED_SETTINGS,
    comparable_settings,
    document_length,
    metric_key,
    predicted_tokens,
    read_run,
)
from rmt.config import with_fields_added_later
from rmt.plotting import pyplot, save_figure

# Settings that must agree for two runs' scores and segment positions to compare (the same words, cut alike)
SAME_TASK = ("unit", "vocabulary", "document_bytes", "document_words", "segment_size")
# Settings that the model columns of the table show as the model was built (a cache, a BPTT depth only where they
# apply to the run's kind)
MODEL_SETTINGS = ("memory", "cache", "bptt", "memory_write_scale", "xl_contiguous_positions")


@dataclass
class Run:
    """One trained run as the comparison reads it."""

    label: str
    folder: str
    kind: str
    settings: dict[str, Any]
    record: dict[str, Any]


def read_labelled_run(spec: str) -> Run:
    """The run FOLDER:KIND[=LABEL] names, refused with one line when its folder holds no such trained run."""
    location, _, label = spec.partition("=")
    folder, kind, results = read_run(location, form="FOLDER:KIND or FOLDER:KIND=LABEL")
    settings = {**ADDED_SETTINGS, **results.get("settings", {})}
    return Run(label or location, str(folder), kind, settings, results["runs"][kind])


def check_same_task(runs: list[Run]) -> None:
    """Refuse runs that read other text or cut it otherwise (unit, vocabulary, document length, segment size)."""
    first = runs[0]
    for run in runs[1:]:
        differing = [name for name in SAME_TASK if run.settings.get(name) != first.settings.get(name)]
        if differing:
            values = ", ".join(
                f"{name} {first.settings.get(name)} against {run.settings.get(name)}" for name in differing
            )
            raise SystemExit(
                f"error: {first.label} and {run.label} read other text or cut it otherwise ({values}): their scores "
                "do not compare"
            )


def summary(run: Run) -> dict[str, Any]:
    """The run's score overall, in its first segment and over the rest (each segment weighted by the tokens it
    predicts, so a shorter last segment counts for less; None for documents of one segment), in bits per token and,
    for words, as perplexity."""
    key = metric_key(run.settings)
    by_segment = run.record[f"{key}_by_segment"]
    counts = predicted_tokens(document_length(run.settings), run.settings["segment_size"])
    later = None
    if len(by_segment) > 1:
        later = sum(b * c for b, c in zip(by_segment[1:], counts[1:], strict=True)) / sum(counts[1:])
    values = {"overall": run.record[key], "segment_1": by_segment[0], "later_segments": later}
    out: dict[str, Any] = {"label": run.label, "folder": run.folder, "kind": run.kind, "measure": key}
    out.update(values)
    if key == "bpw":
        out.update({f"{name}_perplexity": None if v is None else 2**v for name, v in values.items()})
    out["by_segment"] = by_segment
    out["settings"] = shown_settings(run)
    return out


def shown_settings(run: Run) -> dict[str, Any]:
    """What may tell the run apart from others: its model as built (from the record's rmt_config; "-" where a
    setting does not apply to its kind, such as a BPTT depth without memory tokens), then every other setting of
    its folder but those all compared runs share by force (SAME_TASK)."""
    model = with_fields_added_later(run.record["rmt_config"])  # records written before a field existed
    memory, cache = model["num_memory_tokens"], model["xl_cache_tokens"]
    shown = {
        "memory": memory,
        "cache": cache,
        "bptt": ("all" if model["bptt_depth"] == -1 else model["bptt_depth"]) if memory else "-",
        "write": model["memory_write_scale"] if memory else "-",
        "contiguous positions": model["xl_contiguous_positions"] if memory and cache else "-",
    }
    others = comparable_settings(run.settings)
    shown.update({name: value for name, value in others.items() if name not in (*SAME_TASK, *MODEL_SETTINGS)})
    return shown


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the runs: perplexity (and bits per word) or bits per byte, overall, in segment 1 and in
    the later segments, with the settings that tell the runs apart."""
    words = rows[0]["measure"] == "bpw"
    segments = len(rows[0]["by_segment"])
    names = list(dict.fromkeys(name for row in rows for name in row["settings"]))
    shown = [name for name in names if len({json.dumps(row["settings"].get(name)) for row in rows}) > 1]
    columns = ["run", *(["perplexity", "bits per word"] if words else ["bits per byte"])]
    columns += ["segment 1", f"segments 2-{segments}" if segments > 1 else "later segments", *shown]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if words:
            cells = [f"**{row['overall_perplexity']:.2f}**", f"{row['overall']:.3f}"]
            cells += [_cell(row["segment_1_perplexity"], 2), _cell(row["later_segments_perplexity"], 2)]
        else:
            cells = [f"**{row['overall']:.3f}**", _cell(row["segment_1"], 3), _cell(row["later_segments"], 3)]
        cells += [str(row["settings"].get(name, "-")) for name in shown]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Perplexity (words) or bits per byte by segment position, a line per run, its overall score in the legend."""
    plt = pyplot()
    words = rows[0]["measure"] == "bpw"
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for row in rows:
        values = [2**b for b in row["by_segment"]] if words else row["by_segment"]
        overall = f"{row['overall_perplexity']:.2f}" if words else f"{row['overall']:.3f}"
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{row['label']} ({overall})")
    ax.set_xlabel("segment of the document")
    ax.set_ylabel("perplexity per word (held out)" if words else "bits per byte (held out)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not over them
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="FOLDER:KIND[=LABEL]", help="trained runs to compare (two or more)")
    parser.add_argument("--output", required=True, help="folder for comparison.png, comparison.md, comparison.json")
    parser.add_argument(
        "--title", default="Language modelling on public-domain books", help="the plot's title (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two or more runs to compare")
    runs = [read_labelled_run(spec) for spec in args.runs]
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"error: two runs share a label ({', '.join(labels)}): give each its own with =LABEL")
    check_same_task(runs)
    rows = [summary(run) for run in runs]
    table = format_table(rows)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.language_modeling_compare " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_json(output / "comparison.json", {"command": command, "runs": rows})
    write_atomically(output / "comparison.md", table + "\n")
    plot(rows, output / "comparison.png", args.title)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
