"""Trainer: schedules as pure functions (value tests), exact resume after an interruption, metrics and atomic
checkpoints, a short run that learns copy across 3 segments (memory) while the no-memory model cannot, and the
in-context warm-up of a bare backbone (slow: the warm-up that teaches key-value binding)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.utils import logging as hf_logging

from rmt.build import memory_model, random_backbone
from rmt.config import RMTConfig
from rmt.data.batch import Batch
from rmt.data.sources import Source
from rmt.data.tasks import AssociativeRetrievalTask, CopyTask
from rmt.errors import InputError
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train.loop import (
    TaskSource,
    TrainConfig,
    TrainerState,
    _after_eval,
    evaluate,
    one_window,
    train,
    train_in_context,
)
from rmt.train.optim import build_optimizer
from rmt.train.schedules import curriculum_segments, linear_curriculum


def test_learning_rate_schedule_values():
    """Warmup from 0 to the peak, cosine down to min_lr_factor x the peak, per parameter group."""
    model, _ = small_setup()
    config = TrainConfig(steps=100, warmup_steps=10, learning_rate=1e-3, memory_learning_rate=1e-2, min_lr_factor=0.1)
    optimizer, scheduler = build_optimizer(model, config)
    rates = []
    for _ in range(101):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    memory, backbone = zip(*rates, strict=True)
    assert memory[0] == 0.0 and memory[5] == pytest.approx(0.5e-2) and memory[10] == pytest.approx(1e-2)
    assert memory[55] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))  # halfway through the decay
    assert memory[100] == pytest.approx(1e-3) and backbone[100] == pytest.approx(1e-4)
    assert backbone[10] == pytest.approx(1e-3)


def test_curriculum_values():
    stages = [(0, 1), (500, 2), (1000, 4)]
    assert [curriculum_segments(s, stages) for s in (0, 499, 500, 999, 1000, 10**6)] == [1, 1, 2, 2, 4, 4]
    assert linear_curriculum(1, 4, 1000, hold_fraction=0.2) == [(0, 1), (200, 2), (400, 3), (600, 4)]
    assert linear_curriculum(3, 3, 100) == [(0, 3)]
    with pytest.raises(ValueError, match="must start at step 0"):
        curriculum_segments(0, [(5, 1)])
    with pytest.raises(ValueError, match="strictly increasing"):
        curriculum_segments(0, [(0, 1), (10, 2), (10, 3)])


def test_curriculum_advance_and_plateau_read_the_chosen_metric():
    """A stage ends when the held-out score named by curriculum_metric reaches curriculum_accuracy, and the plateau
    stop counts evaluations without a gain in that same score: token accuracy 0.95 with exact match 0.7 advances
    under 'accuracy' and not under 'exact_match'."""
    one_process = SimpleNamespace(num_processes=1)
    scores = {"loss": 0.3, "accuracy": 0.95, "exact_match": 0.7}
    stages = [(0, 1), (1000, 2)]
    by_tokens = TrainConfig(curriculum=stages, curriculum_accuracy=0.9)
    by_answers = TrainConfig(curriculum=stages, curriculum_accuracy=0.9, curriculum_metric="exact_match")
    assert _after_eval(by_tokens, TrainerState(), 100, scores, one_process).stage == 1
    assert _after_eval(by_answers, TrainerState(), 100, scores, one_process).stage == 0
    assert _after_eval(by_answers, TrainerState(), 100, {**scores, "exact_match": 0.9}, one_process).stage == 1

    plateau = TrainConfig(plateau_evals=2, curriculum_metric="exact_match")
    state = TrainerState()
    for exact in (0.5, 0.5, 0.5):
        state = _after_eval(plateau, state, 100, {**scores, "exact_match": exact}, one_process)
    assert state.plateau_best == 0.5 and state.stopped_early
    with pytest.raises(InputError, match="curriculum_metric"):
        TrainConfig(curriculum_metric="f1")
    with pytest.raises(InputError, match="this curriculum has one stage"):  # nothing to move on to
        TrainConfig(curriculum=[(0, 2)], curriculum_accuracy=0.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"recompute": "no"}, "recompute must be True or False, got 'no'"),  # a non-empty string was true
        ({"progress": "false"}, "progress must be True or False"),
        ({"checkpoint_every": 1.5}, "checkpoint_every must be a whole number"),  # checkpointed every third step
        ({"warmup_steps": "10"}, "warmup_steps must be a whole number"),
        ({"learning_rate": "1e-3"}, "learning_rate must be a number"),
        ({"plateau_evals": 1.5}, "plateau_evals must be a whole number"),
        ({"curriculum": [(0, 1.5)]}, r"a pair of whole numbers \(first step, segments\), got \(0, 1.5\)"),
        ({"curriculum": [(0, 1, 2)]}, "a pair of whole numbers"),
        ({"curriculum": "0:1,5:2"}, "curriculum needs a list of"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(changes, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**changes)
    with pytest.raises(InputError, match="fsdp and mixed_precision='fp16' cannot be combined"):
        TrainConfig(fsdp=True, mixed_precision="fp16")
    assert TrainConfig(fsdp=True, mixed_precision="bf16").fsdp


def test_plateau_min_steps_counts_from_the_start_of_the_last_stage():
    """A held-out 1.0 at the first evaluations of the last curriculum stage stops nothing until plateau_min_steps
    steps have been trained there, whether the stage began by its step or on the held-out score; a resume of a run
    that stopped early trains on when the new setting asks for more steps at the last stage."""
    from rmt.train.loop import _plateaued, _stage_segments

    one_process = SimpleNamespace(num_processes=1)
    perfect = {"loss": 0.0, "accuracy": 1.0}
    by_step = TrainConfig(curriculum=[(0, 1), (100, 2)], plateau_evals=3, plateau_min_steps=50)
    state = TrainerState()
    assert [_stage_segments(by_step, state, step) for step in (0, 99, 100, 101)] == [1, 1, 2, 2]
    assert state.final_stage_from == 100
    state = _after_eval(by_step, state, 125, perfect, one_process)
    assert not state.stopped_early and state.evals_without_gain == 0
    assert _after_eval(by_step, state, 150, perfect, one_process).stopped_early

    on_score = TrainConfig(
        curriculum=[(0, 1), (1000, 2)], curriculum_accuracy=0.9, plateau_evals=1, plateau_min_steps=50
    )
    state = _after_eval(on_score, TrainerState(), 200, perfect, one_process)
    assert (state.stage, state.final_stage_from, state.stopped_early) == (1, 200, False)
    assert not _after_eval(on_score, state, 225, perfect, one_process).stopped_early
    state = _after_eval(on_score, state, 250, perfect, one_process)
    assert state.stopped_early and state.stop_reason == "ceiling"
    assert _plateaued(on_score, state, 250)
    assert not _plateaued(
        TrainConfig(curriculum=[(0, 1), (1000, 2)], plateau_evals=1, plateau_min_steps=100), state, 250
    )

    with pytest.raises(InputError, match="plateau_min_steps needs plateau_evals"):
        TrainConfig(plateau_min_steps=10)
    with pytest.raises(InputError, match="plateau_min_steps must be >= 0"):
        TrainConfig(plateau_evals=2, plateau_min_steps=-1)


def small_setup(memory_tokens: int = 4, length: int = 6, segments: int = 3, seed: int = 0):
    task = CopyTask(length=length)
    segment_size = task.segment_size_for(segments)
    backbone = random_backbone("llama", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=seed)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=memory_tokens, segment_size=segment_size))
    return model, TaskSource(task, seed=seed)


def dropout_setup() -> tuple[RecurrentMemoryModel, TaskSource]:
    """An RMT GPT-2 with dropout 0.2 on copy-6 in 3 segments: training draws random numbers at every step."""
    task = CopyTask(length=6)
    backbone = random_backbone("gpt2", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=0)
    for module in backbone.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.2
    model = memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=task.segment_size_for(3)))
    return model, TaskSource(task, seed=0)


def test_same_seed_repeats_a_run_with_dropout(tmp_path):
    """Dropout masks come from the global generators, which the trainer seeds: two runs from the same weights with
    the same seed log the same losses, and another seed other losses (so the dropout is really drawn)."""

    def run(seed: int, name: str) -> list[float]:
        config = TrainConfig(steps=3, batch_size=4, log_every=1, eval_every=3, eval_batches=1, progress=False)
        history = train(*dropout_setup(), replace(config, seed=seed), tmp_path / name)
        return [r["loss"] for r in history if "loss" in r]

    first = run(0, "first")
    assert run(0, "again") == first
    assert run(1, "other") != first


def test_a_run_without_progress_bars_saves_quietly(tmp_path, capfd):
    """progress=False hides every bar of the run, transformers' own bar of each checkpoint write included, and
    leaves transformers' global progress setting as it was."""
    task = CopyTask(length=6)
    backbone = random_backbone("gpt2", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=0)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=task.segment_size_for(3)))
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_batches=1, checkpoint_every=1, progress=False)
    was_enabled = hf_logging.is_progress_bar_enabled()  # other tests' CLI runs with --no-progress turn it off
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        train(model, TaskSource(task, seed=0), config, tmp_path)
        assert (tmp_path / "checkpoint" / "model").is_dir()
        assert "it/s" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
    finally:
        if not was_enabled:
            hf_logging.disable_progress_bar()


