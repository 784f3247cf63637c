"""Data files (jsonl, json, csv, parquet, text) read through Hugging Face `datasets`, as a trainer source.

    records = load_records("train.jsonl")                 # a datasets.Dataset (or IterableDataset if streamed)
    shape = record_shape(records.column_names)             # "qa" (input/question/target) or "text"
    train, held_out = split_validation(records, 200, seed=0)
    source = DatasetSource(train, QACollator(tokenizer, "decoder"), validation=held_out)

Files larger than `STREAM_ABOVE_BYTES` (or any file with `streaming=True`) are streamed: examples are read as
training needs them, never all in memory. A map-style source's batch at step s is a pure function of (seed, s) (a
seeded permutation per epoch), so resumed runs continue exactly; a streamed source reaches the same position on resume
by reading past the examples already consumed.

Bad records are refused with an InputError that names them, as early as the data allows: a file with no records
when it is loaded; a missing, empty or non-text field (which `datasets` would fill with None), or a blank target or
text, when a file read in memory is loaded, else when a batch draws the record (named by its place in the file;
a new training run draws its first batches before it changes its output folder); an encoder's answer outside its
label set when a `DatasetSource` is made over records in memory, else when a batch draws it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rmt.data.batch import Batch
from rmt.data.collate import NOT_BLANK, QA_FIELDS, QA_TYPES, TEXT_FIELDS, TEXT_TYPES, field_problem
from rmt.data.sources import Source
from rmt.errors import InputError, MissingFileError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
STREAM_ABOVE_BYTES = 2 * 2**30
_SHUFFLE_BUFFER = 10_000
_CHECK_BATCH = 10_000  # records per Arrow batch when checking fields
_BOM = b"\xef\xbb\xbf"


def load_records(path: str | os.PathLike, streaming: bool | None = None) -> Any:
    """The records of a data file as a `datasets.Dataset` (or `IterableDataset` when streamed; default: stream files
    over 2 GiB; a .json file holding one JSON array cannot be streamed). The format comes from the extension:
    .jsonl/.json, .csv, .parquet, .txt (one record per line; blank lines are not records). A UTF-8 byte order mark is
    allowed.

    Raises InputError for a file with no records, a CSV file that is not UTF-8 or whose first rows have more fields
    than its header, a JSON-lines line that is not a JSON object (named by its line), and, when the file is read in
    memory, for a question-answering (or text) record whose input, question or target (or text) is missing, empty,
    not text or not UTF-8, naming the record."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no data file at {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"data file {path}: unknown format {path.suffix!r}; use one of {sorted(FORMATS)}")
    if _is_blank(path) or kind == "parquet" and _parquet_rows(path) == 0:
        # `datasets` fails on these with a bare StopIteration or a message that does not say why ("BatchSize must be
        # greater than 0" for a parquet file without rows)
        raise InputError(f"data file {path} has no records")
    if streaming is None:
        streaming = path.stat().st_size > STREAM_ABOVE_BYTES
    leading = _leading_characters(path) if kind == "json" else ""
    if streaming and leading.startswith("[") and leading != "[]":
        # `datasets` parses a JSON array whole even when asked to stream: a file too large to load would not fit.
        raise InputError(
            f"data file {path} is one JSON array, which cannot be streamed (it is parsed whole); write it as JSON "
            "lines (one record per line, .jsonl)"
        )
    null_line = _first_null_line(path) if kind == "json" and leading[:1] != "[" else None
    if null_line is not None:  # pyarrow's JSON reader crashes the process (SIGSEGV) on a block that starts with one
        raise InputError(f"cannot read data file {path}: line {null_line} is not a JSON object (a record): null")
    import datasets

    datasets.disable_progress_bars()
    # The json and csv readers skip a byte order mark themselves; the text reader would keep it in the first line.
    options: dict[str, Any] = {"encoding": "utf-8-sig"} if kind == "text" else {}
    if kind == "csv":
        options.update(_csv_as_text(path))
    try:
        with _datasets_errors_unlogged():  # the reader logs its error before raising it: said once, below
            records = datasets.load_dataset(kind, data_files=str(path), split="train", streaming=streaming, **options)
    except _read_errors() as err:
        if "corresponds to no data" in str(err):  # what `datasets` says of "[]" or a CSV header alone
            raise InputError(f"data file {path} has no records") from err
        bad_line = _first_bad_json_line(path) if kind == "json" and leading[:1] != "[" else None
        if bad_line is not None:  # pyarrow counts rows within its read block, not in the file
            raise InputError(f"cannot read data file {path}: {bad_line}") from err
        raise InputError(f"cannot read data file {path} as {kind}: {_reason(err)}") from err
    if kind == "text":
        if records.column_names is None:  # a streamed text file, before `datasets` has it cached: say what it holds
            records = records.cast(datasets.Features({"text": datasets.Value("string")}))
        # A blank line separates paragraphs; as a record it would be a document with nothing to predict.
        records = records.filter(_has_text, input_columns="text", batched=True)
    try:
        with _datasets_errors_unlogged():
            empty = (next(iter(records), None) is None) if streaming else len(records) == 0
    except _read_errors() as err:  # a streamed file is read only now
        raise InputError(f"cannot read data file {path} as {kind}: {_reason(err)}") from err
    if empty:
        raise InputError(f"data file {path} has no records")
    if not streaming:
        check_fields(records, path)
    return records


