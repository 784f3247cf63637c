"""Batches built ahead by worker processes (`rmt.data.prefetch`, `TrainConfig.data_workers`) and the trainer's time
limit (`TrainConfig.max_time`): the same batches and losses as without them, and a stopped run that resumes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rmt.build import memory_model, random_backbone
from rmt.config import RMTConfig
from rmt.data.files import DatasetSource
from rmt.data.prefetch import PrefetchingSource
from rmt.data.sources import TaskSource
from rmt.data.tasks import CopyTask
from rmt.errors import InputError
from rmt.train import loop
from rmt.train.config import TrainConfig
from rmt.train.loop import train


def copy_source(seed: int = 0) -> TaskSource:
    """Copy samples as long as the number of segments asked for (a curriculum changes their shape)."""
    return TaskSource(lambda segments: CopyTask(length=2 * segments), seed=seed)


def same_batch(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model_inputs().values(), b.model_inputs().values(), strict=True))


def test_prefetched_batches_are_the_source_s_own_across_a_change_of_segments():
    direct = copy_source(seed=3)
    prefetching = PrefetchingSource(copy_source(seed=3), workers=2, ahead=3)
    try:
        asked = [(0, 4, 1), (1, 4, 1), (2, 4, 1), (3, 4, 2), (4, 4, 2), (7, 4, 2), (8, 6, 2), (9, 6, 3)]
        for step, size, segments in asked:
            got = prefetching.train_batch(step, size, segments)
            assert same_batch(got, direct.train_batch(step, size, segments)), (step, size, segments)
        assert prefetching.served_ahead == 4  # steps 1, 2, 4 and 7 were built ahead; the others, after a change
        assert same_batch(prefetching.eval_batch(2, 5, 2), direct.eval_batch(2, 5, 2))
    finally:
        prefetching.close()


def small_model(task: CopyTask):
    backbone = random_backbone("llama", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=0)
    return memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=task.segment_size_for(3)))


def test_training_with_data_workers_logs_the_losses_of_training_without(tmp_path, monkeypatch):
    served: list[int] = []

    class Recording(PrefetchingSource):  # notes how many batches the workers gave the run
        def close(self) -> None:
            served.append(self.served_ahead)
            super().close()

    monkeypatch.setattr(loop, "PrefetchingSource", Recording)
    task = CopyTask(length=6)
    config = TrainConfig(steps=5, batch_size=4, log_every=1, eval_every=5, eval_batches=1, progress=False)
    losses = {}
    for workers in (0, 2):
        history = train(
            small_model(task),
            TaskSource(task),
            TrainConfig(**{**vars(config), "data_workers": workers}),
            tmp_path / f"workers-{workers}",
        )
        losses[workers] = [r["loss"] for r in history if "loss" in r]
    assert len(losses[0]) == 5
    assert losses[2] == losses[0]
    assert served == [4]  # steps 1-4 came from the workers: the run really used them


def test_data_workers_refuse_a_streamed_file():
    streamed = DatasetSource(iter([{"text": "a"}]), collate=lambda records: records)
    with pytest.raises(InputError, match="streamed file"):
        PrefetchingSource(streamed, workers=1)
    with pytest.raises(InputError, match="data_workers"):
        TrainConfig(data_workers=-1)
    with pytest.raises(InputError, match="max_time"):
        TrainConfig(max_time=0)


def test_a_run_stopped_by_its_time_limit_saves_and_resumes_exactly(tmp_path):
    task = CopyTask(length=6)
    config = TrainConfig(steps=4, batch_size=4, log_every=1, eval_every=4, eval_batches=1, progress=False)
    straight = train(small_model(task), TaskSource(task), config, tmp_path / "straight")

    limited = TrainConfig(**{**vars(config), "max_time": 1e-9})  # up after the first step
    first = train(small_model(task), TaskSource(task), limited, tmp_path / "limited")
    assert first[-1] == {"step": 1, "stopped": "max_time"}
    state = json.loads((tmp_path / "limited" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 1
    resumed = train(small_model(task), TaskSource(task), config, tmp_path / "limited", resume=True)
    assert [r["loss"] for r in resumed if "loss" in r] == [r["loss"] for r in straight if "loss" in r]
    assert not any("stopped" in r for r in resumed)  # the record of the time limit went with the stop


def test_a_tied_embedding_backbone_resumes_exactly_tied_and_without_a_shared_tensor_warning(tmp_path, caplog):
    """GPT-2 ties its LM head to its input embeddings: the checkpoint stores the shared tensor once, and resuming
    rebuilds the tie (the run continues as if never stopped, the head still is the embedding)."""
    task = CopyTask(length=6)

    def tied_model():
        backbone = random_backbone("gpt2", task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=0)
        assert backbone.lm_head.weight is backbone.get_input_embeddings().weight
        return memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=task.segment_size_for(3)))

    config = TrainConfig(steps=3, batch_size=4, log_every=1, eval_every=3, eval_batches=1, progress=False)
    straight = train(tied_model(), TaskSource(task), config, tmp_path / "straight")
    with caplog.at_level(logging.WARNING):
        train(tied_model(), TaskSource(task), TrainConfig(**{**vars(config), "max_time": 1e-9}), tmp_path / "limited")
    assert "Removed shared tensor" not in caplog.text
    resumed_model = tied_model()
    resumed = train(resumed_model, TaskSource(task), config, tmp_path / "limited", resume=True)
    assert [r["loss"] for r in resumed if "loss" in r] == [r["loss"] for r in straight if "loss" in r]
    backbone = resumed_model.backbone
    assert backbone.lm_head.weight.data_ptr() == backbone.get_input_embeddings().weight.data_ptr()


TRAINER_WITH_WORKERS = """
from rmt.data.prefetch import PrefetchingSource
from rmt.data.sources import TaskSource
from rmt.data.tasks import CopyTask
source = PrefetchingSource(TaskSource(CopyTask(length=4)), workers=2)
source.train_batch(0, 4)
print("ready", flush=True)
input()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_workers_end_with_a_training_process_that_is_killed_outright():
    """A SIGKILL (the out-of-memory killer) gives the trainer no chance to stop its workers: they stop themselves."""
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER_WITH_WORKERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        assert trainer.stdout.readline().strip() == "ready"
        workers = [int(pid) for pid in Path(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read_text().split()]
        assert len(workers) == 2
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        deadline = time.monotonic() + 20
        running = workers
        while running and time.monotonic() < deadline:
            time.sleep(0.2)
            running = [pid for pid in workers if _running(pid)]
        assert running == []
    finally:
        trainer.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie awaiting its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