class Interrupted(Exception):
    pass


class InterruptingSource(TaskSource):
    """Raises at a given step, as a crash or Ctrl-C would."""

    def __init__(self, source: TaskSource, at_step: int) -> None:
        super().__init__(source.task(), source.seed)
        self.at_step = at_step

    def train_batch(self, step, batch_size, num_segments=None):
        if step == self.at_step:
            raise Interrupted
        return super().train_batch(step, batch_size, num_segments)


def test_resume_continues_exactly(tmp_path):
    config = TrainConfig(
        steps=8,
        batch_size=4,
        warmup_steps=2,
        eval_every=4,
        log_every=1,
        checkpoint_every=3,
        eval_batches=1,
        eval_batch_size=4,
        progress=False,
    )
    model, source = small_setup()
    straight = train(model, source, config, tmp_path / "straight")

    model, source = small_setup()
    with pytest.raises(Interrupted):
        train(model, InterruptingSource(source, at_step=5), config, tmp_path / "resumed")
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3
    model, source = small_setup(seed=0)
    with torch.no_grad():  # the resumed run must take its weights from the checkpoint, not from here
        for p in model.parameters():
            p.zero_()
    resumed = train(model, source, config, tmp_path / "resumed", resume=True)

    losses = [r["loss"] for r in straight if "loss" in r]
    assert [r["loss"] for r in resumed if "loss" in r] == losses
    assert len(losses) == 8


