"""Tests of benchmarks/armt_speed.py: the summary's ratios and table on known timings; the logits error compares the
diagonal engine's logits with sequential ARMT's (a deliberately shifted engine shows its shift, the real one ~0);
a smoke run on a tiny config where every method runs in its own worker subprocess (`python -m
benchmarks.armt_speed --worker`) with the steady malloc settings, recording per-segment times and page faults."""

from __future__ import annotations

import argparse
import json
import math
import statistics

import pytest
import torch

from benchmarks import armt_speed


def test_segment_drift():
    assert armt_speed.segment_drift([9.0] + [1.0] * 16) == 1.0  # segment 0 (lazy initialisation) is left out
    assert armt_speed.segment_drift([1.0] * 8 + [2.0] * 9) == 2.0
    assert armt_speed.segment_drift([1.0] * 5) is None  # too few segments for two quarters of two


def _ok(time_s: float, cpu_time_s: float, **extra: float) -> dict:
    return {"status": "ok", "time_s": time_s, "cpu_time_s": cpu_time_s, "peak_mb": 500.0, "before_mb": 480.0, **extra}


def test_ratios_and_table_on_known_timings(capsys):
    rows = [
        {
            "length": 1000,
            "full": _ok(2.0, 1.8),
            "sequential": _ok(1.0, 0.8),
            "diagonal": _ok(1.5, 1.2),
            "paired": {"status": "ok", "diagonal_over_sequential": 1.25},
        },
        {
            "length": 4000,
            "full": {"status": "oom"},
            "sequential": _ok(6.0, 5.0, segment_drift=1.1),
            "diagonal": _ok(3.0, 2.0),
            "logits_error": {"max_abs_relative": 2.5e-3},
        },
    ]
    ratios = armt_speed.compute_ratios(rows)
    assert ratios[0] == pytest.approx(
        {
            "length": 1000,
            "diagonal_over_sequential_paired": 1.25,
            "diagonal_over_sequential": 1.5,
            "diagonal_over_sequential_cpu_time": 1.5,
            "full_over_diagonal": 2.0 / 1.5,
            "sequential_per_token_vs_first": 1.0,
            "diagonal_per_token_vs_first": 1.0,
        }
    )
    assert ratios[1] == pytest.approx(  # no full/diagonal (full ran out of memory), no paired run
        {
            "length": 4000,
            "diagonal_over_sequential": 0.5,
            "diagonal_over_sequential_cpu_time": 0.4,
            "sequential_segment_drift": 1.1,
            "sequential_per_token_vs_first": (6.0 / 4000) / (1.0 / 1000),  # 1.5
            "diagonal_per_token_vs_first": (3.0 / 4000) / (1.5 / 1000),  # 0.5
        }
    )
    armt_speed.print_table(rows, ratios, cuda=False)
    lines = capsys.readouterr().out.strip().splitlines()
    header, first, second = ([cell.strip() for cell in line.split("|")] for line in lines)
    assert header[:12] == [
        *("length", "full s", "seq s", "diag s", "diag/seq", "(cpu t)", "(paired)", "full/diag", "seq/tok"),
        *("diag/tok", "seg drift", "logit err"),
    ]
    assert first[:12] == ["1000", "2.00", "1.00", "1.50", "1.500", "1.500", "1.250", "1.33", "1.00", "1.00", "-", "-"]
    assert second[:12] == ["4000", "oom", "6.00", "3.00", "0.500", "0.400", "-", "-", "1.50", "0.50", "1.10", "2.5e-03"]
    assert second[12] == "- / 500 (+20) / 500 (+20)"  # peak RSS (+ added by the run): full / seq / diag


def test_logits_error_on_known_logits():
    sequential = torch.tensor([[1.0, -4.0, 2.0]])
    diagonal = torch.tensor([[1.0, -4.0, 4.5]])
    assert armt_speed.logits_error(diagonal, sequential) == pytest.approx(  # relative to sequential's logits
        {"max_abs": 2.5, "max_abs_relative": 2.5 / 4.0, "relative_l2": 2.5 / math.sqrt(21.0)}
    )


ARGS = ["--config", "tiny", "--device", "cpu", "--segment-size", "32", "--memory-tokens", "4", "--d-mem", "16"]
ARGS += ["--threads", "1", "--no-paired"]


