"""Row-wise operations on a memory state.

A memory state is a tensor or a nested tuple/list of tensors whose first dimension is the batch (RMT: one [B, M, D]
tensor; ARMT: per layer (A [B, K, D], z [B, K]) and a [B] flag). The segment loop needs to pick rows (samples still
active in a segment), write rows back, and detach rows (truncated BPTT); these helpers do that for any such structure
without the loop knowing its shape (leaf-wise through torch's pytree utilities).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from rmt.errors import InputError

State = Any  # torch.Tensor | tuple/list of State

tree_map = pytree.tree_map


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
    return pytree.tree_leaves(state)[0].shape[0]


def check_state(state: State, reference: State) -> None:
    """Raise an InputError unless `state` has the structure and per-sample shapes of `reference` (a model's
    `initial_state`) and one number of samples in all its parts, so that a memory state from another model or
    configuration, or pieced together from several, is refused with a clear message."""
    leaves, spec = pytree.tree_flatten(state)
    ref_leaves, ref_spec = pytree.tree_flatten(reference)
    if spec != ref_spec or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise InputError(
            f"memory_state does not have this model's structure (given: {_layout(state)}; this model's: "
            f"{_layout(reference)}): was it made by another model or configuration?"
        )
    rows = sorted({leaf.shape[0] for leaf in leaves})
    if len(rows) > 1:  # batch_size_of reads the first part: one row there would stand for all
        raise InputError(f"memory_state's parts hold different numbers of samples ({rows}): not one state")
    for index, (leaf, ref) in enumerate(zip(leaves, ref_leaves, strict=True)):
        if leaf.shape[1:] != ref.shape[1:]:
            raise InputError(
                f"memory_state leaf {index} has per-sample shape {tuple(leaf.shape[1:])}, this model's is "
                f"{tuple(ref.shape[1:])} (e.g. [memory tokens, hidden size]): was it made by another model or "
                "configuration?"
            )


def _layout(state: object) -> str:
    """A state's nesting in words: "tensor", "tuple of 2: tensor, list of 3 tensors", "dict {memory: tensor}"."""
    if isinstance(state, torch.Tensor):
        return "tensor"
    if isinstance(state, dict):
        return "dict {" + ", ".join(f"{key}: {_layout(value)}" for key, value in state.items()) + "}"
    if isinstance(state, (list, tuple)):
        kind = type(state).__name__
        parts = [_layout(item) for item in state]
        if not parts:
            return f"empty {kind}"
        if set(parts) == {"tensor"}:
            return f"{kind} of {len(parts)} tensor{'s' if len(parts) > 1 else ''}"
        return f"{kind} of {len(parts)}: " + ", ".join(parts)
    return type(state).__name__