def test_resume_with_dropout_continues_exactly(tmp_path):
    """The checkpoint's random states are restored: with dropout drawn at every step, the resumed run's losses are
    the uninterrupted run's (a resume that reseeded or kept the current generators would draw other masks)."""
    config = TrainConfig(steps=6, batch_size=4, log_every=1, eval_every=6, checkpoint_every=3, eval_batches=1,
                         progress=False)  # fmt: skip
    straight = train(*dropout_setup(), config, tmp_path / "straight")
    model, source = dropout_setup()
    with pytest.raises(Interrupted):
        train(model, InterruptingSource(source, at_step=4), config, tmp_path / "resumed")
    torch.manual_seed(12345)  # other generator states than the checkpoint's
    resumed = train(*dropout_setup(), config, tmp_path / "resumed", resume=True)
    assert [r["loss"] for r in resumed if "loss" in r] == [r["loss"] for r in straight if "loss" in r]
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == resumed
    elapsed = [r["elapsed_s"] for r in resumed if "loss" in r]
    assert elapsed == sorted(elapsed), "training time must carry on across the resume, not restart at 0"
    assert [p.name for p in (tmp_path / "resumed").iterdir() if p.name.startswith(".")] == []


class RecordedShare:
    """Stands in for one of `processes` processes in `evaluate`: its reduce keeps this process's sums and returns the
    totals of every share recorded so far (the test calls the last process last)."""

    shares: list[torch.Tensor] = []

    def __init__(self, index: int, processes: int) -> None:
        self.process_index, self.num_processes = index, processes

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        RecordedShare.shares.append(tensor.clone())
        return torch.stack(RecordedShare.shares).sum(dim=0)


@pytest.mark.parametrize("processes", [2, 3])
def test_evaluation_shared_over_processes_scores_every_batch_once(processes):
    """Each process scores every n-th held-out batch (5 batches): the added shares are the one-process
    scores, so every batch was scored exactly once, and each process scored a share (not all, not none)."""
    model, _ = small_setup()
    task = CopyTask(length=6)

    class FiveBatches(TaskSource):
        def num_eval_batches(self, batch_size: int) -> int:
            return 5

    source = FiveBatches(task)
    alone = evaluate(model, source, batches=9, batch_size=16)
    RecordedShare.shares = []
    shared = [evaluate(model, source, 9, 16, processes=RecordedShare(i, processes)) for i in range(processes)]
    assert shared[-1] == pytest.approx(alone, rel=1e-12)
    samples = [int(share[-1]) for share in RecordedShare.shares]  # each process's answered samples
    assert sum(samples) == 5 * 16 and all(0 < n < 5 * 16 for n in samples), samples


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_resume_with_more_steps_trains_its_first_step_at_the_new_schedules_rate(tmp_path, schedule):
    """The restored optimizer held the old schedule's rate at the checkpoint (a linear schedule's last: 0), and the
    first resumed step took it: step 11 of a 10-step run stretched to 20 trained at 0 (linear) or at the old cosine's
    floor, where a 20-step run trains at 5.6e-3 or 6.3e-3."""
    config = TrainConfig(
        steps=10,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=2,
        lr_schedule=schedule,
        log_every=1,
        eval_every=100,
        checkpoint_every=5,
        progress=False,
    )
    train(*small_setup(), config, tmp_path / "run")
    resumed = train(*small_setup(), replace(config, steps=20), tmp_path / "run", resume=True)
    fresh = train(*small_setup(), replace(config, steps=20), tmp_path / "fresh")
    rates = [{r["step"]: r["lr"] for r in history if "lr" in r} for history in (resumed, fresh)]
    for step in (11, 12, 20):
        assert rates[0][step] == pytest.approx(rates[1][step], rel=1e-12), step


def test_short_run_learns_copy_across_three_segments(tmp_path):
    config = TrainConfig(
        steps=250,
        batch_size=32,
        learning_rate=5e-3,
        warmup_steps=20,
        eval_every=250,
        checkpoint_every=0,
        progress=False,
    )
    model, source = small_setup(memory_tokens=6)
    train(model, source, config, tmp_path / "rmt")
    with_memory = evaluate(model, source, batches=2, batch_size=64)
    model, source = small_setup(memory_tokens=0)
    train(model, source, config, tmp_path / "none")
    without = evaluate(model, source, batches=2, batch_size=64)
    assert with_memory["accuracy"] >= 0.9, with_memory
    assert without["accuracy"] <= 0.45, without  # chance is 0.1; a few tokens are predictable within a segment


