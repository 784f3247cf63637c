"""The report of `benchmarks/reproduce.py`: from the cells' records, results.json, results.md (one Markdown table per
task, ours next to the RMT paper's numbers of benchmarks/published/rmt_paper.json, then extrapolation, setup and
runtimes) and the plots (one PNG per task, accuracy vs number of segments, and extrapolation.png).

Not a script: `python -m benchmarks.reproduce` writes the report after every cell, and
`python -m benchmarks.reproduce --report --output DIR` rewrites it from DIR/results.json without running anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import write_atomically, write_json
from rmt.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from benchmarks.reproduce_setup import ExtrapolationSetup, TaskSetup

# Model kinds in the order of the table's columns and the plots' legends.
KIND_LABELS = {
    "rmt": "RMT",
    "no_memory": "no memory",
    "trxl": "Transformer-XL",
    "memtrxl": "MemTrXL",
    "memory_at_start": "memory at start only",
}


def load_results(path: Path) -> dict[str, Any]:
    """The records in a results.json, or no cells when the file does not exist."""
    if path.exists():
        return json.loads(path.read_text())
    return {"cells": {}}


def write_report(
    results: dict[str, Any],
    output_dir: Path,
    tasks: Mapping[str, TaskSetup],
    extrapolation: ExtrapolationSetup,
    plots: bool = True,
) -> None:
    """results.json, results.md and (if `plots`) the PNG plots from every cell in `results`, each file written
    whole (a crash never leaves a half-written results.json)."""
    write_json(output_dir / "results.json", results)
    write_atomically(output_dir / "results.md", format_table(results, tasks, extrapolation))
    if plots:
        plot(results, output_dir, tasks, extrapolation)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(results: dict[str, Any], tasks: Mapping[str, TaskSetup], extrapolation: ExtrapolationSetup) -> str:
    """Markdown: one table per task, ours next to the published number, then extrapolation, setup and runtimes."""
    cells = results["cells"]
    lines = [
        "# RMT paper comparisons, reproduced on CPU",
        "",
        "Each entry: **ours** (published). Ours: held-out answer accuracy (quadratic: exact match, with the "
        "per-token accuracy of the generated solution in brackets) of a CPU-sized "
        "model; multi-token answers generated greedily through the memory. Published: RMT paper (Bulatov, Kuratov, "
        "Burtsev, NeurIPS 2022, arXiv 2207.06881), as copied into benchmarks/published/rmt_paper.json. "
        "Cells not run show '-'.",
        "",
    ]
    run_tasks = {record["task"] for record in cells.values()}
    for name, setup in tasks.items():
        if run_tasks and name not in run_tasks:  # a folder with some cells shows their tasks; an empty one, the plan
            continue
        runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for record in cells.values():
            if record["task"] == name:
                runs.setdefault((record["segments"], record["kind"]), []).append(record)
        ran = {key: _seed_mean(records) for key, records in runs.items()}
        segments = sorted({s for s, _ in setup.cells} | {s for s, _ in ran})
        present = {kind for _, kind in setup.cells} | {kind for _, kind in ran}
        kinds = [k for k in KIND_LABELS if k in present]
        metric = "exact match" if setup.metric == "exact_match" else "per-token accuracy"
        lines += [f"## {setup.title} ({metric}, chance {setup.chance:.2f})", ""]
        lines.append("| segments (size) | " + " | ".join(KIND_LABELS[k] for k in kinds) + " |")
        lines.append("|---" * (len(kinds) + 1) + "|")
        for s in segments:
            row = [f"{s} ({setup.make(s).segment_size_for(s)})"]
            for k in kinds:
                record, published = ran.get((s, k)), setup.published.get((s, k))
                ours = f"**{_fmt(record['score'])}**" if record else "-"
                if record and len(runs[(s, k)]) > 1:  # several seeds: their mean, then each
                    ours += " [seeds " + ", ".join(_fmt(r["score"]) for r in _by_seed(runs[(s, k)])) + "]"
                if record and setup.metric == "exact_match" and "generated" in record:
                    ours += f" [per token {record['generated']['accuracy']:.2f}]"  # progress below exact match
                row.append(f"{ours} ({_fmt(published)})" if (record or published is not None) else "")
            lines.append("| " + " | ".join(row) + " |")
        lines += [
            "",
            f"Setup: Llama-architecture backbone, {_used(ran.values(), 'layers', setup.layers, 'model')} layers, "
            f"width {_used(ran.values(), 'hidden', setup.hidden, 'model')}, "
            f"{_used(ran.values(), 'heads', setup.heads, 'model')} heads "
            f"(paper: {setup.paper_model}); {_used(ran.values(), 'steps', setup.steps)} steps of batch "
            f"{setup.batch_size}, AdamW lr {_used(ran.values(), 'learning_rate', setup.learning_rate)}; "
            f"memory size = {setup.memory_note}; "
            + _cache_length_text(ran.values())
            + _cache_text(ran.values())
            + "."
            + _pretraining_text(setup, [record for seeds in runs.values() for record in seeds])  # every seed's
            + _start_text(runs)
            + (f" Note: {setup.note}." if setup.note else ""),
            "",
        ]
    extrapolated = [r for r in cells.values() if r["task"] == "detect_memorize"]
    if extrapolated:
        e = extrapolation
        lines += [f"## {e.title} (accuracy, chance {e.chance:.2f})", ""]
        for record in extrapolated:
            top = record["segments"]
            evaluated = sorted(record["extrapolation"], key=int)
            lines.append("| trained up to | " + " | ".join(f"eval {n} segments" for n in evaluated) + " |")
            lines.append("|---" * (len(evaluated) + 1) + "|")
            bars = {str(top * m): b for m, b in e.bars.items()}
            row = [f"{top} segments ({record['segment_size']} tokens each)"]
            for n in evaluated:
                bar = f" (bar {bars[n]:.1f})" if n in bars else ""
                row.append(f"**{record['extrapolation'][n]:.3f}**{bar}")
            lines.append("| " + " | ".join(row) + " |")
            for run_seed, accuracies in sorted(record.get("seeds", {}).items(), key=lambda item: int(item[0])):
                chosen = " (selected: best at the trained count)" if int(run_seed) == record["selected_seed"] else ""
                cells_text = " | ".join(f"{accuracies[n]:.3f}" for n in evaluated)
                lines.append(f"| seed {run_seed}{chosen} | {cells_text} |")
            lines.append("")
        lines += [
            f"Setup: {e.layers} layers, width {e.hidden}, {e.memory_tokens} memory tokens, curriculum +1 segment per "
            f"stage up to the trained count, {_used(extrapolated, 'steps', e.steps)} steps of batch {e.batch_size}. "
            "Published (BERT-base, 512-token segments, arXiv 2304.11062): models trained on >= 5 segments "
            "generalize to 2x length; detect & memorize ~99.6% at 32k tokens.",
            "",
        ]
    lines += _by_segment_table(cells)
    lines += [
        "## Runtimes (2-core CPU)",
        "",
        "| cell | warm-up s | train s | eval s | train steps |",
        "|---|---|---|---|---|",
    ]
    for key, record in sorted(cells.items()):
        lines.append(
            f"| {key} | {_warmup_seconds(record):.0f} | {record['train_seconds']:.0f} | "
            f"{record.get('eval_seconds', 0):.0f} | {record['train']['steps']} |"
        )
    total = sum(_warmup_seconds(r) + r["train_seconds"] + r.get("eval_seconds", 0) for r in cells.values())
    lines += ["", f"Total: {total / 60:.1f} minutes.", ""]
    return "\n".join(lines)


def _by_segment_table(cells: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: each generated cell's per-token accuracy by the segment its answer tokens sit in (none when
    no cell recorded it)."""
    rows = [(key, r.get("generated", {}).get("accuracy_by_segment")) for key, r in sorted(cells.items())]
    rows = [(key, by_segment) for key, by_segment in rows if by_segment]
    if not rows:
        return []
    lines = [
        "## Generated answers: accuracy by the segment the answer token sits in",
        "",
        "Later answer tokens of copy and reverse have their source further back, so this shows how far back a model "
        "reaches.",
        "",
        "| cell | segment: accuracy |",
        "|---|---|",
    ]
    for key, by_segment in rows:
        lines.append(f"| {key} | " + ", ".join(f"{n}: {a:.2f}" for n, a in by_segment.items()) + " |")
    return [*lines, ""]