@contextmanager
def _datasets_errors_unlogged() -> Iterator[None]:
    """Inside the block, `datasets` logs nothing below CRITICAL (its JSON and CSV readers log the error they raise)."""
    from datasets.utils import logging as datasets_logging

    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(level)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a data file through `datasets` can raise, at load or (streamed) at any record: pyarrow's
    ArrowInvalid, pandas' ParserError and UnicodeDecodeError are ValueErrors; DatasetGenerationError wraps them."""
    from datasets.exceptions import DatasetGenerationError

    return ValueError, OSError, DatasetGenerationError


_CSV_ROWS_CHECKED = 1000  # data rows whose number of fields is compared with the header's


def _csv_as_text(path: Path) -> dict[str, Any]:
    """Options that make `datasets` read every CSV cell as the text it holds: pandas would guess types, turning the
    answers "007" into 7, "NA" or "None" into a missing value and "True" into a bool. Only an empty cell is missing.

    Columns are named as pandas names them (an unnamed one "Unnamed: i", a repeated name "name.1"), so that a file
    written by pandas with its index loads. Rows with more fields than the header are refused (from the first
    rows): pandas would take their first column for an index and shift every field by one."""
    import csv

    from datasets import Features, Value

    limit = csv.field_size_limit(2**31 - 1)  # a long story in one cell is fine (the module's default: 128 KiB)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            rows = csv.reader(file)
            header = next(rows, [])
            for number, row in enumerate(rows, start=2):
                if len(row) > len(header):
                    raise InputError(
                        f"data file {path}: line {number} has {len(row)} fields but the header names {len(header)} "
                        "(a delimiter at the end of the line, or values without a column name)"
                    )
                if number > _CSV_ROWS_CHECKED:
                    break
    except UnicodeDecodeError as err:
        raise InputError(f"data file {path} is not UTF-8 text: {err}") from None
    except csv.Error as err:
        raise InputError(f"cannot read data file {path} as csv: {err}") from None
    finally:
        csv.field_size_limit(limit)
    names: list[str] = []
    for index, name in enumerate(header):
        name = name or f"Unnamed: {index}"
        taken, suffix = name, 0
        while taken in names:
            suffix += 1
            taken = f"{name}.{suffix}"
        names.append(taken)
    return {
        "features": Features({name: Value("string") for name in names}),
        "keep_default_na": False,
        "na_values": [""],
        "index_col": False,
    }


# A line that is `null`, found by the line break before it (searched with a fast scan for that literal byte, where
# a multi-line `^` would try every position): lines are searched with a line break in front and at the end.
_NULL_LINE = re.compile(rb"\n[ \t]*null[ \t]*\r?\n")


def _first_null_line(path: Path, chunk_bytes: int = 1 << 24) -> int | None:
    """The number (from 1) of the first line of a JSON-lines file that is `null`, or None: read in large chunks and
    searched with a regular expression anchored on line breaks."""
    number, carry = 1, b""
    with path.open("rb") as file:
        if file.read(len(_BOM)) != _BOM:
            file.seek(0)
        while chunk := file.read(chunk_bytes):
            lines = carry + chunk
            cut = lines.rfind(b"\n") + 1  # whole lines only: the rest waits for the next chunk
            whole, carry = lines[:cut], lines[cut:]
            found = _NULL_LINE.search(b"\n" + whole)
            if found is not None:  # the null line starts at `found.start()` in `whole`
                return number + whole.count(b"\n", 0, found.start())
            number += whole.count(b"\n")
    return number if _NULL_LINE.search(b"\n" + carry + b"\n") is not None else None


def _first_bad_json_line(path: Path) -> str | None:
    """For a JSON-lines file that did not load: which line is not a JSON object (counted from 1), read again line by
    line, or None when every line is."""
    import json

    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            line = raw.removeprefix(_BOM) if number == 1 else raw
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                return f"line {number} is not UTF-8 text ({err})"
            except ValueError as err:
                return f"line {number} is not JSON ({err})"
            if not isinstance(value, dict):
                return f"line {number} is not a JSON object (a record): {type(value).__name__}"
            try:  # Python's json takes an escaped half of a surrogate pair alone, pyarrow's reader does not
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as err:
                return f"line {number} holds an escaped half of a surrogate pair alone, which is no text ({err})"
    return None