def test_in_context_warm_up_trains_the_backbone_in_place(tmp_path):
    task = CopyTask(length=6)
    backbone = random_backbone("llama", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=0)
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    untrained = evaluate(one_window(backbone, task), TaskSource(task), batches=1, batch_size=128)
    config = TrainConfig(steps=150, learning_rate=5e-3, warmup_steps=10, eval_every=150, checkpoint_every=0)
    history = train_in_context(backbone, task, replace(config, progress=False), tmp_path)
    assert any("loss" in record for record in history)
    assert all(not torch.equal(before[name], p) for name, p in backbone.named_parameters())
    # the same backbone object, wrapped afresh, carries what the warm-up taught it
    trained = evaluate(one_window(backbone, task), TaskSource(task), batches=1, batch_size=128)
    assert untrained["accuracy"] < 0.3 and trained["accuracy"] > 0.9, (untrained, trained)


@pytest.mark.slow
def test_multi_query_warm_up_teaches_key_value_binding(tmp_path):
    """The one-query task alone leaves this backbone at ~0.35 (values recalled, not bound to keys); 8 queries per
    sample and a larger initial weight std give binding after a plateau of ~1,000 steps (2,000 steps: ~45 s)."""
    single = AssociativeRetrievalTask(num_pairs=4)
    multi = AssociativeRetrievalTask(num_pairs=4, num_queries=8)
    backbone = random_backbone("llama", single.vocab_size, num_layers=2, hidden_size=64, max_positions=64, init_std=0.1)
    config = TrainConfig(
        steps=2000, eval_every=2000, checkpoint_every=0, weight_decay=0.0, min_lr_factor=1.0, progress=False
    )
    train_in_context(backbone, multi, config, tmp_path)
    accuracy = evaluate(one_window(backbone, single), TaskSource(single), batches=2, batch_size=256)["accuracy"]
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_memory_state_stays_fp32_under_bf16_autocast(kind):
    task = CopyTask(length=6)
    backbone = random_backbone("llama", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64)
    config = RMTConfig(num_memory_tokens=2, segment_size=task.segment_size_for(3), memory_kind=kind)
    model = memory_model(backbone, config)
    batch = task.batch(2, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_backward(**batch.model_inputs())
    leaves = torch.utils._pytree.tree_leaves(out.memory_state)
    assert all(t.dtype in (torch.float32, torch.bool) for t in leaves), [t.dtype for t in leaves]
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


class _AnswersOfManyLengths(Source):
    """Right-padded causal-LM batches whose answers (the labelled tokens) have 1 to 11 tokens; pure in the step."""

    def _batch(self, seed: int, batch_size: int) -> Batch:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 50, (batch_size, 24), generator=generator)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (length, answer) in enumerate([(24, 11), (12, 1), (20, 8), (9, 1)] * (batch_size // 4)):
            mask[row, :length] = 1
            labels[row, length - answer : length] = ids[row, length - answer : length]
        return Batch(ids * mask, mask, labels)

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        return self._batch(step, batch_size)

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        return self._batch(10**6 + index, batch_size)


class _LastAnswerDropped(_AnswersOfManyLengths):
    """The same batches with no target in the last sample."""

    def _batch(self, seed: int, batch_size: int) -> Batch:
        batch = super()._batch(seed, batch_size)
        batch.labels[-1] = -100
        return batch


@pytest.mark.parametrize("source", [_AnswersOfManyLengths, _LastAnswerDropped])
@pytest.mark.parametrize("aggregation", ["tokens", "segments"])
def test_gradient_accumulation_equals_one_batch_when_answers_differ_in_length(aggregation, source):
    """Each micro-batch's loss is a mean over its own terms (answer tokens, or (sample, segment) pairs with answer
    tokens); weighted by their number, 4 x 1, 2 x 2 and 1 x 4 give the gradient of the whole batch. A micro-batch
    without a target weighs nothing (it raised "labels contain no target token")."""
    from accelerate import Accelerator

    from rmt.train.loop import _train_step

    def gradient(batch_size: int, accumulation: int) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        backbone = random_backbone("llama", 50, 2, 32, 4, 64, seed=0)
        model = memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=8, loss_aggregation=aggregation))
        config = TrainConfig(steps=1, batch_size=batch_size, grad_accumulation=accumulation, progress=False)
        loss = _train_step(model, model, source(), config, Accelerator(cpu=True), 0, None)
        return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole_loss, whole = gradient(4, 1)
    for batch_size, accumulation in ((2, 2), (1, 4)):
        loss, split = gradient(batch_size, accumulation)
        assert abs(loss - whole_loss) < 1e-5
        assert float((split - whole).norm() / whole.norm()) < 1e-5, (batch_size, accumulation)


@pytest.mark.parametrize("aggregation", ["tokens", "segments"])
def test_held_out_loss_over_batches_is_the_loss_of_one_batch(aggregation):
    """score_batch's weight is the number of terms its loss is the mean of: batches combined by it give the loss of
    all their samples as one batch."""
    from rmt.train.evaluation import score_batch

    backbone = random_backbone("llama", 50, 2, 32, 4, 64, seed=0)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=8, loss_aggregation=aggregation))
    batch = _AnswersOfManyLengths().eval_batch(0, 4)
    with torch.no_grad():
        whole = score_batch(model.eval(), batch)
        parts = [score_batch(model, batch.rows(slice(first, first + 1))) for first in range(4)]
    combined = sum(part["loss"] * part["weight"] for part in parts) / sum(part["weight"] for part in parts)
    assert combined == pytest.approx(whole["loss"], rel=1e-5)


