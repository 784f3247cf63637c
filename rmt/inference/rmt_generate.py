"""Greedy generation through RMT memory (and the Transformer-XL cache) for `RMTForCausalLM`.

Segmentation is the one `forward` uses: the input, prompt plus generated tokens, is cut into segments of T tokens
from each sample's first token. So:
- the prompt's complete segments before the last prompt token's segment run through the ordinary segment loop;
- the *open* segment (1..T tokens, the one holding the last token) runs as [cache | read memory | tokens] with no
  write slots, and every generated token is appended to it through a key/value cache of that window (one token per
  backbone call), its logits coming from the new token's own position;
- when the open segment holds T tokens and the next token is chosen, the segment is complete: its write slots are
  fed after its T tokens (they attend to the whole segment, as in `step`), their outputs become the memory, its
  tokens enter the Transformer-XL cache, and the new token opens the next segment.
Decoding never continues after write slots (they are the last thing a segment ever sees), so every generated token
is the argmax of `model(prompt + generated so far).logits[:, -1]` (tests check it across segment boundaries).

    out = model.generate(input_ids, max_new_tokens=20)    # or greedy_generate(model, input_ids, 20)
    out.sequences   # [B, P + 20]: the prompt, then the generated tokens
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from rmt.errors import InputError
from rmt.memory.outputs import GenerateOutput
from rmt.memory.rmt import RMTForCausalLM
from rmt.memory.segments import closed_length
from rmt.memory.state import State


@dataclass
class _OpenSegment:
    """The open segment of a group of samples with equal lengths, and the key/value cache of its window."""

    input_ids: torch.Tensor  # [b, t] its tokens so far, 1 <= t <= T
    state: State  # the memory state it reads (of the segments before it)
    cache: DynamicCache  # keys/values of [xl cache | read memory | tokens so far]
    attention_mask: torch.Tensor  # [b, C + M + t]
    next_position: torch.Tensor  # [b, 1] position id of the next token


@torch.no_grad()
def greedy_generate(
    model: RMTForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> GenerateOutput:
    """Greedy decoding of `max_new_tokens` tokens after each prompt row of input_ids [B, P].

    Padded prompts (attention_mask with zeros, on either side) are decoded from their real tokens only, each row as
    if alone; the generated tokens are appended after the row as given (use left padding to keep them adjacent).
    After a row emits `eos_token_id` it receives `pad_token_id` (default: eos_token_id); decoding stops early
    once every row has finished."""
    if not isinstance(model, RMTForCausalLM):
        raise TypeError(f"greedy_generate needs an RMTForCausalLM, got {type(model).__name__}")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InputError(f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise InputError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise InputError("every prompt needs at least one real token (attention_mask row of zeros)")
    pad = eos_token_id if pad_token_id is None else pad_token_id
    was_training = model.training
    model.eval()
    try:
        batch = input_ids.shape[0]
        new_tokens = input_ids.new_full((batch, max_new_tokens), pad if pad is not None else 0)
        scores: torch.Tensor | None = None
        # Rows of equal length share segment boundaries, so they decode together.
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().flatten()
            prompts = torch.stack([input_ids[r][mask[r]] for r in rows.tolist()])  # [b, length]
            tokens, group_scores = _generate_group(model, prompts, max_new_tokens, eos_token_id, pad)
            new_tokens[rows, : tokens.shape[1]] = tokens
            if scores is None:
                scores = group_scores.new_zeros(batch, max_new_tokens, group_scores.shape[-1])
            scores[rows, : tokens.shape[1]] = group_scores
    finally:
        model.train(was_training)
    return GenerateOutput(torch.cat([input_ids, new_tokens], dim=1), scores)


def _generate_group(
    model: RMTForCausalLM, prompts: torch.Tensor, max_new_tokens: int, eos_token_id: int | None, pad: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode prompts [b, P] without padding; returns (tokens [b, n], scores [b, n, V]), n <= max_new_tokens."""
    seg = model.config.segment_size
    b, length = prompts.shape
    closed = closed_length(length, seg)
    state = model(prompts[:, :closed], logits="none").memory_state if closed else model.initial_state(b)
    segment, logits = _open_segment(model, prompts[:, closed:], state)
    finished = torch.zeros(b, dtype=torch.bool, device=prompts.device)
    tokens, scores = [], []
    for i in range(max_new_tokens):
        scores.append(logits)
        token = logits.argmax(dim=-1)  # [b]
        if eos_token_id is not None:
            token = token.masked_fill(finished, pad)
            finished = finished | (token == eos_token_id)
        tokens.append(token)
        if i == max_new_tokens - 1 or bool(finished.all()):
            break
        if segment.input_ids.shape[1] == seg:  # complete: write its memory, the new token opens the next segment
            segment, logits = _open_segment(model, token[:, None], _close_segment(model, segment))
        else:
            logits = _extend(model, segment, token[:, None])
    return torch.stack(tokens, dim=1), torch.stack(scores, dim=1)


