"""Tests of benchmarks/reproduce.py and its report (benchmarks/reproduce_report.py): the 2-cell smoke grid writes
results.json, the table and the plots, with the score a greedy decode of the trained model reproduces; the published
numbers are the paper's; processes sharing an output folder keep each other's cells; cell parsing and the kinds'
configs; extrapolation and warm-up cells; --resume (skipping recorded cells, continuing an interrupted one exactly) and
--init-backbone (starting cells from a saved model's backbone)."""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from benchmarks import reproduce, reproduce_report
from rmt import RMTConfig, RMTForCausalLM
from rmt.build import random_backbone
from rmt.data.tasks import IGNORE_INDEX
from rmt.errors import InputError
from rmt.train.loop import TaskSource

# Copied by hand from the paper (Bulatov, Kuratov, Burtsev, "Recurrent Memory Transformer", NeurIPS 2022,
# arXiv 2207.06881): (task, segments, kind) -> per-token accuracy (quadratic: exact match).
PAPER = {
    ("copy", 3, "no_memory"): 0.12,
    ("copy", 3, "trxl"): 1.00,
    ("copy", 3, "rmt"): 1.00,
    ("copy", 9, "trxl"): 0.28,
    ("reverse", 4, "trxl"): 0.86,
    ("reverse", 6, "rmt"): 0.90,
    ("associative_retrieval", 3, "trxl"): 0.85,
    ("associative_retrieval", 5, "rmt"): 0.97,
    ("quadratic", 6, "trxl"): 0.93,
}


@torch.no_grad()
def greedy_accuracy(model, task, samples: int) -> tuple[float, dict[str, float]]:
    """Per-token answer accuracy of greedy decoding by full forward passes (argmax of the last position, appended,
    repeated), on the held-out samples the benchmark scores: independent of `generate` and `generated_scores`. Also
    the accuracy of the answer tokens in each segment, counted position by position."""
    model.eval()
    batch = TaskSource(task).eval_batch(0, samples)
    ids = batch.input_ids[:, : task.answer_start]
    for _ in range(task.answer_length):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    target = batch.labels[:, task.answer_start : task.answer_start + task.answer_length]
    scored = target != IGNORE_INDEX
    right = (ids[:, task.answer_start :] == target) & scored
    counts: dict[str, list[int]] = {}
    for offset in range(task.answer_length):
        segment = str((task.answer_start + offset) // model.config.segment_size + 1)
        hits, total = counts.setdefault(segment, [0, 0])
        counts[segment] = [hits + int(right[:, offset].sum()), total + int(scored[:, offset].sum())]
    by_segment = {segment: hits / total for segment, (hits, total) in counts.items() if total}
    return float(right.sum() / scored.sum()), by_segment


def test_smoke_run_scores_what_the_trained_model_generates(tmp_path, monkeypatch):
    trained = {}

    def recording_train(model, source, config, output_dir, **kwargs):
        trained[kwargs["description"]] = model
        return real_train(model, source, config, output_dir, **kwargs)

    real_train = reproduce.train
    monkeypatch.setattr(reproduce, "train", recording_train)
    args = ["--smoke", "--steps", "2", "--output", str(tmp_path), "--no-progress", "--threads", "1"]
    assert reproduce.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["cells"]) == set(trained) == {"copy:3:rmt", "copy:3:no_memory"}
    task = reproduce.TASKS["copy"].make(3)
    for key, record in results["cells"].items():
        assert record["score_source"] == "generated"
        accuracy, by_segment = greedy_accuracy(trained[key], task, reproduce.SMOKE_EVAL_SAMPLES)
        assert record["score"] == pytest.approx(accuracy)
        assert record["generated"]["accuracy_by_segment"] == pytest.approx(by_segment)
        assert list(by_segment) == ["2", "3"]  # copy-24 in 3 segments of 25: the answer starts in segment 2
    assert results["cells"]["copy:3:rmt"]["published"] == 1.00
    assert results["cells"]["copy:3:no_memory"]["published"] == 0.12
    table = (tmp_path / "results.md").read_text()
    assert "| 3 (25) |" in table and "(0.12)" in table and "Runtimes" in table
    by_segment = results["cells"]["copy:3:rmt"]["generated"]["accuracy_by_segment"]
    assert f"| copy:3:rmt | 2: {by_segment['2']:.2f}, 3: {by_segment['3']:.2f} |" in table
    assert (tmp_path / "copy.png").stat().st_size > 0
    (tmp_path / "results.md").unlink()
    assert reproduce.main(["--report", "--output", str(tmp_path)]) == 0  # rewrites the report, runs nothing
    assert (tmp_path / "results.md").read_text() == table
    with pytest.raises(SystemExit, match="results.json is missing"):
        reproduce.main(["--report", "--output", str(tmp_path / "empty")])


