"""Generation for every memory model (RMT, Tr-XL, MemTrXL, ARMT; the diagonal engine too), in Hugging Face terms.

    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)                   # greedy
    out = model.generate(input_ids, max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9)
    out.sequences    # [B, P + 20]: each prompt row as given, then its new tokens (pad_token_id after EOS)

The input is read by a `MemoryStream` (rmt.memory.stream), so decoding continues the segment that holds the prompt's
last token, exactly as `forward` segments prompt + generated tokens: every new token costs one position through the
layers (the open segment's keys/values are cached), plus a re-run of the segment when it fills and its memory is
written. Under greedy decoding the tokens are the argmax of `forward(prompt + generated so far).logits[:, -1]` (tests).

Prompts of different lengths decode together in one loop: pad them (left or right) and pass `attention_mask`; each
row is read from its own first real token, as if alone. Sampling and its settings go through transformers'
`GenerationConfig` and logits processors (temperature, top-k, top-p, repetition penalty, or your own
`logits_processor`); greedy decoding is `do_sample=False` (the default).

`prefill(closed_ids, closed_mask, memory_state)` lets an engine compute the memory of the prompt's complete segments
its own way (the diagonal engine does); the rest of the prompt and decoding then go through the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rmt.errors import InputError
from rmt.memory.interface import MemoryModel
from rmt.memory.outputs import GenerateOutput
from rmt.memory.segments import closed_length, validate_attention_mask, validate_input_ids
from rmt.memory.state import State, merge_rows, select_rows
from rmt.memory.stream import MemoryStream

Prefill = Callable[[torch.Tensor, torch.Tensor, State | None], State]


@torch.no_grad()
def generate(
    model: MemoryModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    logits_processor: LogitsProcessorList | None = None,
    memory_state: State | None = None,
    output_scores: bool = False,
    prefill: Prefill | None = None,
    **kwargs: Any,
) -> GenerateOutput:
    """Generate after each prompt row of input_ids [B, P]. `kwargs` set GenerationConfig fields (max_new_tokens,
    do_sample, temperature, top_k, top_p, repetition_penalty, eos_token_id, pad_token_id); `memory_state` continues
    from earlier input (e.g. a document's memory loaded from a file). `output_scores` keeps the processed logits each
    token was chosen from ([B, N, V] in GenerateOutput.scores)."""
    if not model.token_logits:
        raise InputError(f"{type(model).__name__} is a classifier: it does not generate")
    config = _generation_config(model, generation_config, kwargs)
    validate_input_ids(input_ids, model.vocab_size)
    mask = validate_attention_mask(attention_mask, input_ids).to(model.device)
    input_ids = input_ids.to(model.device)
    batch = input_ids.shape[0]
    processors = _processors(config, logits_processor)
    eos = _token_set(config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else (min(eos) if eos else 0)

    was_training = model.training
    model.eval()
    try:
        stream = _read_prompt(model, input_ids, mask, memory_state, prefill)
        logits = stream.last_logits()
        sequences = input_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=model.device)
        chosen, scores = [], []
        for step in range(config.max_new_tokens):
            scores_now = processors(sequences, logits.float()) if processors else logits.float()
            if config.do_sample:
                token = torch.multinomial(torch.softmax(scores_now, dim=-1), 1).squeeze(1)
            else:
                token = scores_now.argmax(dim=-1)
            token = token.masked_fill(finished, pad)
            if output_scores:
                scores.append(scores_now)
            chosen.append(token)
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            if eos:
                finished |= torch.isin(token, torch.tensor(sorted(eos), device=token.device))
            if bool(finished.all()) or step == config.max_new_tokens - 1:
                break
            logits = stream.feed(token[:, None], (~finished).long()[:, None], logits="last")
    finally:
        model.train(was_training)
    new = torch.stack(chosen, dim=1)
    if new.shape[1] < config.max_new_tokens:  # every row finished early
        new = torch.cat([new, new.new_full((batch, config.max_new_tokens - new.shape[1]), pad)], dim=1)
    stacked = torch.stack(scores, dim=1) if output_scores else None
    return GenerateOutput(torch.cat([input_ids, new], dim=1), stacked)


def _read_prompt(
    model: MemoryModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    memory_state: State | None,
    prefill: Prefill | None,
) -> Any:
    """A stream that has read every prompt row (the complete segments through `prefill` when given)."""
    batch = input_ids.shape[0]
    if prefill is None:
        stream = MemoryStream(model, batch, memory_state)
        stream.feed(input_ids, mask)
        return stream
    lengths = mask.sum(dim=1)
    order = torch.sort((mask == 0).to(torch.int8), dim=1, stable=True).indices
    packed = input_ids.gather(1, order)  # each row's real tokens first
    closed = torch.tensor([closed_length(int(n), model.config.segment_size) for n in lengths], device=mask.device)
    state = model.start_state(batch, memory_state)
    rows = (closed > 0).nonzero().flatten()
    if rows.numel():
        width = int(closed.max())
        closed_mask = (torch.arange(width, device=mask.device)[None, :] < closed[rows, None]).long()
        start = None if memory_state is None else select_rows(memory_state, rows)
        state = merge_rows(state, rows, prefill(packed[rows, :width], closed_mask, start))
    stream = MemoryStream(model, batch, state)
    offsets = torch.arange(int((lengths - closed).max()), device=mask.device)
    open_ids = packed.gather(1, (closed[:, None] + offsets).clamp(max=packed.shape[1] - 1))
    stream.feed(open_ids, (offsets[None, :] < (lengths - closed)[:, None]).long())
    return stream


def _generation_config(
    model: MemoryModel, config: GenerationConfig | None, overrides: dict[str, Any]
) -> GenerationConfig:
    base = config or getattr(model.backbone, "generation_config", None) or GenerationConfig()
    try:
        config = GenerationConfig(**{**base.to_dict(), **overrides})
    except ValueError as err:  # transformers validates its settings
        raise InputError(f"bad generation settings: {err}") from err
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    return config


def _processors(config: GenerationConfig, extra: LogitsProcessorList | None) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    try:  # the processors validate their settings (e.g. temperature > 0, 0 < top_p <= 1)
        if config.repetition_penalty not in (None, 1.0):
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.do_sample:
            if config.temperature not in (None, 1.0):
                processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p not in (None, 1.0):
                processors.append(TopPLogitsWarper(config.top_p))
    except ValueError as err:
        raise InputError(f"bad generation settings: {err}") from err
    if extra:
        processors.extend(extra)
    return processors


def _token_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)
