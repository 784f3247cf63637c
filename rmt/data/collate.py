"""From text records to model batches: tokenization, answer labels and padding.

Two record shapes, with the field names of the BABILong benchmark and of language-modelling data sets:
- question answering: {"input": context, "question": ..., "target": answer}
- plain text: {"text": ...}

`QACollator` builds, for a causal LM, `prompt(input, question)` followed by " " + target and the EOS token, with
labels on the answer tokens only (the model learns to generate the answer); for an encoder (classifier), the context
and question as one token sequence (the memory model adds [CLS]/[SEP] around each segment) and the index of the
target in the label set. `TextCollator` tokenizes documents for language modelling (labels on every token).
Samples keep their own lengths: a batch is right-padded and the attention mask marks the padding, which the memory
models ignore.

A field that is missing, None (Hugging Face datasets' value for a key a record lacks, or an empty CSV cell) or not
text is refused with an InputError naming the record and the field, never read as the text "None". An encoder's
answers outside its label set are refused by `QACollator.check_records` for data in memory (before training) and by
the batch that draws them for streamed data.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rmt.data.batch import Batch
from rmt.data.tasks import IGNORE_INDEX
from rmt.errors import InputError

QA_FIELDS = ("input", "question", "target")
TEXT_FIELDS = ("text",)
# The values a field may hold. An integer answer (a CSV column of numbers) is read as its digits; None (a missing key
# or an empty cell), floats (a number column with a gap: 2 -> "2.0"), lists and objects are refused, never turned into
# text such as "None".
QA_TYPES: tuple[type, ...] = (str, int)
TEXT_TYPES: tuple[type, ...] = (str,)
# Fields that must hold more than white space: an answer to learn, a text to predict (a context or question may be
# empty: the other one then holds the task).
NOT_BLANK = ("target", "text")
# Models pad their embedding table beyond their tokenizer by a few percent at most (Qwen2.5's table has 0.2% more
# rows than its tokenizer has tokens, Phi-2's 1.8%); a tokenizer that covers less than this share is most likely
# another model's (MiniLM's 30,522 tokens are 62% of SmolLM2's 49,152 rows).
FEWEST_TOKENS_USED = 0.9


def qa_prompt(context: str, question: str) -> str:
    """The text a causal LM reads before it answers: the context, then the question and an answer cue."""
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table (a tokenizer of another model), and warn
    about one that leaves much of the table unused, as a smaller tokenizer of another model does: its ids fit, so
    training runs, but every id names another token than the model learnt."""
    if len(tokenizer) > vocab_size:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab_size}: the tokenizer belongs "
            "to another model"
        )
    if len(tokenizer) < FEWEST_TOKENS_USED * vocab_size:
        warnings.warn(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds {vocab_size}: is it this model's "
            "tokenizer? (a model's own tokenizer leaves a few percent of its table unused at most)",
            stacklevel=2,
        )


