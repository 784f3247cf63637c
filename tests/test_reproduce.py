"""Smoke test of benchmarks/reproduce.py and its report (benchmarks/reproduce_report.py): the 2-cell smoke grid,
in-process with very few steps, writes results.json, the Markdown table and the plots; cell parsing and the model
kinds' configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import reproduce, reproduce_report


def test_smoke_run_writes_results_table_and_plots(tmp_path):
    args = ["--smoke", "--steps", "2", "--output", str(tmp_path), "--no-progress", "--threads", "1"]
    assert reproduce.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["cells"]) == {"copy:3:rmt", "copy:3:no_memory"}
    for record in results["cells"].values():
        assert 0.0 <= record["score"] <= 1.0 and record["score_source"] == "generated"
        assert record["published"] in (1.00, 0.12)
    table = (tmp_path / "results.md").read_text()
    assert "| 3 (25) |" in table and "(1.00)" in table and "Runtimes" in table
    assert (tmp_path / "copy.png").stat().st_size > 0
    (tmp_path / "results.md").unlink()
    assert reproduce.main(["--report", "--output", str(tmp_path)]) == 0  # rewrites the report, runs nothing
    assert (tmp_path / "results.md").read_text() == table
    with pytest.raises(SystemExit, match="results.json is missing"):
        reproduce.main(["--report", "--output", str(tmp_path / "empty")])


def test_cells_and_kinds():
    assert reproduce.parse_cell("copy:6:rmt") == reproduce.Cell("copy", 6, "rmt")
    for bad in ("copy:6", "copy:x:rmt", "copy:6:lstm", "sort:6:rmt"):
        with pytest.raises(ValueError):
            reproduce.parse_cell(bad)
    keys = [c.key for c in reproduce.grid()]
    assert len(keys) == len(set(keys)) and "detect_memorize:8:rmt" in keys
    configs = {kind: reproduce.rmt_config(kind, segment_size=12, memory_tokens=12) for kind in reproduce.KINDS}
    assert (configs["rmt"].num_memory_tokens, configs["rmt"].xl_cache_tokens) == (12, 0)
    assert (configs["no_memory"].num_memory_tokens, configs["no_memory"].xl_cache_tokens) == (0, 0)
    assert (configs["trxl"].num_memory_tokens, configs["trxl"].xl_cache_tokens) == (0, 12)
    assert (configs["memtrxl"].num_memory_tokens, configs["memtrxl"].xl_cache_tokens) == (12, 12)
    assert configs["memory_at_start"].read_memory_only


def test_processes_sharing_an_output_folder_keep_each_others_cells(tmp_path):
    """Two runs with different --cells in one folder: each adds its cells to what is on disk, not to the
    results it loaded at its start; results.json is replaced whole, never left half-written."""
    record = {
        **{"task": "copy", "segments": 3, "kind": "rmt", "score": 1.0, "metric": "accuracy", "published": 1.0},
        **{"segment_size": 25, "train_seconds": 1.0, "train": {"steps": 2, "learning_rate": 3e-3, "batch_size": 32}},
    }
    reproduce.record_cell(tmp_path, "copy:3:rmt", record)
    reproduce.record_cell(tmp_path, "copy:3:no_memory", {**record, "kind": "no_memory", "score": 0.1})
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert set(cells) == {"copy:3:rmt", "copy:3:no_memory"}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_extrapolation_cell_reports_every_seed_and_selects_on_the_trained_length(tmp_path):
    cell = reproduce.Cell("detect_memorize", 2, "rmt")
    record = reproduce.run_cell(cell, tmp_path, progress=False, steps=2, seeds=2, eval_samples=32)
    assert set(record["seeds"]) == {"0", "1"} and set(record["seeds"]["0"]) == {"2", "4", "8", "16"}
    best = max(record["seeds"], key=lambda s: record["seeds"][s]["2"])
    assert record["selected_seed"] == int(best) and record["extrapolation"] == record["seeds"][best]
    table = reproduce_report.format_table({"cells": {cell.key: record}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert "| seed 0" in table and "| seed 1" in table and "selected" in table


def test_associative_cell_starts_from_a_backbone_warmed_up_in_context(tmp_path):
    setup = reproduce.TASKS["associative_retrieval"]
    cell = reproduce.parse_cell("associative_retrieval:3:rmt")
    few = dataclasses.replace(setup.pretraining, steps=3)
    record = reproduce.run_cell(cell, tmp_path, progress=False, steps=2, batch_size=8, eval_samples=32, pretraining=few)
    warmup = record["pretraining"]
    assert warmup["steps"] == 3 and warmup["sequence_length"] == 25  # 4 pairs, QUERY, 8 queried pairs
    assert 0.0 <= warmup["in_context_accuracy"] <= 1.0 and record["model"]["init_std"] == 0.1
    assert (tmp_path / "cells" / "associative_retrieval-3-rmt" / "pretraining" / "metrics.jsonl").exists()
    table = reproduce_report.format_table({"cells": {cell.key: record}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert "warmed up in context" in table and "| associative_retrieval:3:rmt |" in table
