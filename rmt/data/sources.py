"""Data sources of the trainer: training and held-out batches, as pure functions of (seed, step) where they can be.

A source answers `train_batch(step, batch_size, num_segments)` and `eval_batch(index, batch_size, num_segments)`.
Being a pure function of the step is what makes a resumed run continue exactly: nothing about the data order is
stored. `num_segments` serves a curriculum: sources that generate their samples (synthetic tasks, BABILong) make them
as long as that many segments; sources that read a file ignore it.

- `TaskSource`: a synthetic task of `rmt.data.tasks` (or a factory num_segments -> task).
- `BabilongSource` (rmt.data.babilong_source) and `DatasetSource` (rmt.data.files): real text through a tokenizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from rmt.data.batch import Batch
from rmt.data.tasks import Task
from rmt.errors import InputError

EVAL_SEED_BASE = 1_000_000_007  # held-out batches use seeds far from training ones
TRAIN_SEED_STRIDE = 1_000_003  # seed * stride + step: distinct training seeds per run seed


class Source(ABC):
    """Training and held-out batches of one data set."""

    seed: int = 0
    #: what `rmt.train.evaluation` reports: "accuracy" (answers: tasks, QA) or "loss" (language modelling)
    metric: str = "accuracy"
    #: whether `train_batch` depends on its arguments alone, so that worker processes can build batches ahead
    #: (`rmt.data.prefetch`); False for a source that reads its data in order
    batches_are_pure: bool = True
    #: whether batches are as long as the `num_segments` they are asked for, so that a curriculum acts on them; False
    #: for a source whose samples have one length (a fixed task, a data file)
    follows_num_segments: bool = True

    @abstractmethod
    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        """The training batch of `step`."""

    @abstractmethod
    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        """Held-out batch number `index`."""

    def num_eval_batches(self, batch_size: int) -> int | None:
        """How many distinct held-out batches exist (None: as many as asked, generated)."""
        return None


TaskFactory = Callable[[int], Task]  # number of segments -> task whose samples span that many segments


class TaskSource(Source):
    """Batches of a synthetic task; `task` is a fixed Task, or a factory num_segments -> Task for a curriculum."""

    def __init__(self, task: Task | TaskFactory, seed: int = 0) -> None:
        self._task = task
        self.seed = seed

    @property
    def follows_num_segments(self) -> bool:
        return not isinstance(self._task, Task)

    def task(self, num_segments: int | None = None) -> Task:
        if isinstance(self._task, Task):
            return self._task
        if num_segments is None:
            raise InputError("this task is built per number of segments: pass num_segments")
        return self._task(num_segments)

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        return self.task(num_segments).batch(batch_size, seed=self.seed * TRAIN_SEED_STRIDE + step)

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        return self.task(num_segments).batch(batch_size, seed=EVAL_SEED_BASE + index)
