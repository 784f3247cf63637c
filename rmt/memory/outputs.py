"""Output types of the memory models: a whole input (`RMTOutput`), one segment (`SegmentOutput`), generation
(`GenerateOutput`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import ModelOutput

from rmt.memory.state import State


@dataclass
class SegmentOutput:
    """What one segment step produced (returned when `output_segments=True`). A decoder's logits are in segment
    order: position j of segment k is each row's (k * segment_size + j)-th real token, counted from its first real
    token (a left-padded row's padding is not in any segment); a row's places past its last real token are no
    token's and their logits mean nothing."""

    rows: torch.Tensor  # [b] indices of the samples active in this segment
    logits: torch.Tensor  # decoder: [b, t, V] (segment order, see above); encoder: [b, num_labels]
    memory_state: State  # state of the whole batch after this segment


@dataclass
class RMTOutput(ModelOutput):
    """Output of a memory model over a whole input.

    loss: combined loss (None without labels). logits: decoder [B, N, V] at the input's own positions (padding
    positions hold zeros), [B, V] at each sample's last token with `logits="last"`, [B, K, V] at asked positions, or
    None with `logits="none"`; encoder [B, num_labels] from each sample's last segment. memory_state: state after each
    sample's last segment (pass it back in to continue). segment_outputs: per-segment outputs if asked.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    memory_state: State | None = None
    segment_outputs: list[SegmentOutput] | None = None


@dataclass
class GenerateOutput(GenerateDecoderOnlyOutput):
    """What `generate(..., return_dict_in_generate=True)` returns (without it: the sequences alone, a tensor):
    transformers' own output of a decoder's generate, so its tools take it (`compute_transition_scores`).
    sequences [B, P + N]: each prompt row followed by its N generated tokens (pad_token_id after EOS);
    scores, with `output_scores=True`: a tuple of N tensors [B, V], one per decoding step, the processed logits each
    step's token was chosen from (`torch.stack(out.scores, dim=1)` is [B, N, V]). The other fields (logits,
    attentions, hidden_states, past_key_values) stay None. As every Hugging Face ModelOutput: `out.sequences`,
    `out["sequences"]` and `out[0]` are the same."""
