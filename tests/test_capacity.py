"""Smoke test of benchmarks/capacity.py: a 2-step run of every model kind, after a 2-step in-context warm-up,
writes the table and the JSON; a second run into the same folder keeps the saved points and adds a seed."""

from __future__ import annotations

import json

from benchmarks import capacity


def test_capacity_smoke_run(tmp_path):
    argv = ["--pairs", "2", "4", "--steps", "2", "--warmup-steps", "2", "--kinds", "armt", "rmt", "context"]
    capacity.main([*argv, "--output", str(tmp_path)])
    record = json.loads((tmp_path / "capacity.json").read_text())
    rows = record["rows"]
    assert set(record["warmups"]) == {"2:0", "4:0"}  # "pairs:seed"
    assert all(0.0 <= w["in_context_accuracy"] <= 1.0 for w in record["warmups"].values())
    assert {(r["kind"], r["pairs"]) for r in rows} == {(k, p) for k in ("armt", "rmt", "context") for p in (2, 4)}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    segments = {(r["kind"], r["pairs"]): r["segments"] for r in rows}
    assert segments[("armt", 4)] == 3 and segments[("context", 4)] == 1  # 4 pairs + query: 3 segments of 4 tokens
    table = (tmp_path / "capacity.md").read_text()
    assert "| 4 | 3 |" in table and "ARMT" in table and "in context" in table and "warmed up" in table


def test_capacity_rerun_keeps_saved_points_and_adds_a_seed(tmp_path):
    argv = ["--pairs", "2", "--steps", "2", "--warmup-steps", "2", "--output", str(tmp_path)]
    capacity.main(argv)
    first = json.loads((tmp_path / "capacity.json").read_text())["rows"]
    capacity.main([*argv, "--seeds", "0", "1"])
    rows = json.loads((tmp_path / "capacity.json").read_text())["rows"]
    assert [r for r in rows if r["seed"] == 0] == first  # kept as saved, not run again
    assert {(r["kind"], r["seed"]) for r in rows} == {(k, s) for k in ("armt", "rmt") for s in (0, 1)}
    assert "seeds 0, 1" in (tmp_path / "capacity.md").read_text()
    capacity.main([*argv, "--steps", "3"])  # other settings: nothing reused
    assert {r["seed"] for r in json.loads((tmp_path / "capacity.json").read_text())["rows"]} == {0}