def _reason(err: BaseException) -> str:
    """An error's message with its cause's: `datasets` wraps a parser's error ("Expected 3 fields in line 4") in a
    DatasetGenerationError that says only that one occurred."""
    cause = err.__cause__ or err.__context__
    return (
        f"{err} ({type(cause).__name__}: {str(cause).strip()})"
        if cause is not None and str(cause) not in str(err)
        else str(err)
    )


def _has_text(texts: list[str]) -> list[bool]:
    return [bool(text.strip()) for text in texts]


def _leading_characters(path: Path, count: int = 2) -> str:
    """The first `count` characters of a text file that are not white space (a UTF-8 byte order mark skipped), from
    its first 4 KiB: enough to tell a JSON array ("[{...") from an empty one ("[]")."""
    with path.open("rb") as file:
        head = file.read(1 << 12)
    head = head.removeprefix(_BOM)
    return "".join(head.decode("utf-8", errors="replace").split())[:count]


def _first_undecodable(column: Any) -> int | None:
    """The index of the first value of an Arrow string column that is not valid UTF-8, or None."""
    import pyarrow as pa

    try:
        column.validate(full=True)
        return None
    except pa.ArrowInvalid:
        for index, value in enumerate(column.cast(pa.large_binary()).to_pylist()):
            if value is not None:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return index
        return None


def _parquet_rows(path: Path) -> int | None:
    """The rows a parquet file's footer counts; None when it cannot be read (`datasets` then says why)."""
    import pyarrow.parquet

    try:
        return pyarrow.parquet.ParquetFile(path).metadata.num_rows
    except (ValueError, OSError):  # ArrowInvalid (not parquet, truncated) is a ValueError
        return None


def _is_blank(path: Path) -> bool:
    """Whether a file holds nothing but white space (and perhaps a UTF-8 byte order mark)."""
    with path.open("rb") as file:
        if file.read(len(_BOM)) != _BOM:
            file.seek(0)
        while chunk := file.read(1 << 16):
            if chunk.strip():
                return False
    return True


