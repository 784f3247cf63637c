"""Data files (jsonl, json, csv, parquet, text) read through Hugging Face `datasets`, as a trainer source.

    records = load_records("train.jsonl")                 # a datasets.Dataset (or IterableDataset if streamed)
    shape = record_shape(records.column_names)             # "qa" (input/question/target) or "text"
    train, held_out = split_validation(records, 200, seed=0)
    source = DatasetSource(train, QACollator(tokenizer, "decoder"), validation=held_out)

Files larger than `STREAM_ABOVE_BYTES` (or any file with `streaming=True`) are streamed: examples are read as
training needs them, never all in memory. A map-style source's batch at step s is a pure function of (seed, s) (a
seeded permutation per epoch), so resumed runs continue exactly; a streamed source reaches the same position on resume
by reading past the examples already consumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rmt.data.batch import Batch
from rmt.data.collate import QA_FIELDS, TEXT_FIELDS
from rmt.data.sources import Source
from rmt.errors import InputError, MissingFileError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
STREAM_ABOVE_BYTES = 2 * 2**30
_SHUFFLE_BUFFER = 10_000


def load_records(path: str | os.PathLike, streaming: bool | None = None) -> Any:
    """The records of a data file as a `datasets.Dataset` (or `IterableDataset` when streamed; default: stream files
    over 2 GiB). The format comes from the extension: .jsonl/.json, .csv, .parquet, .txt (one record per line)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no data file at {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"data file {path}: unknown format {path.suffix!r}; use one of {sorted(FORMATS)}")
    if streaming is None:
        streaming = path.stat().st_size > STREAM_ABOVE_BYTES
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train", streaming=streaming)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as err:
        raise InputError(f"cannot read data file {path} as {kind}: {err}") from err


def record_shape(columns: list[str] | None, path: str | os.PathLike = "data") -> str:
    """'qa' for records with input/question/target, 'text' for records with text; else an InputError naming what is
    missing."""
    columns = list(columns or [])
    if all(f in columns for f in QA_FIELDS):
        return "qa"
    if all(f in columns for f in TEXT_FIELDS):
        return "text"
    raise InputError(
        f"{path} has the fields {columns}; expected {list(QA_FIELDS)} (question answering, BABILong's names) or "
        f"{list(TEXT_FIELDS)} (language modelling)"
    )


def split_validation(records: Any, count: int, seed: int = 0) -> tuple[Any, Any]:
    """(training records, `count` held-out records) drawn at random (seeded) from a map-style dataset, or the first
    `count` records of a streamed one."""
    if count <= 0:
        raise InputError(f"the validation split needs at least one record, got {count}")
    if hasattr(records, "__len__"):
        if count >= len(records):
            raise InputError(f"cannot hold out {count} records for validation: the data has only {len(records)}")
        split = records.train_test_split(test_size=count, seed=seed, shuffle=True)
        return split["train"], split["test"]
    return records.skip(count), records.take(count)


class DatasetSource(Source):
    """Training and held-out batches from records (map-style or streamed) through a collator."""

    def __init__(
        self,
        train: Any,
        collate: Callable[[list[dict[str, Any]]], Batch],
        seed: int = 0,
        validation: Any = None,
        metric: str = "accuracy",
    ) -> None:
        self.train, self.collate, self.seed, self.metric = train, collate, seed, metric
        self.validation = list(validation) if validation is not None else None
        self._stream: Iterator[dict[str, Any]] | None = None
        self._position = 0  # streamed records consumed so far
        self._epoch = 0
        self._cached: tuple[int, list[int]] = (-1, [])  # (epoch, its permutation)
        if hasattr(train, "__len__") and len(train) == 0:
            raise InputError("the training data is empty")

    @property
    def batches_are_pure(self) -> bool:
        """A streamed file is read in order, so its batch of a step depends on the batches read before it."""
        return hasattr(self.train, "__len__")

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        if hasattr(self.train, "__len__"):
            return self.collate([self.train[i] for i in self._indices(step, batch_size)])
        return self.collate(self._streamed(step * batch_size, batch_size))

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        if not self.validation:
            raise InputError("no validation records: pass validation= (or --validation-samples)")
        start = index * batch_size
        return self.collate(self.validation[start : start + batch_size])

    def num_eval_batches(self, batch_size: int) -> int | None:
        return None if not self.validation else -(-len(self.validation) // batch_size)

    def _indices(self, step: int, batch_size: int) -> list[int]:
        """Positions step * B .. (step + 1) * B - 1 of the endless sequence of seeded per-epoch permutations."""
        n = len(self.train)
        return [self._permutation(p // n)[p % n] for p in range(step * batch_size, (step + 1) * batch_size)]

    def _permutation(self, epoch: int) -> list[int]:
        if self._cached[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = (epoch, torch.randperm(len(self.train), generator=generator).tolist())
        return self._cached[1]

    def _streamed(self, position: int, count: int) -> list[dict[str, Any]]:
        if self._stream is None or position != self._position:
            self._restart()
            while self._position < position:  # resume: read past what earlier steps consumed
                self._next()
        return [self._next() for _ in range(count)]

    def _restart(self) -> None:
        self._epoch, self._position = 0, 0
        self._stream = iter(self._epoch_records())

    def _epoch_records(self) -> Any:
        records = self.train.shuffle(seed=self.seed, buffer_size=_SHUFFLE_BUFFER)
        records.set_epoch(self._epoch)
        return records

    def _next(self) -> dict[str, Any]:
        for _ in range(2):
            try:
                record = next(self._stream)
                self._position += 1
                return record
            except StopIteration:
                self._epoch += 1
                self._stream = iter(self._epoch_records())
        raise InputError("the streamed training data is empty")