def _by_seed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: r.get("seed", 0))


def _seed_mean(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of a cell run with one seed, or the first seed's record with the mean score of all seeds (and the
    mean per-token accuracy of the generated answers, where every seed has it)."""
    first = _by_seed(records)[0]
    if len(records) == 1:
        return first
    mean = {**first, "score": sum(r["score"] for r in records) / len(records)}
    if all("generated" in r for r in records):
        accuracy = sum(r["generated"]["accuracy"] for r in records) / len(records)
        mean["generated"] = {**first["generated"], "accuracy": accuracy}
    return mean


def _warmup_seconds(record: dict[str, Any]) -> float:
    return record["pretraining"]["seconds"] if "pretraining" in record else 0.0


def _pretraining_text(setup: TaskSetup, records: Iterable[dict[str, Any]]) -> str:
    """The Setup sentence on the backbone's initial weights and in-context warm-up, with what the warm-up reached."""
    records = list(records)
    text = f" Initial weight std {setup.init_std}." if setup.init_std is not None else ""
    pretraining = setup.pretraining
    if pretraining is None:
        return text
    reached = sorted({r["pretraining"]["in_context_accuracy"] for r in records if "pretraining" in r})
    after = f"; one-query accuracy in one window after it: {min(reached):.2f}-{max(reached):.2f}" if reached else ""
    steps = _used(records, "steps", pretraining.steps, "pretraining")  # --pretraining-steps, where it was given
    return (
        f"{text} Before each cell, the bare backbone is warmed up in context on {pretraining.description} "
        f"({steps} steps of batch {pretraining.batch_size}, lr {pretraining.learning_rate}{after}); "
        "all kinds start from it."
    )


