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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rmt.data.batch import Batch
from rmt.data.tasks import IGNORE_INDEX
from rmt.errors import InputError

QA_FIELDS = ("input", "question", "target")
TEXT_FIELDS = ("text",)


def qa_prompt(context: str, question: str) -> str:
    """The text a causal LM reads before it answers: the context, then the question and an answer cue."""
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table (a tokenizer of another model)."""
    if len(tokenizer) > vocab_size:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab_size}: the tokenizer belongs "
            "to another model"
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
        self.pad_id = _pad_id(tokenizer)

    def __call__(self, records: Sequence[dict[str, Any]]) -> Batch:
        for record in records:
            missing = [f for f in QA_FIELDS if f not in record]
            if missing:
                raise InputError(f"a question-answering record lacks the field(s) {missing}: it has {sorted(record)}")
        if self.mode == "encoder":
            texts = [f"{r['input']} {r['question']}" for r in records]
            ids = self._tokenize(texts)
            classes = torch.tensor([self.label_of(r["target"]) for r in records], dtype=torch.long)
            return pad_batch(ids, classes, self.pad_id)
        prompts = self.prompt_ids(records)
        answers = self._tokenize([" " + str(r["target"]).strip() for r in records])
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        sequences = [p + a + eos for p, a in zip(prompts, answers, strict=True)]
        labels = [[IGNORE_INDEX] * len(p) + a + eos for p, a in zip(prompts, answers, strict=True)]
        return pad_batch(sequences, labels, self.pad_id)

    def prompt_ids(self, records: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Token ids a causal LM reads before it answers (context, question, answer cue)."""
        return self._tokenize([qa_prompt(r["input"], r["question"]) for r in records])

    def label_of(self, target: str) -> int:
        """Index of an answer in the label set (case-insensitive)."""
        key = str(target).strip().lower()
        if key not in self.label_index:
            raise InputError(f"answer {target!r} is not in the label set {self.labels}")
        return self.label_index[key]

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

    def __call__(self, records: Sequence[dict[str, Any]]) -> Batch:
        for record in records:
            if "text" not in record:
                raise InputError(f"a text record lacks the field 'text': it has {sorted(record)}")
        ids = self.tokenizer([r["text"] for r in records], add_special_tokens=False, verbose=False)["input_ids"]
        if self.tokenizer.eos_token_id is not None:
            ids = [seq + [self.tokenizer.eos_token_id] for seq in ids]
        if self.max_length is not None:
            ids = [seq[: self.max_length] for seq in ids]
        if any(len(seq) < 2 for seq in ids):
            raise InputError("a text record has fewer than 2 tokens: nothing to predict")
        return pad_batch(ids, ids, self.pad_id)


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0
