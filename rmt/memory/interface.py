"""`MemoryModel`: what the pieces around a memory model (stream, generation, checkpoint and memory files) use of it.

`RecurrentMemoryModel` (rmt.memory.recurrent) implements it; the other modules of rmt.memory are written against this
protocol, so they depend on the model's behaviour, not on its module.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from rmt.config import RMTConfig
from rmt.memory.open_cache import OpenCache
from rmt.memory.state import State


class MemoryModel(Protocol):
    """A Hugging Face backbone with a memory carried across segments (see RecurrentMemoryModel)."""

    config: RMTConfig
    backbone: nn.Module
    token_logits: bool  # True: causal LM (hidden states per token); False: classifier (logits per segment)
    training: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def vocab_size(self) -> int: ...

    def initial_state(self, batch_size: int) -> State: ...

    def start_state(self, batch_size: int, memory_state: State | None) -> State: ...

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]: ...

    def head(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def open_cache(self, state: State) -> OpenCache: ...

    def extend_cache(
        self, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, state: State, cache: OpenCache
    ) -> torch.Tensor: ...

    def memory_state_dict(self) -> dict[str, torch.Tensor]: ...

    def eval(self) -> nn.Module: ...

    def train(self, mode: bool = True) -> nn.Module: ...