def _cache_length_text(records: Iterable[dict[str, Any]]) -> str:
    """How many segments the Tr-XL cells' caches held (one, as in the paper, unless --xl-cache-segments said more)."""
    configs = [r.get("rmt_config", {}) for r in records]
    lengths = sorted({c["xl_cache_tokens"] // c["segment_size"] for c in configs if c.get("xl_cache_tokens")})
    if lengths in ([], [1]):
        return "Tr-XL cache = one segment"
    return "Tr-XL cache = " + " or ".join(str(n) for n in lengths) + " segments"


def _cache_text(records: Iterable[dict[str, Any]]) -> str:
    """How the Tr-XL cells' caches were trained: detached keys/values (the default) or keys/values recomputed from
    cached layer inputs (`--xl-recompute`, the original Transformer-XL)."""
    configs = [r.get("rmt_config", {}) for r in records]
    recomputed = {bool(c.get("xl_cache_recompute")) for c in configs if c.get("xl_cache_tokens")}
    if recomputed == {True}:
        return " (keys/values recomputed from the cached layer inputs, as in the original Transformer-XL)"
    if recomputed == {True, False}:
        return " (keys/values recomputed from cached layer inputs in some cells, detached keys/values in others)"
    return ""


# The record keys of a saved start (reproduce.py's --init-backbone and --init-model) and what each takes from it.
_STARTS = (("init_backbone", "backbone"), ("init_model", "whole model, memory included,"))


def _start_text(runs: Mapping[tuple[int, str], list[dict[str, Any]]]) -> str:
    """The Setup sentences naming the cells that started from a saved model's backbone (--init-backbone) or from a
    whole saved model, memory included (--init-model), instead of a random backbone."""
    starts: dict[tuple[str, str, Any], list[str]] = {}
    for (segments, kind), records in sorted(runs.items()):
        for record, (key, what) in product(records, _STARTS):
            if key in record:
                cell = f"{segments} segment{'s' if segments > 1 else ''} {kind}"
                cell += f" (seed {record['seed']})" if record.get("seed") else ""
                starts.setdefault((what, record[key]["folder"], record[key].get("steps")), []).append(cell)
    sentences = [
        f" {', '.join(cells)}: {what} started from {folder}"
        + (
            f" (a checkpoint at step {steps} of its own run; the steps above come on top)."
            if steps is not None
            else "."
        )
        for (what, folder, steps), cells in starts.items()
    ]
    return "".join(sentences)


def _used(records: Iterable[dict[str, Any]], key: str, default: Any, part: str = "train") -> str:
    """The values of record[part][key] over the cells run ('600' or '60, 600'), or the default when no record has
    one."""
    used = sorted({r[part][key] for r in records if key in r.get(part, {})})
    return ", ".join(map(str, used)) if used else str(default)


def plot(
    results: dict[str, Any], output_dir: Path, tasks: Mapping[str, TaskSetup], extrapolation: ExtrapolationSetup
) -> None:
    """One PNG per task with results (accuracy vs number of segments, a line per model kind through the mean of its
    seeds, each seed a small dot, the published numbers dotted with hollow markers), and extrapolation.png."""
    plt = pyplot()

    cells = results["cells"]
    colors = dict(zip(KIND_LABELS, ("C0", "C1", "C2", "C3", "C4"), strict=True))
    for name, setup in tasks.items():
        ran = [r for r in cells.values() if r["task"] == name]
        if not ran:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind in KIND_LABELS:
            seeds = sorted((r["segments"], r["score"]) for r in ran if r["kind"] == kind)
            by_segments: dict[int, list[float]] = {}
            for segments, score in seeds:
                by_segments.setdefault(segments, []).append(score)
            # The line joins the seeds' means (the table's numbers); each seed's own score is a small unjoined dot.
            points = [(segments, sum(scores) / len(scores)) for segments, scores in sorted(by_segments.items())]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colors[kind], label=KIND_LABELS[kind])
            if len(seeds) > len(points):
                xs, ys = zip(*seeds, strict=True)
                ax.plot(xs, ys, linestyle="none", marker=".", markersize=4, alpha=0.6, color=colors[kind])
            published = sorted((s, v) for (s, k), v in setup.published.items() if k == kind)
            if points and published:
                xs, ys = zip(*published, strict=True)
                ax.plot(xs, ys, linestyle=":", marker="o", markerfacecolor="none", color=colors[kind])
        if setup.chance:
            ax.axhline(setup.chance, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel("number of segments")
        ax.set_ylabel("exact match" if setup.metric == "exact_match" else "answer accuracy (held out)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{setup.title} (dotted, hollow: published)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save_figure(fig, output_dir / f"{name}.png")
    extrapolated = [r for r in cells.values() if r["task"] == "detect_memorize"]
    if extrapolated:
        fig, ax = plt.subplots(figsize=(6, 4))
        for record in extrapolated:
            points = sorted((int(n), v) for n, v in record["extrapolation"].items())
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=f"RMT trained up to {record['segments']} segments")
            ax.axvline(record["segments"], color="gray", linestyle=":", linewidth=1)
        ax.axhline(extrapolation.chance, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of segments at evaluation")
        ax.set_ylabel("answer accuracy (held out)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(extrapolation.title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save_figure(fig, output_dir / "extrapolation.png")