def test_logits_error_is_the_diagonal_engines_distance_from_sequential(tmp_path, monkeypatch):
    """In-process workers, the diagonal engine's first logit shifted by 0.01: the reported error is that shift."""
    shift = 0.01

    def in_process(args, method, length, logits_path):
        spec = {"method": method, "length": length, "logits_path": logits_path, "args": armt_speed._settings(args)}
        return armt_speed.worker(spec)

    def shifted_runner(method, model, args):
        run = real_runner(method, model, args)
        if method != "diagonal":
            return run

        def shifted(ids: torch.Tensor) -> torch.Tensor:
            logits = run(ids).clone()
            logits[:, 0] += shift
            return logits

        shifted.group_size = run.group_size
        return shifted

    real_runner = armt_speed.runner
    monkeypatch.setattr(armt_speed, "measure", in_process)
    monkeypatch.setattr(armt_speed, "runner", shifted_runner)
    output = tmp_path / "speed.json"
    armt_speed.main([*ARGS, "--lengths", "128", "--methods", "sequential", "diagonal", "--output", str(output)])
    error = json.loads(output.read_text())["results"][0]["logits_error"]
    assert error["max_abs"] == pytest.approx(shift, rel=1e-3)
    assert 0 < error["relative_l2"] <= error["max_abs_relative"]  # one logit moved: L2 share <= share of the max


def test_armt_speed_smoke_run(tmp_path):
    output = tmp_path / "speed.json"
    armt_speed.main([*ARGS, "--lengths", "320", "--output", str(output)])
    record = json.loads(output.read_text())
    (row,) = record["results"]
    assert row["length"] == 320
    assert all(row[m]["status"] == "ok" for m in ("full", "sequential", "diagonal"))
    assert row["logits_error"]["max_abs_relative"] < 1e-4  # the real engine: sequential's logits
    times = row["sequential"]["segment_times_s"]
    assert len(times) == 320 // 32
    assert record["ratios"][0]["sequential_segment_drift"] == armt_speed.segment_drift(times)
    assert record["meta"]["complete"] is True
    assert record["meta"]["device"] and record["meta"]["model_config"]["num_hidden_layers"] == 2
    # The workers ran with the steady malloc settings and counted their page faults.
    assert record["meta"]["malloc"] == armt_speed.STEADY_MALLOC
    for method in ("full", "sequential", "diagonal"):
        assert row[method]["malloc_env"] == armt_speed.STEADY_MALLOC
        assert row[method]["minor_faults_per_run"] >= 0


def test_a_run_stopped_part_way_keeps_the_lengths_it_measured(tmp_path, monkeypatch):
    def measure(args, method: str, length: int, logits_path: str) -> dict:
        if length == 256:
            raise KeyboardInterrupt  # the run is stopped during the second length
        torch.save(torch.zeros(1, 8), logits_path)
        return _ok(1.0, 1.0) | {"method": method, "length": length}

    monkeypatch.setattr(armt_speed, "measure", measure)
    output = tmp_path / "speed.json"
    with pytest.raises(KeyboardInterrupt):
        armt_speed.main([*ARGS, "--lengths", "128", "256", "--output", str(output)])
    record = json.loads(output.read_text())
    assert record["meta"]["complete"] is False and record["meta"]["lengths_done"] == [128]
    assert [row["length"] for row in record["results"]] == [128]
    assert record["results"][0]["logits_error"]["max_abs"] == 0.0


def test_paired_timing_alternates_the_order_and_reports_the_median_ratio(monkeypatch):
    calls: list[str] = []

    def recording_runner(method, model, args):
        return lambda ids: calls.append(method)

    monkeypatch.setattr(armt_speed, "runner", recording_runner)
    args = argparse.Namespace(device="cpu", repeats=3)
    ids = torch.zeros(1, 4, dtype=torch.long)
    record = armt_speed.paired_timing(None, ids, ids, args)
    assert calls[2:] == ["sequential", "diagonal", "diagonal", "sequential", "sequential", "diagonal"]
    assert [len(record["times_s"][m]) for m in ("sequential", "diagonal")] == [3, 3]
    assert record["diagonal_over_sequential"] == statistics.median(record["ratios"])
    assert record["length"] == 4
