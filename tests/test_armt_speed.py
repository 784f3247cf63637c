"""Smoke test of benchmarks/armt_speed.py on a tiny config: every method runs in its own worker subprocess, the diagonal
engine's logits equal the sequential ones, and the JSON carries the ratios, the per-segment times, the malloc
settings the workers ran with and their page faults."""

from __future__ import annotations

import json

from benchmarks import armt_speed


def test_segment_drift():
    assert armt_speed.segment_drift([9.0] + [1.0] * 16) == 1.0  # segment 0 (lazy initialisation) is left out
    assert armt_speed.segment_drift([1.0] * 8 + [2.0] * 9) == 2.0
    assert armt_speed.segment_drift([1.0] * 5) is None  # too few segments for two quarters of two


def test_armt_speed_smoke_run(tmp_path):
    output = tmp_path / "speed.json"
    argv = ["--config", "tiny", "--device", "cpu", "--lengths", "256", "640", "--segment-size", "32"]
    argv += ["--memory-tokens", "4", "--d-mem", "16", "--threads", "1", "--no-paired"]
    argv += ["--output", str(output)]
    armt_speed.main(argv)
    record = json.loads(output.read_text())
    rows = {row["length"]: row for row in record["results"]}
    assert set(rows) == {256, 640}
    for row in rows.values():
        assert all(row[m]["status"] == "ok" for m in ("full", "sequential", "diagonal"))
        assert row["logits_error"]["max_abs_relative"] < 1e-4
        assert len(row["sequential"]["segment_times_s"]) == row["length"] // 32
    ratios = {ratio["length"]: ratio for ratio in record["ratios"]}
    assert ratios[256]["sequential_per_token_vs_first"] == 1.0
    assert ratios[640]["sequential_segment_drift"] > 0
    assert ratios[640]["full_over_diagonal"] > 0 and ratios[640]["diagonal_over_sequential"] > 0
    assert record["meta"]["device"] and record["meta"]["model_config"]["num_hidden_layers"] == 2
    # The workers ran with the steady malloc settings and counted their page faults.
    assert record["meta"]["malloc"] == armt_speed.STEADY_MALLOC
    for row in rows.values():
        for method in ("full", "sequential", "diagonal"):
            assert row[method]["malloc_env"] == armt_speed.STEADY_MALLOC
            assert row[method]["minor_faults_per_run"] >= 0