def test_scores_of_a_batch_with_a_left_padded_row_without_an_answer():
    """Such a row whose only real token is the last one put its (unscored) filler at the last position, past the
    targets, which are one shorter than the input: an IndexError."""
    from rmt.train.evaluation import score_batch

    model = memory_model(random_backbone("llama", 50, 2, 32, 4, 64), RMTConfig(num_memory_tokens=2, segment_size=4))
    ids = torch.randint(5, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :11] = 0  # left padding: one real token, no answer
    labels = torch.full_like(ids, -100)
    labels[0, 9:] = ids[0, 9:]
    with torch.no_grad():
        both = score_batch(model.eval(), Batch(ids, mask, labels))
        alone = score_batch(model, Batch(ids[:1], mask[:1], labels[:1]))
    assert (both["hits"], both["total"], both["exact"], both["samples"]) == (
        alone["hits"],
        alone["total"],
        alone["exact"],
        alone["samples"],
    )


def test_an_accuracy_curriculum_is_refused_for_data_without_accuracy(tmp_path):
    """Language modelling reports a held-out loss only: a curriculum advanced at an accuracy would never act."""

    class TextLike(_AnswersOfManyLengths):
        metric = "loss"

    model = memory_model(
        random_backbone("llama", 50, 2, 32, 4, 64, seed=0), RMTConfig(num_memory_tokens=2, segment_size=8)
    )
    config = TrainConfig(steps=2, batch_size=2, progress=False, curriculum=[(0, 1), (5, 2)], curriculum_accuracy=0.9)
    with pytest.raises(
        InputError, match=r"curriculum_accuracy acts on held-out accuracy, which this data does not have \(it is scored"
    ):
        train(model, TextLike(), config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_plateau_of_the_held_out_loss_stops_language_modelling():
    """On text the plateau stop reads the held-out loss, where lower is better and no value is a ceiling."""
    from rmt.train.loop import _plateau_reason

    config, state, one_process = TrainConfig(plateau_evals=2), TrainerState(), SimpleNamespace(num_processes=1)
    for step, loss in ((2, 3.0), (4, 2.0), (6, 1.998), (8, 2.1)):
        assert not state.stopped_early
        state = _after_eval(config, state, step, {"loss": loss, "perplexity": math.exp(loss)}, one_process, "loss")
    assert state.stopped_early and state.stop_reason == "plateau" and state.plateau_best == 2.0
    assert _plateau_reason(config, state, "loss") == "held-out loss has not improved for 2 evaluations"

    # A resume that reads another score starts the plateau anew: 0.5 exact match is no plateau after 0.9 accuracy.
    answers = {"loss": 1.0, "accuracy": 0.9, "exact_match": 0.5}
    state = _after_eval(config, TrainerState(), 2, answers, one_process)
    state = _after_eval(replace(config, curriculum_metric="exact_match"), state, 4, answers, one_process)
    assert (state.plateau_best, state.evals_without_gain) == (0.5, 0)


def test_save_best_keeps_the_model_of_the_best_evaluation(tmp_path, monkeypatch):
    """OUTPUT/best holds the weights the model had at its best-scoring evaluation (the same run stopped there: same
    seed, constant rate), not the last ones; a language-modelling score is its loss, lower is better."""
    import rmt.train.loop as loop
    from rmt.memory.pretrained import load_memory_model

    def scripted(scores: list[dict[str, float]]) -> None:
        remaining = iter(scores)
        monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: next(remaining))

    config = TrainConfig(
        steps=6, batch_size=2, eval_every=2, eval_batches=1, lr_schedule="constant", warmup_steps=0, progress=False
    )
    scripted([{"loss": 1.0, "accuracy": a} for a in (0.2, 0.6, 0.4)])
    train(*small_setup(), replace(config, save_best=True), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert record == {"step": 4, "metric": "accuracy", "score": 0.6, "segments": None}
    scripted([{"loss": 1.0, "accuracy": 0.0}] * 2)
    train(*small_setup(), replace(config, steps=4), tmp_path / "stopped")
    folders = ("run/best", "stopped/checkpoint/model", "run/checkpoint/model")
    best, at_step_4, last = (load_memory_model(tmp_path / folder) for folder in folders)

    def same(first, second) -> bool:
        pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
        return all(torch.equal(a, b) for a, b in pairs)

    assert same(best, at_step_4) and not same(best, last)

    state, one_process = TrainerState(), SimpleNamespace(num_processes=1)
    for step, loss in ((2, 3.0), (4, 2.0), (6, 2.5), (8, 2.0)):
        state = _after_eval(TrainConfig(save_best=True), state, step, {"loss": loss}, one_process, "loss")
    assert (state.best_step, state.best_score) == (4, 2.0)  # a tie is no new best
    stages = TrainConfig(save_best=True, curriculum=[(0, 1), (4, 2)])
    state = _after_eval(stages, TrainerState(), 2, {"loss": 1.0, "accuracy": 0.9}, one_process)
    assert state.best_step == 0  # an evaluation before the final number of segments is not comparable
    state = _after_eval(stages, replace(state, stage=1), 4, {"loss": 1.0, "accuracy": 0.5}, one_process)
    assert (state.best_step, state.best_score) == (4, 0.5)
    diverged = TrainerState()
    for step, loss in ((2, float("nan")), (4, 5.0)):
        diverged = _after_eval(TrainConfig(save_best=True), diverged, step, {"loss": loss}, one_process, "loss")
    assert (diverged.best_step, diverged.best_score) == (4, 5.0)  # a diverged evaluation is never the best
    exact = replace(stages, curriculum_metric="exact_match")  # a resume that scores otherwise starts a new best
    state = _after_eval(exact, state, 8, {"loss": 1.0, "accuracy": 0.4, "exact_match": 0.1}, one_process)
    assert (state.best_step, state.best_score, state.best_of) == (8, 0.1, "exact_match at 2 segments")


def test_a_crash_while_the_best_model_is_saved_leaves_the_previous_best_whole(tmp_path, monkeypatch):
    """The second best's weights are written, then the run dies before its best.json: best/ is still the first best,
    weights and record together."""
    from safetensors.torch import load_file

    import rmt.train.loop as loop

    scores = iter([{"loss": 1.0, "accuracy": a} for a in (0.2, 0.6)])
    monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: next(scores))
    records, first_weights = [], {}
    write_json = loop.write_json_atomic

    def crash_on_the_second_record(path, obj):
        if Path(path).name == "best.json":
            records.append(obj)
            if len(records) == 2:
                assert (Path(path).parent / "memory.safetensors").is_file()  # the new weights are there
                raise RuntimeError("crash after the weights, before the record")
            first_weights.update(load_file(Path(path).parent / "memory.safetensors"))
        write_json(path, obj)

    monkeypatch.setattr(loop, "write_json_atomic", crash_on_the_second_record)
    config = TrainConfig(steps=4, batch_size=2, eval_every=2, eval_batches=1, save_best=True, progress=False)
    with pytest.raises(RuntimeError, match="crash after the weights"):
        train(*small_setup(), config, tmp_path / "run")
    best = tmp_path / "run" / "best"
    assert json.loads((best / "best.json").read_text())["step"] == 2 and len(records) == 2
    kept = load_file(best / "memory.safetensors")
    assert kept.keys() == first_weights.keys() and all(torch.equal(kept[k], first_weights[k]) for k in kept)