def pad_batch(sequences: Sequence[list[int]], labels: Sequence[list[int]] | torch.Tensor, pad_id: int) -> Batch:
    """Right-pad token lists into a Batch; labels are token lists (padded with -100) or a [B] tensor of classes."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    if isinstance(labels, torch.Tensor):
        return Batch(ids, mask, labels)
    label_ids = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(labels):
        label_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return Batch(ids, mask, label_ids)


class QACollator:
    """Question-answering records -> Batch, for a causal LM (`mode="decoder"`) or a classifier (`mode="encoder"`,
    whose classes are `labels`)."""

    def __init__(self, tokenizer: Any, mode: str, labels: Sequence[str] | None = None) -> None:
        if mode not in ("decoder", "encoder"):
            raise InputError(f"mode must be 'decoder' or 'encoder', got {mode!r}")
        if mode == "encoder" and not labels:
            raise InputError("an encoder answers with a class: give the label set (the possible answers)")
        self.tokenizer, self.mode = tokenizer, mode
        self.labels = list(labels) if labels else None
        self.label_index = {label.lower(): i for i, label in enumerate(self.labels or [])}
        if len(self.label_index) < len(self.labels or []):  # answers are matched without regard to case
            raise InputError(f"the labels {self.labels} name a class twice when case is ignored")
        self.pad_id = _pad_id(tokenizer)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        records = [as_record(record) for record in records]
        for position, record in enumerate(records):
            try:
                check_qa_record(record, f"question-answering record {position} of the batch")
            except InputError as err:  # a batch's place says little in a shuffled (or streamed) file: its text more
                raise InputError(f"{err}; {_text_to_find(record)}") from None
        if self.mode == "encoder":
            texts = [f"{r['input']} {r['question']}" for r in records]
            ids = self._tokenize(texts)
            for position, record in enumerate(records):
                if self.answer_key(record["target"]) not in self.label_index:
                    raise InputError(
                        f"question-answering record {position} of the batch {_excerpt(record)}: "
                        f"{self._outside(record['target'])}"
                    )
            classes = torch.tensor([self.label_of(r["target"]) for r in records], dtype=torch.long)
            return pad_batch(ids, classes, self.pad_id)
        prompts = self.prompt_ids(records)
        answers = self._tokenize([" " + str(r["target"]).strip() for r in records])
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        sequences = [p + a + eos for p, a in zip(prompts, answers, strict=True)]
        labels = [[IGNORE_INDEX] * len(p) + a + eos for p, a in zip(prompts, answers, strict=True)]
        return pad_batch(sequences, labels, self.pad_id)

    def check_records(
        self, records: Sequence[Mapping[str, Any]], name: str = "data", positions: Sequence[Any] | None = None
    ) -> None:
        """Check every record's answer before training, so that a bad one is found now rather than when a batch
        draws it (maybe hours in): an encoder's answers must be in the label set. Raises an InputError naming the
        first offending record (its position in `records`, or in `positions` where given: its place in a file) and
        its answer. `records`: a list of dicts, whose fields are checked too (the held-out records of a streamed
        file), or a map-style `datasets.Dataset`, of which only the target column is read
        (`rmt.data.files.load_records` checked its fields)."""
        if not hasattr(records, "column_names"):
            records = [as_record(record) for record in records]
            for position, record in enumerate(records):
                check_qa_record(record, f"{name}: record {_position(position, positions)}")
        if self.mode != "encoder":
            return
        # A Dataset gives its target column without decoding the (long) contexts.
        if hasattr(records, "column_names"):
            if "target" not in records.column_names:
                return  # a batch names the missing field when it is drawn
            targets = records["target"]
        else:
            targets = [r.get("target") for r in records]
        for position, target in enumerate(targets):
            if target is None or self.answer_key(target) not in self.label_index:
                record, where = records[position], f"{name}: record {_position(position, positions)}"
                check_qa_record(record, where)
                raise InputError(f"{where} {_excerpt(record)}: {self._outside(target)}")

    def prompt_ids(self, records: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Token ids a causal LM reads before it answers (context, question, answer cue)."""
        return self._tokenize([qa_prompt(r["input"], r["question"]) for r in records])

    def label_of(self, target: str) -> int:
        """Index of an answer in the label set (case-insensitive)."""
        key = self.answer_key(target)
        if key not in self.label_index:
            raise InputError(self._outside(target))
        return self.label_index[key]

    @staticmethod
    def answer_key(target: Any) -> str:
        """How an answer is matched to a label: its text, stripped and lower-cased."""
        return str(target).strip().lower()

    def _outside(self, target: Any) -> str:
        return f"the answer {target!r} is not in the label set {self.labels} (the classes the encoder answers with)"

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


