"""Row-wise operations on a memory state.

A memory state is a tensor or an arbitrarily nested tuple/list of tensors whose first dimension is the batch
(RMT: one [B, M, D] tensor; ARMT: per layer (A [B, K, D], z [B, K])). The segment loop needs to pick rows
(samples still active in a segment), write rows back, and detach rows (truncated BPTT); these helpers do that
for any such structure without the loop knowing its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

State = Any  # torch.Tensor | tuple/list of State


def tree_map(fn: Callable[..., torch.Tensor], state: State, *others: State) -> State:
    """Apply `fn` leaf-wise to one or more states of the same structure."""
    if isinstance(state, torch.Tensor):
        return fn(state, *others)
    if isinstance(state, (tuple, list)):
        return type(state)(tree_map(fn, s, *(o[i] for o in others)) for i, s in enumerate(state))
    raise TypeError(f"memory state leaves must be tensors, got {type(state).__name__}")


def select_rows(state: State, rows: torch.Tensor | None) -> State:
    """Rows `rows` of every leaf (None = all rows, returned as is)."""
    if rows is None:
        return state
    return tree_map(lambda t: t.index_select(0, rows), state)


def merge_rows(state: State, rows: torch.Tensor | None, new: State) -> State:
    """`state` with rows `rows` replaced by `new` (out of place, differentiable)."""
    if rows is None:
        return new
    return tree_map(lambda t, n: t.index_copy(0, rows, n.to(t.dtype)), state, new)


def detach_rows(state: State, detach_mask: torch.Tensor) -> State:
    """Detach the rows where `detach_mask` [B] is True; other rows keep their graph."""
    if not bool(detach_mask.any()):
        return state
    if bool(detach_mask.all()):
        return detach(state)

    def _detach(t: torch.Tensor) -> torch.Tensor:
        mask = detach_mask.view(-1, *([1] * (t.dim() - 1)))
        return torch.where(mask, t.detach(), t)

    return tree_map(_detach, state)


def detach(state: State) -> State:
    return tree_map(lambda t: t.detach(), state)


def batch_size_of(state: State) -> int:
    while not isinstance(state, torch.Tensor):
        state = state[0]
    return state.shape[0]