@pytest.mark.parametrize("resumed_steps", [8, 6])
def test_a_best_model_saved_after_the_last_checkpoint_is_chosen_again_on_resume(
    tmp_path, monkeypatch, capsys, resumed_steps
):
    """The run stops between saving step 8's best model and step 8's checkpoint (step 4's is on disk). Resumed for 8
    steps, it saves step 8's model again (the weights of an uninterrupted run's best); for 6, best/ held step 8's
    model, from a step the run never reaches: it now holds the best from step 5 on (step 6's)."""
    import rmt.train.loop as loop
    from rmt.memory.pretrained import load_memory_model

    def scripted(scores: list[float]) -> None:
        remaining = iter(scores)
        monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: {"loss": 1.0, "accuracy": next(remaining)})

    config = TrainConfig(
        steps=8, batch_size=2, eval_every=2, eval_batches=1, checkpoint_every=4, save_best=True, progress=False
    )
    scripted([0.2, 0.6, 0.7, 0.9])
    train(*small_setup(), config, tmp_path / "whole")
    save_checkpoint = loop.save_checkpoint

    def stop_at_step_8(folder, accelerator, model, step, *args):
        if step == 8:
            raise KeyboardInterrupt
        save_checkpoint(folder, accelerator, model, step, *args)

    scripted([0.2, 0.6, 0.7, 0.9])
    monkeypatch.setattr(loop, "save_checkpoint", stop_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(*small_setup(), config, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["step"] == 8
    monkeypatch.setattr(loop, "save_checkpoint", save_checkpoint)
    scripted([0.5, 0.9] if resumed_steps == 8 else [0.5])
    train(*small_setup(), replace(config, steps=resumed_steps), tmp_path / "run", resume=True)
    assert "held the model of step 8, past the checkpoint's step 4" in capsys.readouterr().err
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert (best["step"], best["score"]) == ((8, 0.9) if resumed_steps == 8 else (6, 0.5))
    expected = "whole/best" if resumed_steps == 8 else "run/checkpoint/model"
    pairs = zip(
        load_memory_model(tmp_path / "run" / "best").state_dict().values(),
        load_memory_model(tmp_path / expected).state_dict().values(),
        strict=True,
    )
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_checkpoint_from_before_the_plateau_rename_keeps_its_best(tmp_path, monkeypatch):
    """Checkpoints written before held-out losses could plateau name the plateau's best "best_accuracy"."""
    import rmt.train.loop as loop

    monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: {"loss": 1.0, "accuracy": 0.7})
    config = TrainConfig(steps=2, batch_size=2, eval_every=2, eval_batches=1, plateau_evals=2, progress=False)
    train(*small_setup(), config, tmp_path / "run")
    state_file = tmp_path / "run" / "checkpoint" / "trainer_state.json"
    record = json.loads(state_file.read_text())
    record["trainer"].pop("plateau_best")
    record["trainer"].update(best_accuracy=0.7, evals_without_gain=1)
    state_file.write_text(json.dumps(record))
    history = train(*small_setup(), replace(config, steps=4), tmp_path / "run", resume=True)
    assert {"step": 4, "stopped": "plateau"} in history  # 0.7 again: the second evaluation without a gain
    assert loop.migrated_trainer_state({"best_accuracy": -1.0}) == {"plateau_best": None}  # -1.0 was "none yet"


@pytest.mark.parametrize("decayed", ["all", "matrices"])
def test_weight_decay_on_matrices_leaves_biases_and_norm_gains(decayed):
    """With zero gradients an AdamW step only decays: 'matrices' shrinks every weight matrix and embedding (the
    memory's too) and leaves one-dimensional parameters (norm gains) as they are; 'all' shrinks those too."""
    model, _ = small_setup()
    config = TrainConfig(weight_decay=0.1, decayed_parameters=decayed, warmup_steps=0, lr_schedule="constant")
    optimizer, _ = build_optimizer(model, config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    matrices = {name for name, p in model.named_parameters() if p.dim() >= 2}
    gains = {name for name, p in model.named_parameters() if p.dim() < 2 and p.abs().sum() > 0}
    assert gains and any("memory" in name for name in matrices)
    assert changed == (matrices | gains if decayed == "all" else matrices)


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_learning_rate_schedule(tmp_path, monkeypatch):
    """fp16's gradient scaler skips a step whose gradients overflow: the schedule stays where it is (it moved on, so
    warm-up ended early by each skipped step). The scaler needs a GPU, so the skip of step 1 is simulated."""
    from accelerate import Accelerator

    calls = []
    monkeypatch.setattr(
        Accelerator, "optimizer_step_was_skipped", property(lambda self: calls.append(1) or len(calls) == 1)
    )
    model, source = small_setup()
    config = TrainConfig(steps=3, batch_size=2, warmup_steps=2, log_every=1, eval_every=100, progress=False)
    history = train(model, source, config, tmp_path)
    assert [r["lr"] for r in history if "lr" in r] == [0.0, 0.0, config.learning_rate / 2]


@pytest.mark.parametrize(
    ("precision", "accelerator", "message"),
    [
        # Accelerate on the CPU leaves fp16 off (no autocast, no scaler: native_amp is False); its settings are
        # global to the process, so the CPU Accelerator's two attributes stand in for it here.
        ("fp16", SimpleNamespace(mixed_precision="fp16", native_amp=False), "fp16 mixed precision needs a GPU"),
        # The run would train in the Accelerator's precision while its checkpoints record the config's.
        (
            "bf16",
            SimpleNamespace(mixed_precision="no", native_amp=True),
            "the Accelerator runs mixed precision 'no' but the config asks for 'bf16'",
        ),
    ],
)
def test_an_accelerator_that_cannot_run_the_configs_precision_is_refused(tmp_path, precision, accelerator, message):
    """fp16 on the CPU (it would train in fp32), or an Accelerator of another precision than the config's."""
    model, source = small_setup()
    config = TrainConfig(steps=1, batch_size=2, mixed_precision=precision, progress=False)
    with pytest.raises(InputError, match=message):
        train(model, source, config, tmp_path / "run", accelerator=accelerator)
    assert not (tmp_path / "run").exists()


def test_a_task_given_for_a_source_is_refused_with_the_wrapper_to_use(tmp_path):
    model, _ = small_setup()
    with pytest.raises(InputError, match=r"got a CopyTask: wrap it, TaskSource\(task\)"):
        train(model, CopyTask(length=6), TrainConfig(steps=1, progress=False), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_settings_given_as_dicts_are_refused_with_the_class_to_build():
    """A dict for the training or memory config failed with AttributeError: 'dict' object has no attribute ..."""
    from conftest import tiny_decoder, tiny_encoder

    from rmt import ARMTForCausalLM, RMTForCausalLM, RMTForSequenceClassification

    model, source = small_setup()
    with pytest.raises(
        InputError, match=r"train takes a TrainConfig, got a dict: build one from it, TrainConfig\(\*\*"
    ):
        train(model, source, {"steps": 1}, "unused")
    for cls, backbone in (
        (RMTForCausalLM, tiny_decoder()),
        (ARMTForCausalLM, tiny_decoder()),
        (RMTForSequenceClassification, tiny_encoder()),
    ):
        with pytest.raises(InputError, match=rf"{cls.__name__} takes an RMTConfig, got a dict: build one from it"):
            cls(backbone, {"segment_size": 4})


def test_a_bf16_run_gives_the_model_back_computing_in_fp32(tmp_path):
    """Accelerate's prepare() wraps the model's forward in autocast for good: after a bf16 run, model(...) computed
    in bf16 (max |logit difference| 2e-3 against the same weights in fp32)."""
    model, source = small_setup()
    train(model, source, TrainConfig(steps=1, batch_size=2, mixed_precision="bf16", progress=False), tmp_path / "r")
    ids = source.task().batch(2, seed=5).input_ids
    reference = memory_model(
        random_backbone("llama", model.backbone.config.vocab_size, 2, 32, max_positions=64), model.config
    )
    reference.load_state_dict(model.state_dict())
    model.eval()
    torch.testing.assert_close(model(ids).logits, reference.eval()(ids).logits, rtol=0, atol=0)


def test_runs_in_two_precisions_one_after_the_other_in_one_process(tmp_path):
    """Accelerate keeps one state per process and refused the second precision (a raw ValueError)."""
    for precision in ("no", "bf16", "no"):
        model, source = small_setup()
        config = TrainConfig(steps=1, batch_size=2, mixed_precision=precision, progress=False)
        assert train(model, source, config, tmp_path / precision, overwrite=True)[-1]["step"] == 1


def test_gradients_left_on_the_model_before_training_are_not_added_to_its_first_step(tmp_path):
    config = TrainConfig(steps=1, batch_size=2, warmup_steps=0, progress=False)  # a first step at a learning rate
    fresh, source = small_setup()
    dirty, _ = small_setup()
    batch = source.task().batch(2, seed=9)
    dirty.forward_backward(batch.input_ids, labels=batch.labels)  # the README's training step, run before
    train(fresh, source, config, tmp_path / "fresh")
    train(dirty, source, config, tmp_path / "dirty")
    for (name, a), b in zip(fresh.state_dict().items(), dirty.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_an_accelerator_that_accumulates_gradients_itself_is_refused(tmp_path):
    """accelerator.backward divides the loss by its own accumulation steps, on top of the trainer's weights."""
    from accelerate import Accelerator

    model, source = small_setup()
    accumulating = Accelerator(cpu=True, gradient_accumulation_steps=4)
    with pytest.raises(InputError, match="accumulates gradients over 4 steps itself: .*TrainConfig.grad_accumulation"):
        train(model, source, TrainConfig(steps=1, progress=False), tmp_path / "run", accelerator=accumulating)
    assert not (tmp_path / "run").exists()
    assert Accelerator(cpu=True).gradient_accumulation_steps == 1  # not left to the runs after it


def test_a_curriculum_over_samples_of_one_length_is_refused(tmp_path):
    """A fixed task ignores the number of segments: the log named stages that never happened."""
    model, source = small_setup()
    config = TrainConfig(steps=4, curriculum=[(0, 1), (2, 2)], progress=False)
    with pytest.raises(InputError, match="this TaskSource gives samples of one length"):
        train(model, source, config, tmp_path / "run")
    growing = TaskSource(lambda segments: CopyTask(length=2 * segments))
    assert growing.follows_num_segments and not source.follows_num_segments


def test_held_out_scores_of_a_bf16_run_are_computed_in_bf16(tmp_path, monkeypatch):
    """In the precision the run trains in: by the trainer's own autocast, which FSDP runs (whose model Accelerate
    never wraps) go through too; this test runs the path without FSDP."""
    import rmt.train.loop as loop

    seen = []

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", recording)
    model, source = small_setup()
    train(model, source, TrainConfig(steps=1, batch_size=2, mixed_precision="bf16", progress=False), tmp_path / "r")
    assert seen == [True]


def test_armt_at_bptt_depth_0_is_noted_as_leaving_its_memory_empty(tmp_path, capsys):
    """At depth 0 no loss reaches ARMT's writes, and its value projection starts at zero: the trainer says that the
    memory stays empty (it does: w_v is still zero after training), and only that no gradient reaches the write once
    w_v holds something; depth 1 trains w_v and gets no note."""
    task = CopyTask(length=4)
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_batches=1, progress=False)

    def armt(depth: int) -> RecurrentMemoryModel:
        backbone = random_backbone("llama", task.vocab_size, num_layers=1, hidden_size=32, max_positions=64, seed=0)
        settings = RMTConfig(
            num_memory_tokens=2, segment_size=task.segment_size_for(3), memory_kind="armt", d_mem=8, bptt_depth=depth
        )
        return memory_model(backbone, settings)

    model = armt(0)
    train(model, TaskSource(task, seed=0), config, tmp_path / "depth0")
    err = capsys.readouterr().err
    assert "note: ARMT at BPTT depth 0 (bptt_depth=0): no loss reaches the memory's writes" in err
    assert "the memory stays empty" in err and not model.w_v.detach().any()
    with torch.no_grad():
        model.w_v.fill_(0.01)
    train(model, TaskSource(task, seed=0), replace(config, seed=1), tmp_path / "depth0-written")
    err = capsys.readouterr().err
    assert "no loss reaches the memory's writes" in err and "stays empty" not in err
    model = armt(1)
    train(model, TaskSource(task, seed=0), config, tmp_path / "depth1")
    assert "BPTT depth 0" not in capsys.readouterr().err and model.w_v.detach().any()