def _open_segment(model: RMTForCausalLM, input_ids: torch.Tensor, state: State) -> tuple[_OpenSegment, torch.Tensor]:
    """Run [cache | read memory | tokens] for an open segment; returns it and the last token's logits [b, V]."""
    ones = torch.ones_like(input_ids)
    window = model.segment_window(input_ids, ones, state, write=False)
    cache = window.cache if window.cache is not None else DynamicCache(config=model.backbone.config)
    out = model.backbone.base_model(
        inputs_embeds=window.embeds,
        attention_mask=window.attention_mask,
        position_ids=window.position_ids,
        cache=cache,
        use_cache=True,
    )
    logits = model.backbone.get_output_embeddings()(out.last_hidden_state[:, -1])  # [b, V]
    segment = _OpenSegment(input_ids, state, out.cache, window.attention_mask, window.position_ids[:, -1:] + 1)
    return segment, logits


def _extend(model: RMTForCausalLM, segment: _OpenSegment, token: torch.Tensor) -> torch.Tensor:
    """Append token [b, 1] to the open segment (in place); returns its logits [b, V]."""
    model.check_positions(segment.next_position)
    segment.attention_mask = torch.cat([segment.attention_mask, torch.ones_like(token)], dim=1)
    out = model.backbone.base_model(
        inputs_embeds=model.backbone.get_input_embeddings()(token),
        attention_mask=segment.attention_mask,
        position_ids=segment.next_position,
        cache=segment.cache,
        use_cache=True,
    )
    segment.cache = out.cache
    segment.input_ids = torch.cat([segment.input_ids, token], dim=1)
    segment.next_position = segment.next_position + 1
    return model.backbone.get_output_embeddings()(out.last_hidden_state[:, -1])


def _close_segment(model: RMTForCausalLM, segment: _OpenSegment) -> State:
    """The memory state after a complete open segment: its write slots run after its tokens (continuing the window's
    key/value cache, so they attend to the whole segment exactly as in `step`)."""
    state, ones = segment.state, torch.ones_like(segment.input_ids)
    past = segment.cache
    memory = state[0] if model.cache_tokens else state
    if not model.config.read_memory_only and model.config.num_memory_tokens:
        embeds, positions = model.write_slots(state, ones.sum(dim=1))
        model.check_positions(positions)
        out = model.backbone.base_model(
            inputs_embeds=embeds.to(model.backbone.get_input_embeddings().weight.dtype),
            attention_mask=torch.cat([segment.attention_mask, torch.ones_like(positions)], dim=1),
            position_ids=positions,
            cache=past,
            use_cache=True,
        )
        memory, past = out.last_hidden_state, out.cache  # [b, M, D]
    if not model.cache_tokens:
        return memory
    return (memory, *model.cache_after_segment(state, past, ones))
