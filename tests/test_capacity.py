"""Tests of benchmarks/capacity.py: a short run of every model kind, after a short in-context warm-up, records the
accuracy that the trained models (and the warmed-up backbones) score on the held-out samples, and writes the table;
a second run into the same folder keeps the saved points and adds a seed."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from benchmarks import capacity
from rmt.data.tasks import IGNORE_INDEX
from rmt.train.loop import TaskSource

EVAL_BATCHES, EVAL_BATCH_SIZE = 4, 128  # the held-out samples capacity.py scores every point and warm-up on


@torch.no_grad()
def answer_accuracy(model, task, **inputs) -> float:
    """Accuracy of the argmax prediction of every scored token on the held-out batches; `model` is a memory model
    or a bare Hugging Face backbone (labels are not shifted: position t - 1 predicts token t)."""
    hits = total = 0
    for index in range(EVAL_BATCHES):
        batch = TaskSource(task).eval_batch(index, EVAL_BATCH_SIZE)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        target = batch.labels[:, 1:]
        scored = target != IGNORE_INDEX
        hits += int(((logits[:, :-1].argmax(-1) == target) & scored).sum())
        total += int(scored.sum())
    return hits / total


def test_capacity_smoke_run_records_what_the_models_score(tmp_path, monkeypatch):
    trained, warmed = {}, {}

    def recording_train(model, source, config, output_dir, **kwargs):
        history = real_train(model, source, config, output_dir, **kwargs)
        trained[output_dir.name] = copy.deepcopy(model).eval()  # "KIND-PAIRS-seedSEED"
        return history

    def recording_warm_up(pairs, seed, args):
        backbone, record = real_warm_up(pairs, seed, args)
        warmed[pairs] = copy.deepcopy(backbone).eval()
        return backbone, record

    real_train, real_warm_up = capacity.train, capacity.warm_up
    monkeypatch.setattr(capacity, "train", recording_train)
    monkeypatch.setattr(capacity, "warm_up", recording_warm_up)
    argv = ["--pairs", "2", "4", "--steps", "3", "--warmup-steps", "10", "--kinds", "armt", "rmt", "context"]
    capacity.main([*argv, "--output", str(tmp_path)])
    record = json.loads((tmp_path / "capacity.json").read_text())
    rows = record["rows"]
    assert set(record["warmups"]) == {"2:0", "4:0"}  # "pairs:seed"
    assert {(r["kind"], r["pairs"]) for r in rows} == {(k, p) for k in ("armt", "rmt", "context") for p in (2, 4)}
    for row in rows:
        model = trained[f"{row['kind']}-{row['pairs']}-seed0"]
        assert row["accuracy"] == pytest.approx(answer_accuracy(model, capacity.retrieval_task(row["pairs"]))), row
    for pairs, backbone in warmed.items():
        reached = record["warmups"][f"{pairs}:0"]["in_context_accuracy"]
        assert reached == pytest.approx(answer_accuracy(backbone, capacity.retrieval_task(pairs))), pairs
    assert "output" not in record["args"]  # no machine-specific path in the results file
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
