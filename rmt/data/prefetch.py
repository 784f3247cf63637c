"""Training batches built ahead of time in worker processes, so that a GPU does not wait for the CPU.

    source = PrefetchingSource(BabilongSource(...), workers=8)
    batch = source.train_batch(step, 64, num_segments=4)    # the same Batch the wrapped source would give
    source.close()

Generated data (BABILong samples, synthetic tasks) costs CPU time per sample, and a small encoder's training step on
a GPU can take less time than building its batch on one core. The trainer's sources (all but a streamed file) make
the batch of a step as a pure function of (step, batch size, segments), so workers can build the next steps' batches
while the model trains on this one, and the result is the batch the source itself would have returned: a run with
workers gives the losses of the run without them. When the curriculum changes the number of segments, the batches
built for the old number are dropped and the source builds the current one itself.

The workers are forked from the training process (they inherit the source without pickling it); a platform
without fork, or a source whose batches depend on what was read before (a streamed file), is refused. On Linux a
worker ends with the training process even when that one is killed outright (SIGKILL, the out-of-memory killer),
which would otherwise leave the workers waiting for work forever, holding their copy of its memory.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor

from rmt.data.batch import Batch
from rmt.data.sources import Source
from rmt.errors import InputError

# The source of this worker process, set by `_worker_init` (forked workers receive it without pickling).
_WORKER_SOURCE: Source | None = None


_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal this process gets when its parent ends


def _worker_init(source: Source, parent: int) -> None:
    import torch

    if sys.platform == "linux":  # the signal follows the thread that forked: the one that asked for batches
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the request above
            os._exit(0)
    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    torch.set_num_threads(1)  # each worker is one core's worth of sample building


def _build_train_batch(step: int, batch_size: int, num_segments: int | None) -> Batch:
    assert _WORKER_SOURCE is not None, "the worker was not forked from a PrefetchingSource"
    return _WORKER_SOURCE.train_batch(step, batch_size, num_segments)


class PrefetchingSource(Source):
    """`source` whose training batches are built `ahead` steps in advance by `workers` processes; held-out batches
    come from `source` directly."""

    def __init__(self, source: Source, workers: int, ahead: int | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"data workers must be an integer >= 1, got {workers!r}")
        if not source.batches_are_pure:
            raise InputError(
                f"{type(source).__name__} reads its data in order (a streamed file): its batches cannot be built "
                "ahead in worker processes; drop the data workers or the streaming"
            )
        if "fork" not in multiprocessing.get_all_start_methods():
            raise InputError("data workers need processes started by fork, which this platform does not have")
        self.source = source
        self.ahead = ahead if ahead is not None else 2 * workers
        self._pending: dict[tuple[int, int, int | None], Future] = {}
        self.served_ahead = 0  # batches that came from the workers (the rest the source built when asked)
        # Rust tokenizers that ran threads before a fork can deadlock in the child: keep them single-threaded.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._pool = ProcessPoolExecutor(
            workers, multiprocessing.get_context("fork"), initializer=_worker_init, initargs=(source, os.getpid())
        )

    @property
    def seed(self) -> int:
        return self.source.seed

    @property
    def metric(self) -> str:
        return self.source.metric

    @property
    def follows_num_segments(self) -> bool:
        return self.source.follows_num_segments

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        key = (step, batch_size, num_segments)
        future = self._pending.pop(key, None)
        for other in [k for k in self._pending if k[0] <= step or k[1:] != key[1:]]:  # stale: never asked for
            self._pending.pop(other).cancel()
        for ahead in range(step + 1, step + 1 + self.ahead):
            upcoming = (ahead, batch_size, num_segments)
            if upcoming not in self._pending:
                self._pending[upcoming] = self._pool.submit(_build_train_batch, *upcoming)
        if future is None:
            return self.source.train_batch(step, batch_size, num_segments)
        self.served_ahead += 1
        return future.result()

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        return self.source.eval_batch(index, batch_size, num_segments)

    def num_eval_batches(self, batch_size: int) -> int | None:
        return self.source.num_eval_batches(batch_size)

    def close(self) -> None:
        """Stop the workers (batches still being built are dropped)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