class TextCollator:
    """Documents -> Batch for language modelling: every token is a label; documents longer than `max_length` tokens
    are cut to their first `max_length` (None: kept whole)."""

    def __init__(self, tokenizer: Any, max_length: int | None = None) -> None:
        if max_length is not None and max_length < 2:
            raise InputError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = _pad_id(tokenizer)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        records = [as_record(record) for record in records]
        for position, record in enumerate(records):
            _check_field(record, "text", f"text record {position} of the batch", TEXT_TYPES)
        ids = self.tokenizer([r["text"] for r in records], add_special_tokens=False, verbose=False)["input_ids"]
        if self.tokenizer.eos_token_id is not None:
            ids = [seq + [self.tokenizer.eos_token_id] for seq in ids]
        if self.max_length is not None:
            ids = [seq[: self.max_length] for seq in ids]
        for position, (record, seq) in enumerate(zip(records, ids, strict=True)):
            if len(seq) < 2:
                raise InputError(
                    f"text record {position} of the batch ({_shorten(record['text'])}) has {len(seq)} token(s), "
                    "fewer than 2: nothing to predict"
                )
        return pad_batch(ids, ids, self.pad_id)

    def check_records(
        self, records: Sequence[Mapping[str, Any]], name: str = "data", positions: Sequence[Any] | None = None
    ) -> None:
        """Check the text field of every record of a list (the held-out records of a streamed file) before training,
        naming the first bad one (by its position in `records`, or in `positions` where given); a map-style
        `datasets.Dataset` was checked by `rmt.data.files.load_records`."""
        if not hasattr(records, "column_names"):
            for position, record in enumerate(records):
                where = f"{name}: record {_position(position, positions)}"
                _check_field(as_record(record), "text", where, TEXT_TYPES)


def as_record(record: Any) -> Mapping[str, Any]:
    """A record as the mapping of its fields that the collators read: a dict as it is, a BABILong sample
    (`rmt.data.babilong.BabilongSample`, what `build_dataset` returns) as its `to_dict()`."""
    if isinstance(record, Mapping):
        return record
    if callable(getattr(record, "to_dict", None)):
        return record.to_dict()
    raise InputError(f"a record must be a dict of its fields, got a {type(record).__name__}: {_shorten(record)}")


def check_qa_record(record: Mapping[str, Any], where: str) -> None:
    """Refuse a question-answering record whose input, question or target is missing, None or not text; `where`
    names the record in the message (e.g. "train.jsonl: record 12")."""
    for name in QA_FIELDS:
        _check_field(record, name, where, QA_TYPES)


def field_problem(value: Any, types: tuple[type, ...], blank_allowed: bool = True) -> str | None:
    """Why a field's value cannot be read as text (None if it can). A bool is an int to Python, but not an answer.
    blank_allowed=False: white space alone is refused too (`NOT_BLANK` fields)."""
    if value is None:
        # Hugging Face datasets give None for a key a record lacks and for an empty CSV cell.
        return "is empty (a missing key, null, or an empty CSV cell)"
    if isinstance(value, bool) or not isinstance(value, types):
        return f"is a {type(value).__name__} ({_shorten(value)}), not text"
    if not blank_allowed and isinstance(value, str) and not value.strip():
        return f"is blank ({_shorten(value)}): nothing to learn"
    return None


def _check_field(record: Mapping[str, Any], name: str, where: str, types: tuple[type, ...]) -> None:
    if name not in record:
        raise InputError(f"{where} lacks the field {name!r}: it has {sorted(record)}")
    problem = field_problem(record[name], types, name not in NOT_BLANK)
    if problem is not None:
        raise InputError(f"{where}: the field {name!r} {problem}")


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _excerpt(record: Mapping[str, Any]) -> str:
    """A record's question, to find it by: the index alone may not locate it (records are split and shuffled)."""
    return f"(question {_shorten(record.get('question'))})"


def _position(index: int, positions: Sequence[Any] | None) -> Any:
    """How a record is named: its index in the list checked, or the position given for it."""
    return index if positions is None else positions[index]


def _text_to_find(record: Mapping[str, Any]) -> str:
    """The start of a record's question, or of its input when the question is no text, to find the record by."""
    for name in ("question", "input"):
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return f"the record's {name}: {_shorten(value)}"
    return "the record has no question or input text"


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0
