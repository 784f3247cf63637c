"""The LM head runs only where something is scored, so that a long input never builds a [B, N, V] logits tensor:
with answer-only labels the loss runs it on the scored positions alone, and generation after a long prompt runs it
on one row per sample at a time (the prompt's last token, then each new token), for the model and for the diagonal
engine. Results do not show it (a [B, N, V] tensor gives the same loss and tokens): a hook on the backbone's output
embeddings counts the rows the head gets."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import VOCAB, strengthen_memory, tiny_decoder

from rmt import RMTConfig, RMTForCausalLM
from rmt.memory.armt import ARMTForCausalLM

IGNORE = -100


@contextmanager
def head_rows(model) -> Iterator[list[int]]:
    """The number of rows (positions of all samples) the LM head gets at each call, while the block runs."""
    calls: list[int] = []

    def record(module, args, output):
        calls.append(math.prod(args[0].shape[:-1]))

    handle = model.backbone.get_output_embeddings().register_forward_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "armt":
        config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=8, d_mem=4)
        return strengthen_memory(ARMTForCausalLM(tiny_decoder("llama"), config).eval())
    return RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=2, segment_size=8)).eval()


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_answer_only_labels_run_the_head_on_the_scored_positions_only(kind):
    """Labels on the last 3 tokens of one sample and the last 11 of the other (across a segment boundary) of 40:
    3 + 11 positions predict a label, and the head gets those 14 rows in all, in the reference forward and in the
    streaming forward_backward, never a segment's [b, t] positions."""
    model = _model(kind)
    ids = _ids(2, 40)
    labels = torch.full_like(ids, IGNORE)
    labels[0, -3:], labels[1, -11:] = ids[0, -3:], ids[1, -11:]
    scored = 3 + 11
    with head_rows(model) as calls:
        out = model(ids, labels=labels, logits="none")
    assert out.logits is None and sum(calls) == scored
    with head_rows(model) as calls:
        model.forward_backward(ids, labels=labels)
    assert sum(calls) == scored
    with head_rows(model) as calls:  # the last position's logits only
        out = model(ids, logits="last")
    assert out.logits.shape == (2, VOCAB) and calls == [2]


@pytest.mark.parametrize("engine", ["model", "diagonal"])
def test_generating_after_a_long_prompt_runs_the_head_on_one_row_per_sample(engine):
    """A prompt of 6 segments (the first row left-padded) and 5 new tokens: every head call gets at most one row per
    sample, however the prompt is read (the stream, or the diagonal engine's prefill and then the stream)."""
    from rmt.inference import DiagonalARMT

    model = _model("armt")
    ids = _ids(2, 48, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    generator = DiagonalARMT(model, group_size=None) if engine == "diagonal" else model
    with head_rows(model) as calls:
        out = generator.generate(ids, mask, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 48 + 5)
    assert calls and max(calls) <= 2, calls