def check_fields(records: Any, path: str | os.PathLike = "data") -> None:
    """Refuse a map-style dataset of question-answering (or text) records if a record's input, question or target
    (or text) is missing, None or not text, or whose target (or text) is blank: Hugging Face datasets fill a key that
    a record lacks, and an empty CSV cell, with None, which would otherwise reach the model as the text "None". The
    InputError names the first such record (counted from 0) and its field. Records of neither shape are left to
    `record_shape`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = list(records.column_names or [])
    if all(f in columns for f in QA_FIELDS):
        names, types = QA_FIELDS, QA_TYPES
    elif all(f in columns for f in TEXT_FIELDS):
        names, types = TEXT_FIELDS, TEXT_TYPES
    else:
        return
    # Arrow batches of the needed columns only: a column of strings (or integers) is checked by its null count,
    # without making Python strings of the contexts. A column of another declared type is read as the records give
    # it: datasets declares a column of mixed values `Json` and stores it as JSON text, which Arrow calls strings.
    from datasets import Value

    features = records.features or {}
    declared_plain = {name: isinstance(features.get(name, Value("string")), Value) for name in names}
    selected = records.select_columns(list(names))
    start = 0
    for batch in selected.with_format("arrow").iter(batch_size=_CHECK_BATCH):
        found: list[tuple[int, str, str]] = []
        for name in names:
            column = batch.column(name)
            if declared_plain[name] and _arrow_holds(column.type, types):
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    undecodable = _first_undecodable(column)  # pyarrow's JSON reader does not check UTF-8
                    if undecodable is not None:
                        found.append((undecodable, name, "is not UTF-8 text"))
                        continue
                if column.null_count:
                    index = pc.index(column.is_null(), True).as_py()
                    found.append((index, name, field_problem(None, types) or ""))
                if name in NOT_BLANK and not pa.types.is_integer(column.type):
                    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), False)
                    if pc.any(blank).as_py():
                        index = pc.index(blank, True).as_py()
                        found.append((index, name, field_problem(column[index].as_py(), types, False) or ""))
                continue
            if pa.types.is_floating(column.type) and declared_plain[name]:
                if column.null_count:
                    found.append((pc.index(column.is_null(), True).as_py(), name, field_problem(None, types) or ""))
                if column.null_count < len(column):
                    found.append(_first_float(column, name))
                continue
            for index, value in enumerate(selected[start : start + batch.num_rows][name]):
                problem = field_problem(value, types, name not in NOT_BLANK)
                if problem is not None:
                    found.append((index, name, problem))
                    break
        if found:
            index, name, problem = min(found)
            raise InputError(f"{path}: record {start + index}: the field {name!r} {problem}")
        start += batch.num_rows


def _first_float(column: Any, name: str) -> tuple[int, str, str]:
    """(index, field, problem) for a column of numbers that Arrow reads as floats: whole numbers and fractions mixed
    (the whole ones read as 1.0), or whole numbers beyond 64 bits. Named at its first fraction, the value the file
    holds; without one at its first value, saying why a whole number reads as a float."""
    import pyarrow.compute as pc

    fraction = pc.fill_null(pc.not_equal(pc.floor(column), column), False)
    if pc.any(fraction).as_py():
        index = pc.index(fraction, True).as_py()
        return index, name, f"is a float ({column[index].as_py()!r}), not text"
    index = pc.index(column.is_valid(), True).as_py()
    return (
        index,
        name,
        f"is a number ({column[index].as_py()!r} as read: the column holds a number beyond 64 bits, or written with a "
        "decimal point), not text",
    )


def _arrow_holds(kind: Any, types: tuple[type, ...]) -> bool:
    """Whether every non-null value of an Arrow column of type `kind` is an instance of one of `types`."""
    import pyarrow as pa

    strings = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    return strings or (int in types and pa.types.is_integer(kind))


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


def _comparable(record: dict[str, Any]) -> str:
    """A record as text that equal records share, NaN included (NaN != NaN, but both are written "NaN")."""
    return json.dumps(record, sort_keys=True, default=repr)


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
    train = records.skip(count)
    if next(iter(train), None) is None:
        raise InputError(f"cannot hold out {count} records for validation: the streamed data has no more than that")
    return train, records.take(count)


class DatasetSource(Source):
    """Training and held-out batches from records (map-style or streamed) through a collator."""

    def __init__(
        self,
        train: Any,
        collate: Callable[[list[dict[str, Any]]], Batch],
        seed: int = 0,
        validation: Any = None,
        metric: str = "accuracy",
        name: str = "the training data",
        first_record: int = 0,
    ) -> None:
        """`name` (e.g. the file) and `first_record` (the position in it of `train`'s first record: the number of
        held-out records `split_validation` took from a stream before it) name a bad streamed record by its place in
        the file."""
        self.train, self.collate, self.seed, self.metric = train, collate, seed, metric
        self.name, self.first_record = name, first_record
        self.validation = list(validation) if validation is not None else None
        self._stream: Iterator[dict[str, Any]] | None = None
        self._position = 0  # streamed records consumed so far
        self._epoch = 0
        self._cached: tuple[int, list[int]] = (-1, [])  # (epoch, its permutation)
        if hasattr(train, "__len__") and len(train) == 0:
            raise InputError("the training data is empty")
        # Records in memory are checked whole now (an encoder's answers against its labels), so that a bad one does
        # not wait for the batch that draws it; streamed records are checked by the batch that reads them.
        check = getattr(collate, "check_records", None)
        if check is not None:
            if hasattr(train, "__len__"):
                check(train, "the training data")
            if self.validation:
                check(self.validation, "the validation data")

    follows_num_segments = False  # records are as long as they are

    @property
    def batches_are_pure(self) -> bool:
        """A streamed file is read in order, so its batch of a step depends on the batches read before it."""
        return hasattr(self.train, "__len__")

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        if hasattr(self.train, "__len__"):
            return self.collate([self.train[i] for i in self._indices(step, batch_size)])
        records = self._streamed(step * batch_size, batch_size)
        try:
            return self.collate(records)
        except InputError:  # the collator names a record by its place in a batch of shuffled records
            self._name_bad_record(records)
            raise

    def _name_bad_record(self, records: list[dict[str, Any]]) -> None:
        """Raise the collator's refusal of the first bad record of a streamed batch, naming the record by its place in
        the file; return where the collator's checks find none (the batch's own error stands then)."""
        check = getattr(self.collate, "check_records", None)
        if check is None:
            return
        for record in records:
            try:
                check([record], self.name)
            except InputError:
                check([record], self.name, positions=[self._file_position(record)])
                raise

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

    def _file_position(self, record: dict[str, Any]) -> str:
        """Where `record` is in the (unshuffled) stream: the first record equal to it (NaN equal to NaN), counted from
        the file's first record. Only for an error message: it reads the stream again, up to that record."""
        key = _comparable(record)
        for index, candidate in enumerate(self.train):
            if _comparable(candidate) == key:
                return str(self.first_record + index)
        return "(its place in the file was not found again)"

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
            except _read_errors() as err:
                raise InputError(  # the file is read ahead of the records handed out (a shuffle buffer)
                    f"cannot read the streamed training data (reading ahead of record {self._position}): {_reason(err)}"
                ) from err
        raise InputError("the streamed training data is empty")