def test_published_numbers_are_the_papers():
    for (task, segments, kind), value in PAPER.items():
        assert reproduce.TASKS[task].published[(segments, kind)] == value, (task, segments, kind)
    for name, setup in reproduce.TASKS.items():  # every published number sits in a cell of the grid's table
        assert set(setup.published) <= set(setup.cells), name
    assert "2207.06881" in reproduce.PAPER["citation"]


def _record(key: str) -> dict:
    return {
        **{"task": "copy", "segments": 3, "kind": "rmt", "score": 1.0, "metric": "accuracy", "published": 1.0},
        **{"segment_size": 25, "train_seconds": 1.0, "train": {"steps": 2, "learning_rate": 3e-3, "batch_size": 32}},
        "cell": key,
    }


def _record_cells(output_dir: Path, name: str, count: int, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    for index in range(count):
        key = f"{name}-{index}"
        reproduce.record_cell(output_dir, key, _record(key))


def test_processes_sharing_an_output_folder_keep_each_others_cells(tmp_path):
    """Two processes add cells to one folder at the same time: each adds to what is on disk under the lock, so
    results.json ends with every cell of both, and never half-written."""
    context = multiprocessing.get_context("fork")  # a forked child starts at once (no torch import)
    start, count = context.Barrier(2), 20
    processes = [context.Process(target=_record_cells, args=(tmp_path, name, count, start)) for name in ("a", "b")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert set(cells) == {f"{name}-{index}" for name in ("a", "b") for index in range(count)}
    assert not list(tmp_path.glob(".*.tmp"))


def test_cells_and_kinds():
    assert reproduce.parse_cell("copy:6:rmt") == reproduce.Cell("copy", 6, "rmt")
    for bad in ("copy:6", "copy:x:rmt", "copy:6:lstm", "sort:6:rmt"):
        with pytest.raises(ValueError):
            reproduce.parse_cell(bad)
    keys = [c.key for c in reproduce.grid()]
    assert len(keys) == len(set(keys)) and "detect_memorize:8:rmt" in keys
    assert tuple(reproduce_report.KIND_LABELS) == reproduce.KINDS  # the report labels every kind
    configs = {kind: reproduce.rmt_config(kind, segment_size=12, memory_tokens=12) for kind in reproduce.KINDS}
    assert (configs["rmt"].num_memory_tokens, configs["rmt"].xl_cache_tokens) == (12, 0)
    assert (configs["no_memory"].num_memory_tokens, configs["no_memory"].xl_cache_tokens) == (0, 0)
    assert (configs["trxl"].num_memory_tokens, configs["trxl"].xl_cache_tokens) == (0, 12)
    assert (configs["memtrxl"].num_memory_tokens, configs["memtrxl"].xl_cache_tokens) == (12, 12)
    assert configs["memory_at_start"].read_memory_only
    assert not any(config.xl_cache_recompute for config in configs.values())
    original = {kind: reproduce.rmt_config(kind, 12, 12, xl_recompute=True).xl_cache_recompute for kind in configs}
    assert original == {kind: kind in ("trxl", "memtrxl") for kind in reproduce.KINDS}  # only where there is a cache


def test_extrapolation_cell_reports_every_seed_and_selects_on_the_trained_length(tmp_path):
    cell = reproduce.Cell("detect_memorize", 2, "rmt")
    record = reproduce.run_cell(cell, tmp_path, progress=False, steps=2, seeds=2, eval_samples=32)
    assert set(record["seeds"]) == {"0", "1"} and set(record["seeds"]["0"]) == {"2", "4", "8", "16"}
    best = max(record["seeds"], key=lambda s: record["seeds"][s]["2"])
    assert record["selected_seed"] == int(best) and record["extrapolation"] == record["seeds"][best]
    table = reproduce_report.format_table({"cells": {cell.key: record}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert "| seed 0" in table and "| seed 1" in table and "selected" in table


@torch.no_grad()
def in_window_accuracy(backbone, task, samples: int) -> float:
    """Answer accuracy of the bare Hugging Face backbone on whole samples (no memory model around it)."""
    batch = TaskSource(task).eval_batch(0, samples)
    predicted = backbone(batch.input_ids).logits[:, :-1].argmax(-1)
    target = batch.labels[:, 1:]
    scored = target != IGNORE_INDEX
    return float(((predicted == target) & scored).sum() / scored.sum())


def test_associative_cell_starts_from_a_backbone_warmed_up_in_context(tmp_path, monkeypatch):
    warmed = []

    def recording_warmup(backbone, task, config, output_dir, **kwargs):
        history = real_warmup(backbone, task, config, output_dir, **kwargs)
        warmed.append(copy.deepcopy(backbone).eval())  # the cell trains this backbone further afterwards
        return history

    real_warmup = reproduce.train_in_context
    monkeypatch.setattr(reproduce, "train_in_context", recording_warmup)
    setup = reproduce.TASKS["associative_retrieval"]
    cell = reproduce.parse_cell("associative_retrieval:3:rmt")
    overrides = {"steps": 2, "batch_size": 8, "eval_samples": 64, "pretraining_steps": 30}  # --pretraining-steps 30
    record = reproduce.run_cell(cell, tmp_path, progress=False, **overrides)
    warmup = record["pretraining"]
    assert warmup["steps"] == 30 and warmup["sequence_length"] == 25  # 4 pairs, QUERY, 8 queried pairs
    # --resume tells warm-ups of other lengths apart (a cell started from a saved model has none)
    assert reproduce.settings_differing(record, cell, overrides, None) == []
    assert reproduce.settings_differing(record, cell, {**overrides, "pretraining_steps": 31}, None) == [
        "pretraining_steps"
    ]
    assert reproduce.settings_differing(record, cell, {**overrides, "pretraining_steps": None}, None) == [
        "pretraining_steps"
    ]  # the task's own 2000
    assert record["model"]["init_std"] == 0.1
    # The recorded in-context accuracy is the warmed-up backbone's, on the cell's own one-query task.
    assert warmup["in_context_accuracy"] == pytest.approx(in_window_accuracy(warmed[0], setup.make(3), 64))
    assert (tmp_path / "cells" / "associative_retrieval-3-rmt" / "pretraining" / "metrics.jsonl").exists()
    table = reproduce_report.format_table({"cells": {cell.key: record}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert "warmed up in context" in table and "| associative_retrieval:3:rmt |" in table
    assert "(30 steps of batch 32," in table  # the warm-up the cell ran, not the task's default
    other_seed = copy.deepcopy(record) | {"seed": 1}
    other_seed["pretraining"] = record["pretraining"] | {"in_context_accuracy": 0.0}  # its warm-up learnt nothing
    seeds = {"cells": {cell.key: record, f"{cell.key}@1": other_seed}}
    table = reproduce_report.format_table(seeds, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert f"one window after it: 0.00-{warmup['in_context_accuracy']:.2f})" in table  # every seed's warm-up


def test_pretraining_steps_from_the_command_line_and_a_resume_after_another_warm_up(tmp_path, monkeypatch):
    """--pretraining-steps reaches the cell's warm-up and its record; a cell interrupted after a warm-up of one
    length is not resumed after a warm-up of another (the record would name the new one, the model the old)."""
    monkeypatch.setattr(reproduce, "write_full_report", lambda output: None)
    cell = "associative_retrieval:3:rmt"
    argv = ["--cells", cell, "--steps", "2", "--batch-size", "8", "--output", str(tmp_path), "--no-progress"]
    assert reproduce.main([*argv, "--pretraining-steps", "20"]) == 0
    record = json.loads((tmp_path / "results.json").read_text())["cells"][cell]
    assert record["pretraining"]["steps"] == 20
    with pytest.raises(SystemExit, match="--pretraining-steps must be >= 1, got 0"):
        reproduce.main([*argv, "--pretraining-steps", "0"])
    saved = str(tmp_path / "cells" / "associative_retrieval-3-rmt" / "checkpoint" / "model")
    with pytest.raises(SystemExit, match="--pretraining-steps sets the warm-up, which a cell started from a saved"):
        reproduce.main([*argv, "--pretraining-steps", "20", "--init-backbone", saved])
    # the cell's checkpoint, as an interrupted run leaves it, resumed with another warm-up
    with pytest.raises(InputError, match="trained after a warm-up of 20 steps, not 30: give --pretraining-steps 20"):
        reproduce.run_cell(
            reproduce.parse_cell(cell), tmp_path, progress=False, resume=True, steps=2, pretraining_steps=30
        )


def test_table_shows_the_mean_and_each_seed_of_a_cell():
    base = {"task": "copy", "segments": 6, "kind": "rmt", "metric": "accuracy", "published": 1.0}
    base |= {"segment_size": 13, "train_seconds": 1.0, "train": {"steps": 1, "learning_rate": 1e-3}}
    cells = {"copy:6:rmt": {**base, "seed": 0, "score": 1.0}, "copy:6:rmt@1": {**base, "seed": 1, "score": 0.5}}
    table = reproduce_report.format_table({"cells": cells}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert "**0.75** [seeds 1.00, 0.50] (1.00)" in table
    assert "## copy-24" in table and "## reverse-24" not in table  # only the tasks that have cells


def test_table_of_a_folder_without_cells_shows_every_task():
    table = reproduce_report.format_table({"cells": {}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert all(f"## {setup.title} " in table for setup in reproduce.TASKS.values())


def test_a_second_seed_keeps_its_own_training_folder(tmp_path):
    for seed in (0, 1):
        cell = reproduce.Cell("copy", 3, "rmt")
        reproduce.run_cell(cell, tmp_path, seed=seed, progress=False, steps=2, eval_samples=8)
    assert (tmp_path / "cells" / "copy-3-rmt" / "metrics.jsonl").exists()
    assert (tmp_path / "cells" / "copy-3-rmt" / "seed1" / "metrics.jsonl").exists()


def record_training_starts(monkeypatch, part):
    """Make reproduce.train record the weights of `part(model)` each time a training run starts; returns the list
    they go into."""
    started_from = []
    real_train = reproduce.train

    def recording_train(model, *args, **kwargs):
        started_from.append({k: v.clone() for k, v in part(model).state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(reproduce, "train", recording_train)
    return started_from


def test_a_cell_can_start_from_another_cells_trained_backbone(tmp_path, monkeypatch):
    source_cell = reproduce.Cell("copy", 3, "no_memory")
    trained = reproduce.run_cell(source_cell, tmp_path / "first", progress=False, steps=3, eval_samples=8)
    saved = tmp_path / "first" / "cells" / "copy-3-no_memory" / "checkpoint" / "model"
    expected = reproduce.RecurrentMemoryModel.from_pretrained(saved).backbone.state_dict()
    started_from = record_training_starts(monkeypatch, lambda model: model.backbone)
    record = reproduce.run_cell(
        reproduce.Cell("copy", 3, "rmt"),
        tmp_path / "second",
        progress=False,
        init_backbone=saved,
        steps=2,
        eval_samples=8,
    )
    assert record["init_backbone"] == {"folder": str(saved), "steps": 3}
    table = reproduce_report.format_table({"cells": {"copy:3:rmt": record}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert f"3 segments rmt: backbone started from {saved} (a checkpoint at step 3 of its own run" in table
    assert started_from[0].keys() == expected.keys()
    assert all(torch.equal(started_from[0][k], expected[k]) for k in expected)
    # With 0 steps a cell scores its starting model: the same kind started from the saved model is that model.
    untrained = reproduce.run_cell(
        source_cell, tmp_path / "third", progress=False, init_backbone=saved, steps=0, eval_samples=8
    )
    assert untrained["teacher_forced"] == trained["teacher_forced"] and untrained["train"]["steps"] == 0


def test_a_backbone_of_another_size_is_refused(tmp_path):
    reproduce.run_cell(reproduce.Cell("copy", 3, "rmt"), tmp_path, progress=False, steps=1, eval_samples=8)
    saved = tmp_path / "cells" / "copy-3-rmt" / "checkpoint" / "model"
    with pytest.raises(ValueError, match="--init-backbone .* does not match this cell's"):
        reproduce.run_cell(
            reproduce.Cell("copy", 3, "rmt"), tmp_path / "other", init_backbone=saved, hidden=32, steps=1
        )


def test_a_cell_can_continue_from_a_whole_saved_model_of_its_kind(tmp_path, monkeypatch):
    cell = reproduce.Cell("copy", 3, "rmt")
    trained = reproduce.run_cell(cell, tmp_path / "first", progress=False, steps=3, eval_samples=8)
    saved = tmp_path / "first" / "cells" / "copy-3-rmt" / "checkpoint" / "model"
    expected = reproduce.RecurrentMemoryModel.from_pretrained(saved).state_dict()
    started_from = record_training_starts(monkeypatch, lambda model: model)
    record = reproduce.run_cell(cell, tmp_path / "second", progress=False, init_model=saved, steps=2, eval_samples=8)
    memory_names = [k for k in expected if not k.startswith("backbone.")]
    assert memory_names, "an rmt cell has memory parameters"
    assert started_from[0].keys() == expected.keys()
    assert all(torch.equal(started_from[0][k], expected[k]) for k in expected)
    assert record["init_model"] == {"folder": str(saved), "steps": 3} and "init_backbone" not in record
    table = reproduce_report.format_table({"cells": {"copy:3:rmt": record}}, reproduce.TASKS, reproduce.EXTRAPOLATION)
    assert f"3 segments rmt: whole model, memory included, started from {saved} (a checkpoint at step 3" in table
    untrained = reproduce.run_cell(cell, tmp_path / "third", progress=False, init_model=saved, steps=0, eval_samples=8)
    assert untrained["teacher_forced"] == trained["teacher_forced"]


def test_a_whole_model_of_another_kind_is_refused(tmp_path):
    reproduce.run_cell(reproduce.Cell("copy", 3, "no_memory"), tmp_path, progress=False, steps=1, eval_samples=8)
    saved = tmp_path / "cells" / "copy-3-no_memory" / "checkpoint" / "model"
    with pytest.raises(ValueError, match="--init-model .* another kind of memory model .*num_memory_tokens"):
        reproduce.run_cell(reproduce.Cell("copy", 3, "rmt"), tmp_path / "other", init_model=saved, steps=1)
    with pytest.raises(ValueError, match="give one of them"):
        reproduce.run_cell(
            reproduce.Cell("copy", 3, "no_memory"), tmp_path / "both", init_model=saved, init_backbone=saved, steps=1
        )


def test_an_interrupted_cell_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(tmp_path, monkeypatch):
    cell = reproduce.Cell("copy", 3, "rmt")
    options = {"progress": False, "steps": 6, "batch_size": 4, "eval_samples": 8}
    whole = reproduce.run_cell(cell, tmp_path / "whole", **options)

    real_batch = reproduce.TaskSource.train_batch

    def crash_at_step_4(self, step, *args, **kwargs):
        if step == 4:
            raise KeyboardInterrupt("stopped")
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(reproduce.TaskSource, "train_batch", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_cell(cell, tmp_path / "stopped", **options)
    monkeypatch.setattr(reproduce.TaskSource, "train_batch", real_batch)
    resumed = reproduce.run_cell(cell, tmp_path / "stopped", resume=True, **options)
    assert resumed["resumed_from_step"] == 4  # checkpoints every tenth of the steps: here every step
    assert resumed["teacher_forced"] == whole["teacher_forced"]
    assert resumed["final_train_loss"] == whole["final_train_loss"]
    with pytest.raises(ValueError, match="--resume: .* other settings \\(steps differ\\)"):
        reproduce.run_cell(cell, tmp_path / "stopped", resume=True, **(options | {"steps": 7}))


def test_resume_skips_recorded_cells_and_refuses_other_settings(tmp_path, monkeypatch, capsys):
    cell = reproduce.Cell("copy", 3, "rmt")
    reproduce.record_cell(
        tmp_path, cell.key, reproduce.run_cell(cell, tmp_path, progress=False, steps=2, eval_samples=8)
    )
    monkeypatch.setattr(reproduce, "run_cell", lambda *args, **kwargs: pytest.fail("a recorded cell was run again"))
    monkeypatch.setattr(reproduce, "write_full_report", lambda output: None)
    argv = ["--cells", cell.key, "--output", str(tmp_path), "--resume", "--no-progress"]
    assert reproduce.main(argv + ["--steps", "2"]) == 0
    assert "copy:3:rmt: in " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="copy:3:rmt is in .* with other settings \\(hidden, steps differ\\)"):
        reproduce.main(argv + ["--steps", "3", "--hidden", "32"])


def test_xl_recompute_is_a_setting_of_the_transformer_xl_cells(tmp_path, monkeypatch):
    """--xl-recompute reaches the Tr-XL cell's model and its record; --resume tells the two caches apart and reads
    records made before the option existed as the default cache."""
    cell = reproduce.Cell("copy", 3, "trxl")
    record = reproduce.run_cell(cell, tmp_path, progress=False, xl_recompute=True, steps=2, eval_samples=8)
    assert record["rmt_config"]["xl_cache_recompute"]
    overrides = {"steps": 2, "eval_samples": 8}
    assert reproduce.settings_differing(record, cell, overrides, None, xl_recompute=True) == []
    assert reproduce.settings_differing(record, cell, overrides, None) == ["xl_cache_recompute"]
    report = {"cells": {cell.key: record}}
    reproduce_report.write_report(report, tmp_path, reproduce.TASKS, reproduce.EXTRAPOLATION, plots=False)
    assert "Tr-XL cache = one segment (keys/values recomputed" in (tmp_path / "results.md").read_text()
    del record["rmt_config"]["xl_cache_recompute"]
    assert reproduce.settings_differing(record, cell, overrides, None) == []
    rmt_cell = reproduce.Cell("copy", 3, "rmt")  # no cache: the flag does not apply
    rmt_record = reproduce.run_cell(rmt_cell, tmp_path, progress=False, steps=1, eval_samples=8)
    assert (
        reproduce.settings_differing(rmt_record, rmt_cell, {"steps": 1, "eval_samples": 8}, None, xl_recompute=True)
        == []
    )


def test_xl_cache_segments_is_a_setting_of_the_transformer_xl_cells(tmp_path):
    """--xl-cache-segments sets the Tr-XL cache's length in segments; --resume tells cache lengths apart."""
    cell = reproduce.Cell("copy", 3, "trxl")
    record = reproduce.run_cell(cell, tmp_path, progress=False, xl_cache_segments=2, steps=2, eval_samples=8)
    segment = record["rmt_config"]["segment_size"]
    assert record["rmt_config"]["xl_cache_tokens"] == 2 * segment
    overrides = {"steps": 2, "eval_samples": 8}
    assert reproduce.settings_differing(record, cell, overrides, None, xl_cache_segments=2) == []
    assert reproduce.settings_differing(record, cell, overrides, None) == ["xl_cache_tokens"]
    report = {"cells": {cell.key: record}}
    reproduce_report.write_report(report, tmp_path, reproduce.TASKS, reproduce.EXTRAPOLATION, plots=False)
    assert "Tr-XL cache = 2 segments" in (tmp_path / "results.md").read_text()
    assert reproduce.rmt_config("rmt", segment, 4, xl_cache_segments=3).xl_cache_tokens == 0
    with pytest.raises(InputError, match="--xl-cache-segments must be >= 1"):
        reproduce.run_cell(cell, tmp_path, progress=False, xl_cache_segments=0, steps=1)


def test_seed_mean_averages_the_score_and_the_per_token_accuracy():
    from benchmarks.reproduce_report import _seed_mean

    records = [
        {"seed": 1, "score": 0.75, "generated": {"accuracy": 0.96, "exact_match": 0.75}},
        {"seed": 0, "score": 0.55, "generated": {"accuracy": 0.90, "exact_match": 0.55}},
    ]
    mean = _seed_mean(records)
    assert mean["seed"] == 0 and abs(mean["score"] - 0.65) < 1e-12
    assert abs(mean["generated"]["accuracy"] - 0.93) < 1e-12


def test_generated_scores_read_whole_answers_from_a_backbone_with_an_end_token():
    """A backbone whose EOS token is each row's first answer token does not cut the scored answers short."""
    task = reproduce.TASKS["copy"].make(3)
    backbone = random_backbone("llama", task.vocab_size, 1, 32, 4, 64, seed=0)
    model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=2, segment_size=task.segment_size_for(3))).eval()
    expected, _ = greedy_accuracy(model, task, 4)
    prompts = TaskSource(task).eval_batch(0, 4).input_ids[:, : task.answer_start]
    first_tokens = model.generate(prompts, max_new_tokens=1)[:, -1]
    backbone.generation_config.eos_token_id = sorted(set(first_tokens.tolist()))
    backbone.generation_config.pad_token_id = 0
    assert reproduce.generated_scores(model, task, 4, 4)["accuracy"] == pytest.approx(expected)


def test_the_plot_joins_the_seeds_means_and_shows_each_seed_apart(tmp_path, monkeypatch):
    """Two seeds per cell: the line goes through their means (the table's numbers), each seed a separate dot."""
    figures = []
    monkeypatch.setattr(reproduce_report, "save_figure", lambda figure, path: figures.append((path.name, figure)))
    scores = {(3, 0): 0.96, (3, 1): 1.00, (6, 0): 0.90, (6, 1): 0.96}
    cells = {
        f"copy:{segments}:trxl:{seed}": {"task": "copy", "segments": segments, "kind": "trxl", "seed": seed,
                                         "score": score}
        for (segments, seed), score in scores.items()
    }  # fmt: skip
    reproduce_report.plot({"cells": cells}, tmp_path, reproduce.TASKS, reproduce.EXTRAPOLATION)
    ((name, figure),) = figures
    line, seeds = figure.axes[0].lines[:2]
    assert name == "copy.png" and list(line.get_xdata()) == [3, 6]
    assert list(line.get_ydata()) == pytest.approx([0.98, 0.93])
    assert seeds.get_linestyle() == "None" and sorted(seeds.get_ydata()) == sorted(scores.values())
