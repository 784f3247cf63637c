"""RMT: memory tokens carried from segment to segment, around an unchanged Hugging Face backbone.

Decoder (causal LM), per segment:  inputs_embeds = [read memory (M) | segment tokens (T) | write slots (M)]
    The read slots hold the current memory; the write slots hold the same memory (RMT paper) or a learned
    write embedding. With the plain causal mask, tokens see the read memory and the write slots see everything.
    The new memory is the backbone's last hidden states at the write positions (as they are, or brought to the
    token embeddings' scale: `RMTConfig.memory_write_scale`); logits come from token positions only. Optional
    Transformer-XL cache (`xl_cache_tokens`): every layer also attends to the detached keys/values of the last
    tokens of the previous segment(s), through the `cache` argument (Tr-XL without memory tokens, MemTrXL with
    them; details in `RMTForCausalLM`).
Encoder (sequence classification), per segment:  [CLS] [memory (M)] [SEP] segment [SEP] [PAD...]
    Bidirectional; the new memory is the last hidden states at the memory positions; class logits from the
    backbone's own head on each sample's last segment. The memory enters after the embedding layer, or through it
    (`RMTConfig.encoder_memory_input`, see `RMTForSequenceClassification`).

Everything goes through `inputs_embeds`, `attention_mask`, `position_ids` and `cache` (an HF
`DynamicCache` rebuilt from the state tensors in each step): no forked modeling code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from rmt.backbones import (
    check_family,
    check_fits,
    hidden_size,
    kv_shape,
    layer_windows,
    max_positions,
    sliding_reach,
    sliding_window,
)
from rmt.backbones.layers import layer_keys_values
from rmt.config import RMTConfig
from rmt.errors import InputError
from rmt.memory.open_cache import OpenCache
from rmt.memory.recurrent import RecurrentMemoryModel, check_config
from rmt.memory.registry import register_model
from rmt.memory.segments import SegmentPlan
from rmt.memory.state import State, batch_size_of

# Families whose positions come from a learned table (bounded); the others are rotary (unbounded).
_LEARNED_POSITIONS = ("gpt2",)


def _token_embedding_std(backbone: nn.Module) -> float:
    """Standard deviation of the backbone's token embedding table."""
    return float(backbone.get_input_embeddings().weight.detach().float().std())


def _memory_parameter(backbone: nn.Module, rows: int, std: float | None = None) -> nn.Parameter:
    """A learned [rows, D] memory with standard deviation `std` (default: that of the backbone's token embeddings)."""
    embeddings = backbone.get_input_embeddings().weight
    if std is None:
        std = _token_embedding_std(backbone)
    return nn.Parameter(torch.randn(rows, embeddings.shape[1], dtype=embeddings.dtype) * std)


def _embedding_output_std(backbone: PreTrainedModel) -> float:
    """Standard deviation of an encoder's embedding-layer output (dropout off) over 8 x 64 random token ids.

    The ids come from a generator of their own, so measuring does not move the global random state."""
    embeddings = backbone.base_model.embeddings
    vocab = backbone.get_input_embeddings().weight.shape[0]
    length = min(64, max_positions(backbone) or 64)
    ids = torch.randint(0, vocab, (8, length), generator=torch.Generator().manual_seed(0)).to(backbone.device)
    was_training = embeddings.training
    embeddings.eval()
    try:
        with torch.no_grad():
            output = embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
    finally:
        embeddings.train(was_training)
    return float(output.float().std())


@register_model("decoder", "rmt")
class RMTForCausalLM(RecurrentMemoryModel):
    """RMT memory around any supported Hugging Face causal LM (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX).

    With `config.xl_cache_tokens` = C > 0 every layer also attends to a Transformer-XL cache: the detached
    keys/values of the last C tokens of the previous segment(s), passed to the backbone as its `cache`.
    Segment window:  [cache (C) | read memory (M) | segment tokens (t) | write memory (M)]; in a batch, a row with
    fewer tokens has its padding after its write slots (a sliding-window backbone counts sequence places).
    - The cache holds segment tokens only. Memory slots already reach the next segment as memory; caching them
      too would give each segment a second, stale copy of the memory, and C counts input tokens as `mem_len` does.
    - Positions run on across segments as if the input were laid out in one line [mem | seg 1 | mem | seg 2 ...]:
      a segment starting at position P puts its read slots at P..P+M-1 and its tokens at P+M.., and the next segment
      starts at P+M+t (t: the row's tokens in the segment, padding not counted), so its read slots take the previous
      write slots' positions ('sequential'). With `config.xl_contiguous_positions` the next segment starts at P+t
      instead: its read slots share the positions of the previous segment's last M tokens (of the tokens before
      them, when that segment has fewer than M) and its tokens number on from that segment's last one. Cached keys
      keep the positions they were computed at, so with M = 0 a segment plus its cache computes what one long
      attention window over the same tokens computes. Rotary backbones handle any length; learned absolute
      positions (GPT-2) must cover the whole input (checked, with an error naming the limit).
    - State (a tuple, batch first in every leaf, so the shared loop can select, merge and detach rows):
      (memory [B, M, D], keys [B, L, H, C, d], values [B, L, H, C, d], cache_mask [B, C] bool, next_position [B]).
      Valid cache entries are right-aligned (oldest first); a False mask entry (start of the input, or fewer than C
      tokens seen so far) is masked out of attention, so a first segment sees no cache.
    - With `config.xl_cache_recompute` (the original Transformer-XL) the state also holds the cached tokens' layer
      inputs, hidden [B, L, C, D] (detached), and their position ids [B, C]. A segment's forward pass recomputes the
      cache's keys/values from them with the current weights (`layer_keys_values`: equal to the stored ones), so
      the key/value projections get gradient from the attention to cached tokens. The stored keys/values serve the
      paths that need no gradient (generation, streaming logits).
    Without the cache the state is the memory tensor [B, M, D] alone and every segment starts at position 0.
    """

    token_logits = True

    def __init__(self, backbone: PreTrainedModel, config: RMTConfig) -> None:
        check_config(config, "RMTForCausalLM")
        if config.mode != "decoder" or config.memory_kind != "rmt":
            raise InputError(
                f"RMTForCausalLM needs mode='decoder' and memory_kind='rmt', got {config.mode!r}, "
                f"{config.memory_kind!r}"
            )
        kind = check_family(backbone, "decoder")
        if backbone.get_output_embeddings() is None:
            raise InputError(
                f"{type(backbone).__name__} has no LM head: RMTForCausalLM needs a causal LM such as "
                "AutoModelForCausalLM (e.g. GPT2LMHeadModel, not GPT2Model)"
            )
        super().__init__(backbone, config)
        m = config.num_memory_tokens
        writes = 0 if config.read_memory_only else m
        needed = config.segment_size + m + (writes if config.memory_positions == "sequential" else 0)
        check_fits(backbone, config.segment_size, needed, f"[read memory ({m}) | segment | write memory ({writes})]")
        windows = layer_windows(backbone)  # read once: each reading builds a cache object
        reach = sliding_reach(backbone, windows)
        places = m + config.segment_size + writes
        if writes and reach is not None and m + config.segment_size > reach:
            # The write memory draws on the read memory and the segment only through the layers' windows. The first
            # write slot, m + segment_size places after the first read slot, must reach it: beyond, part of what
            # earlier segments wrote is out of every write slot's reach (all of it when the windows are short).
            fitting = reach - m
            advice = f"use a segment of at most {fitting} tokens" if fitting >= 1 else "use fewer memory tokens"
            raise InputError(
                f"[read memory ({m}) | segment ({config.segment_size}) | write memory ({writes})] spans {places} "
                f"places, but this backbone's sliding windows reach {reach} places back through all its layers: the "
                "write memory could not draw on all of the read memory, so what passes from segment to segment would "
                f"be cut; {advice}, or a backbone without a sliding window"
            )
        window = sliding_window(backbone, windows)
        cached = config.xl_cache_tokens
        held = cached + m + config.segment_size + writes
        if cached and window is not None and window - 1 < held:
            raise InputError(
                f"xl_cache_tokens: the Transformer-XL cache takes every layer's keys of [cache ({cached}) | read "
                f"memory ({m}) | segment ({config.segment_size}) | write memory ({writes})] = {held} places "
                f"from one call, but this backbone's sliding window keeps {window - 1}: use fewer cache tokens or a "
                "shorter segment, or a backbone without a sliding window"
            )
        self.memory = _memory_parameter(backbone, m) if m > 0 else None
        self.write_memory = (
            _memory_parameter(backbone, m) if m > 0 and config.write_init == "learned" and writes else None
        )
        self.memory_write_gain = None
        if m > 0 and writes and config.memory_write_scale == "token_embeddings":
            embeddings = backbone.get_input_embeddings().weight
            std = _token_embedding_std(backbone)
            self.memory_write_gain = nn.Parameter(torch.full((embeddings.shape[1],), std, dtype=embeddings.dtype))
        # With the cache, positions grow with the input: a learned position table bounds the input length.
        self._position_limit = max_positions(backbone) if kind in _LEARNED_POSITIONS else None

    @property
    def cache_tokens(self) -> int:
        return self.config.xl_cache_tokens

    def initial_state(self, batch_size: int) -> State:
        if self.memory is None:
            memory = torch.zeros(batch_size, 0, hidden_size(self.backbone), device=self.device)
        else:
            memory = self.memory.unsqueeze(0).expand(batch_size, -1, -1)  # [B, M, D]
        if not self.cache_tokens:
            return memory
        layers, heads, head_dim = kv_shape(self.backbone)
        dtype = self.backbone.get_input_embeddings().weight.dtype
        keys = torch.zeros(batch_size, layers, heads, self.cache_tokens, head_dim, dtype=dtype, device=self.device)
        cache_mask = torch.zeros(batch_size, self.cache_tokens, dtype=torch.bool, device=self.device)
        next_position = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        state = (memory, keys, torch.zeros_like(keys), cache_mask, next_position)
        if not self.config.xl_cache_recompute:
            return state
        hidden = torch.zeros(
            batch_size, layers, self.cache_tokens, hidden_size(self.backbone), dtype=dtype, device=self.device
        )
        return (*state, hidden, torch.zeros(batch_size, self.cache_tokens, dtype=torch.long, device=self.device))

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        m, t = self.config.num_memory_tokens, input_ids.shape[1]
        writes = 0 if self.config.read_memory_only else m
        window = self.segment_window(input_ids, attention_mask, state, write=True)
        recompute = self.config.xl_cache_recompute
        out = self.backbone.base_model(
            inputs_embeds=window.embeds,
            attention_mask=window.attention_mask,
            position_ids=window.position_ids,
            cache=window.cache,
            use_cache=window.cache is not None,
            output_hidden_states=recompute,
        )
        hidden = out.last_hidden_state  # [b, M + t + writes, D]
        memory = state[0] if self.cache_tokens else state
        if writes:
            index = window.write_index[..., None].expand(-1, -1, hidden.shape[-1])
            new_memory = self.written_memory(hidden.gather(1, index))
        else:
            new_memory = memory
        if not self.cache_tokens:
            return hidden[:, m : m + t], new_memory
        layer_inputs = None
        if recompute:  # hidden_states[l] is layer l's input; the last entry (after the final norm) is not needed
            layer_inputs = torch.stack([h[:, m : m + t] for h in out.hidden_states[:-1]], dim=1)  # [b, L, t, D]
        cache = self.cache_after_segment(
            state, out.cache, attention_mask, layer_inputs, window.position_ids[:, m : m + t]
        )
        return hidden[:, m : m + t], (new_memory, *cache)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_output_embeddings()(hidden)

    def written_memory(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next memory [b, M, D] from the last hidden states at the write slots: as they are, or with
        `memory_write_scale='token_embeddings'` each vector RMS-normalised (in fp32, so bf16 keeps its precision)
        and scaled by the learned per-channel gain."""
        if self.memory_write_gain is None:
            return hidden
        normalised = nn.functional.rms_norm(hidden.float(), (hidden.shape[-1],), eps=1e-6)
        return normalised.to(hidden.dtype) * self.memory_write_gain

    # --- the open segment of a stream (rmt.memory.stream) ------------------------------------------------------
    def open_cache(self, state: State) -> OpenCache:
        """Keys/values of the start of a fresh open segment for `state`'s rows: [Transformer-XL cache | read
        memory], the window `step` puts before the tokens."""
        b = batch_size_of(state)
        m = self.config.num_memory_tokens
        layers, heads, head_dim = kv_shape(self.backbone)
        dtype = self.backbone.get_input_embeddings().weight.dtype
        if m == 0 and not self.cache_tokens:
            return OpenCache.empty(b, layers, heads, head_dim, dtype, self.device)
        if m == 0:  # the Transformer-XL cache alone
            keys, values, cache_mask = state[1:4]
            return OpenCache([keys[:, i] for i in range(layers)], [values[:, i] for i in range(layers)], cache_mask)
        memory = state[0] if self.cache_tokens else state
        start = self._start_positions(state, b, self.device)  # [b, 1]
        mask = torch.ones(b, m, dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.backbone.config)
        if self.cache_tokens:
            keys, values, cache_mask = state[1:4]
            cache = DynamicCache(
                ddp_cache_data=[(keys[:, i], values[:, i]) for i in range(layers)], config=self.backbone.config
            )
            mask = torch.cat([cache_mask.long(), mask], dim=1)
        positions = start + torch.arange(m, device=self.device)
        self.check_positions(positions)
        out = self.backbone.base_model(
            inputs_embeds=memory.to(dtype), attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        return OpenCache(
            [layer.keys for layer in out.cache.layers], [layer.values for layer in out.cache.layers], mask.bool()
        )

    def extend_cache(
        self, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, state: State, cache: OpenCache
    ) -> torch.Tensor:
        """Hidden states [B, W, D] of input_ids [B, W] at token positions `positions` [B, W] of their open segments
        (after `cache`, which gains their keys/values; `valid` marks real tokens)."""
        b = input_ids.shape[0]
        window_positions = self._start_positions(state, b, input_ids.device) + self.config.num_memory_tokens + positions
        self.check_positions(window_positions)
        past = cache.as_hf_cache(self.backbone.config)
        # Padding places count as real for the call, so that no query is left with nothing to attend to; they are
        # marked invalid in the cache afterwards and never seen by a real token (they come after it).
        mask = torch.cat([cache.valid, torch.ones_like(valid)], dim=1).long()
        out = self.backbone.base_model(
            inputs_embeds=self.backbone.get_input_embeddings()(input_ids),
            attention_mask=mask,
            position_ids=window_positions,
            cache=past,
            use_cache=True,
        )
        cache.append_new(out.cache, valid)
        return out.last_hidden_state

    # --- the segment window ---------------------------------------------------------------------------------------
    def segment_window(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: State, write: bool
    ) -> SegmentWindow:
        """The backbone inputs of one segment: [cache | read memory | tokens | write memory (if `write` and the
        config has write slots) | padding]. input_ids/attention_mask [b, t] with real tokens first; the write slots
        follow each row's last real token, so a row's padding comes after them."""
        config = self.config
        b, t = input_ids.shape
        m = config.num_memory_tokens
        writes = m if (write and not config.read_memory_only) else 0
        device = input_ids.device
        memory = state[0] if self.cache_tokens else state
        tokens = self.backbone.get_input_embeddings()(input_ids)  # [b, t, D]
        memory = memory.to(tokens.dtype)
        start = self._start_positions(state, b, device)  # [b, 1]
        token_positions = start + m + torch.arange(t, device=device)  # [b, t]
        read_positions = (start + torch.arange(m, device=device)).expand(b, m)
        embeds = torch.cat([memory, tokens, tokens.new_zeros(b, writes, tokens.shape[-1])], dim=1)  # [b, M+t+w, D]
        mask = torch.cat([attention_mask.new_ones(b, m), attention_mask, attention_mask.new_zeros(b, writes)], dim=1)
        positions = torch.cat([read_positions, token_positions, token_positions.new_zeros(b, writes)], dim=1)
        write_index = None
        if writes:
            # Directly after the real tokens rather than after the padding: a sliding-window backbone counts sequence
            # places, so slots behind a short segment's padding would see fewer of its tokens than the sample alone.
            lengths = attention_mask.sum(dim=1)
            write_embeds, write_positions = self.write_slots(state, lengths)
            write_index = m + lengths[:, None] + torch.arange(writes, device=device)  # [b, writes]
            # In place into the tensors just built (no copy per segment); autograd tracks scatter_ on a cat's output.
            embeds.scatter_(1, write_index[..., None].expand_as(write_embeds), write_embeds.to(tokens.dtype))
            mask.scatter_(1, write_index, 1)
            positions.scatter_(1, write_index, write_positions)

        cache = None
        if self.cache_tokens:
            keys, values, cache_mask = state[1:4]
            if self.config.xl_cache_recompute:  # from the layer inputs, differentiable in the weights
                hidden, cache_positions = state[5:7]
                pairs = [
                    layer_keys_values(self.backbone, layer, hidden[:, layer], cache_positions)
                    for layer in range(hidden.shape[1])
                ]
            else:
                pairs = [(keys[:, layer], values[:, layer]) for layer in range(keys.shape[1])]
            cache = DynamicCache(ddp_cache_data=pairs, config=self.backbone.config)
            mask = torch.cat([cache_mask.to(mask.dtype), mask], dim=1)  # [b, C + M + t + writes]
            self.check_positions(positions)
        return SegmentWindow(embeds, mask, positions, cache, write_index)

    def write_slots(self, state: State, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [b, M, D] and position ids [b, M] of the write slots of a segment with `lengths` [b] real
        tokens (they follow each row's last real token: `segment_window` places them there, before its padding)."""
        m = self.config.num_memory_tokens
        memory = state[0] if self.cache_tokens else state
        b, device = memory.shape[0], memory.device
        embeds = memory if self.write_memory is None else self.write_memory.unsqueeze(0).expand(b, -1, -1)
        start = self._start_positions(state, b, device)  # [b, 1]
        slots = torch.arange(m, device=device)
        if self.config.memory_positions == "sequential":
            # Write slots follow each sample's last real token, exactly as if the segment had no padding.
            positions = start + m + lengths[:, None] + slots
        else:
            positions = (start + slots).expand(b, m)
        return embeds, positions

    def _start_positions(self, state: State, batch: int, device: torch.device) -> torch.Tensor:
        """Position [b, 1] of the segment's first read slot: 0 without the cache, else where the last one ended."""
        if self.cache_tokens:
            return state[4][:, None]
        return torch.zeros(batch, 1, dtype=torch.long, device=device)

    def cache_after_segment(
        self,
        state: State,
        past: Cache,
        attention_mask: torch.Tensor,
        layer_inputs: torch.Tensor | None = None,
        token_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The cache part of the state after a segment: (keys, values, cache_mask, next_position) holding the last C
        valid tokens of [old cache | this segment's tokens], detached. `past` is the HF cache the backbone returned
        for the segment's window (with or without write slots after the tokens); attention_mask [b, t]. With
        `xl_cache_recompute` also (hidden, cache_positions) of the same tokens, from layer_inputs [b, L, t, D] (each
        layer's input at the segment's tokens) and token_positions [b, t]."""
        keys, values, cache_mask, next_position = state[1:5]
        c, m, t = self.cache_tokens, self.config.num_memory_tokens, attention_mask.shape[1]
        new_keys, new_values = [], []
        for layer in past.layers:
            if layer.keys.shape[2] not in (c + m + t, c + 2 * m + t):
                raise NotImplementedError(
                    "xl_cache_tokens needs full-attention cache layers; this backbone trims its cache (sliding window)"
                )
            new_keys.append(layer.keys[:, :, c + m : c + m + t])  # [b, H, t, d]
            new_values.append(layer.values[:, :, c + m : c + m + t])
        keys = torch.cat([keys, torch.stack(new_keys, dim=1).detach()], dim=3)  # [b, L, H, C + t, d]
        values = torch.cat([values, torch.stack(new_values, dim=1).detach()], dim=3)
        valid = torch.cat([cache_mask, attention_mask.bool()], dim=1)  # [b, C + t]
        # Valid entries to the right in order (stable sort), then keep the newest C: at most C tokens, oldest first.
        keep = torch.sort(valid.to(torch.int8), dim=1, stable=True).indices[:, -c:]  # [b, C]
        index = keep[:, None, None, :, None].expand(-1, keys.shape[1], keys.shape[2], -1, keys.shape[4])
        lengths = attention_mask.sum(dim=1)  # [b]
        cache = (
            keys.gather(3, index),
            values.gather(3, index),
            valid.gather(1, keep),
            next_position + self._advance(lengths),
        )
        if layer_inputs is None:
            return cache
        hidden = torch.cat([state[5], layer_inputs.detach()], dim=2)  # [b, L, C + t, D]
        hidden = hidden.gather(2, keep[:, None, :, None].expand(-1, hidden.shape[1], -1, hidden.shape[3]))
        positions = torch.cat([state[6], token_positions], dim=1).gather(1, keep)
        return (*cache, hidden, positions)

    def check_planned_input(self, plan: SegmentPlan) -> None:
        """Refuse, before any segment is read, an input whose positions (numbered across segments with the cache)
        run past a learned position table, naming how many the whole input needs read from a fresh memory (a memory
        state carried over from an earlier call starts further on: `check_positions` refuses that segment)."""
        if not self.cache_tokens or self._position_limit is None:
            return
        needed = int(self._positions_needed(plan.lengths, plan.num_segments).max())
        if needed > self._position_limit:
            raise InputError(
                f"the Transformer-XL cache numbers positions across segments, and this input of "
                f"{int(plan.lengths.max())} tokens needs {needed} positions, but the backbone "
                f"({self.backbone.config.model_type}, learned absolute positions) embeds at most "
                f"{self._position_limit}: shorten the input, build the backbone with at least {needed} positions, or "
                "use a rotary backbone (llama, mistral, qwen2, gpt_neox)"
            )

    def _positions_needed(self, lengths: torch.Tensor, num_segments: torch.Tensor) -> torch.Tensor:
        """Positions [B] that rows of `lengths` real tokens in `num_segments` segments take from a fresh memory: every
        segment but the last advances the next one's start by its tokens (and its M read slots, unless
        xl_contiguous_positions); the last one spans its read slots, its tokens and its write slots (when they
        follow the tokens)."""
        m = self.config.num_memory_tokens
        before = (num_segments - 1).clamp(min=0)  # segments before the last, each of segment_size tokens
        last = lengths - before * self.config.segment_size  # tokens of the last segment
        writes = m if not self.config.read_memory_only and self.config.memory_positions == "sequential" else 0
        return before * self._advance(self.config.segment_size) + m + last + writes

    def _advance(self, lengths: torch.Tensor | int) -> torch.Tensor | int:
        """How far a segment of `lengths` real tokens moves the next segment's first position: its tokens, and its M
        read slots unless xl_contiguous_positions."""
        return lengths if self.config.xl_contiguous_positions else self.config.num_memory_tokens + lengths

    def check_positions(self, positions: torch.Tensor) -> None:
        """Raise an InputError when position ids run past a learned position table (they grow with the cache)."""
        if self._position_limit is not None and int(positions.max()) >= self._position_limit:
            raise InputError(
                f"the Transformer-XL cache numbers positions across segments (and across calls that carry the memory "
                f"state on) and this input reaches position {int(positions.max())}, but the backbone "
                f"({self.backbone.config.model_type}, learned absolute positions) embeds at most "
                f"{self._position_limit}: shorten the input, build the backbone with more positions, or use a rotary "
                "backbone (llama, mistral, qwen2, gpt_neox)"
            )


@dataclass
class SegmentWindow:
    """Backbone inputs of one decoder segment (see `RMTForCausalLM.segment_window`)."""

    embeds: torch.Tensor  # [b, M + t + writes, D]
    attention_mask: torch.Tensor  # [b, C + M + t + writes] (C = 0 without the cache)
    position_ids: torch.Tensor  # [b, M + t + writes]
    cache: DynamicCache | None  # the Transformer-XL cache as an HF cache object, None without it
    write_index: torch.Tensor | None  # [b, writes]: where each row's write slots are in embeds; None without them


@register_model("encoder", "rmt")
class RMTForSequenceClassification(RecurrentMemoryModel):
    """RMT memory around a Hugging Face encoder for sequence classification (BERT, RoBERTa).

    Where the memory enters is `config.encoder_memory_input`. By default ('after_embeddings') the memory vectors go
    into the encoder's first layer directly: they replace the embedding layer's output at the memory positions,
    instead of being summed with position and token-type embeddings and renormalised by the embedding LayerNorm as
    token embeddings are (the memory is made of hidden states, not token embeddings). With 'embedding_layer' they
    replace the word embeddings and take that path like tokens. The initial memory is scaled like the token
    embeddings or like the embedding layer's output (`config.encoder_memory_init`). Learning to use the memory at
    all is the hard part for an encoder: a plateau that some runs leave after hundreds of steps and others not
    within the budget, for every way of feeding it (benchmarks/results/encoder_memory-cpu.json,
    `python -m benchmarks.encoder_memory`); BABILong on MiniLM is in benchmarks/results/babilong/."""

    token_logits = False

    def __init__(self, backbone: PreTrainedModel, config: RMTConfig) -> None:
        check_config(config, "RMTForSequenceClassification")
        if config.mode != "encoder" or config.memory_kind != "rmt":
            raise InputError(
                f"RMTForSequenceClassification needs mode='encoder' and memory_kind='rmt', got "
                f"{config.mode!r}, {config.memory_kind!r}"
            )
        kind = check_family(backbone, "encoder")
        if not type(backbone).__name__.endswith("ForSequenceClassification"):
            raise InputError(
                f"{type(backbone).__name__} is not a sequence classifier: RMTForSequenceClassification needs one such "
                "as AutoModelForSequenceClassification (e.g. BertForSequenceClassification, not BertModel)"
            )
        labels, problem = backbone.config.num_labels, getattr(backbone.config, "problem_type", None)
        if labels < 2 or problem not in (None, "single_label_classification"):  # the loss is a softmax over classes
            raise InputError(
                f"the classifier has {labels} label(s) and problem_type {problem!r}: RMTForSequenceClassification "
                "answers with one of at least 2 classes (single-label classification)"
            )
        super().__init__(backbone, config)
        m = config.num_memory_tokens
        self.prefix_length = 1 + m + 1 if m > 0 else 1  # [CLS] [memory] [SEP]  or just [CLS]
        check_fits(
            backbone,
            config.segment_size,
            self.prefix_length + config.segment_size + 1,
            f"[CLS][memory ({m})][SEP] segment [SEP]",
        )
        hf = backbone.config
        family_cls, family_sep = (hf.bos_token_id, hf.eos_token_id) if kind == "roberta" else (101, 102)
        self.cls_token_id = _first_set(config.cls_token_id, getattr(hf, "cls_token_id", None), family_cls)
        self.sep_token_id = _first_set(config.sep_token_id, getattr(hf, "sep_token_id", None), family_sep)
        vocab = backbone.get_input_embeddings().weight.shape[0]
        for name, value in (("cls_token_id", self.cls_token_id), ("sep_token_id", self.sep_token_id)):
            if value is None or not 0 <= value < vocab:
                raise InputError(
                    f"the encoder's {name} is {value}, outside its vocabulary of {vocab} ids: set RMTConfig.{name} "
                    "to the id of that special token in your tokenizer (e.g. tokenizer.cls_token_id)"
                )
        self.pad_token_id = hf.pad_token_id if hf.pad_token_id is not None else 0
        self.memory = None
        if m > 0:
            std = _embedding_output_std(backbone) if config.encoder_memory_init == "embedding_output" else None
            self.memory = _memory_parameter(backbone, m, std)

    def check_planned_input(self, plan: SegmentPlan) -> None:
        """Refuse input that already holds the special tokens the encoder adds around every segment (a tokenizer's
        default, add_special_tokens=True): read as text, they changed the answer silently."""
        last = plan.input_ids.gather(1, (plan.lengths - 1).clamp(min=0)[:, None])[:, 0]
        self.refuse_special_tokens_around(plan.input_ids[:, 0], last, plan.lengths)

    def refuse_special_tokens_around(self, first: torch.Tensor, last: torch.Tensor, lengths: torch.Tensor) -> None:
        """Raise an InputError when a sample's first token [B] is the [CLS] id and its last [B] the [SEP] id (and it
        has more than one): its tokenizer added them, and the encoder adds its own around every segment."""
        wrapped = (lengths >= 2) & (first == self.cls_token_id) & (last == self.sep_token_id)
        if bool(wrapped.any()):
            row = int(wrapped.nonzero()[0])
            raise InputError(
                f"input_ids row {row} starts with the [CLS] id ({self.cls_token_id}) and ends with the [SEP] id "
                f"({self.sep_token_id}), which the encoder adds around every segment itself: tokenize with "
                "add_special_tokens=False"
            )

    def initial_state(self, batch_size: int) -> torch.Tensor:
        if self.memory is None:
            return torch.zeros(batch_size, 0, hidden_size(self.backbone), device=self.device)
        return self.memory.unsqueeze(0).expand(batch_size, -1, -1)  # [B, M, D]

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = input_ids.shape
        m = self.config.num_memory_tokens
        p = self.prefix_length
        device = input_ids.device
        lengths = attention_mask.sum(dim=1)  # [b]
        ids = torch.full((b, p + t + 1), self.pad_token_id, dtype=input_ids.dtype, device=device)
        ids[:, 0] = self.cls_token_id
        if m > 0:
            ids[:, p - 1] = self.sep_token_id
        ids[:, p : p + t] = input_ids.masked_fill(attention_mask == 0, self.pad_token_id)
        ids.scatter_(1, (p + lengths)[:, None], self.sep_token_id)  # [SEP] right after each row's last token
        mask = (torch.arange(p + t + 1, device=device)[None, :] <= (p + lengths)[:, None]).long()

        inputs = {"attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "output_hidden_states": True}
        if m > 0 and self.config.encoder_memory_input == "embedding_layer":
            words = self.backbone.get_input_embeddings()(ids)
            out = self.backbone(inputs_embeds=_at_memory_positions(words, state), **inputs)
        else:
            out = self._forward_with_memory_after_embeddings(ids, inputs, state)
        new_state = out.hidden_states[-1][:, 1 : 1 + m]  # [b, M, D]
        return out.logits, new_state

    def _forward_with_memory_after_embeddings(
        self, ids: torch.Tensor, inputs: dict, state: torch.Tensor
    ) -> SequenceClassifierOutput:
        """The backbone's forward with the embedding layer's output at the memory positions replaced by `state`."""

        def insert_memory(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            return _at_memory_positions(output, state)

        memory_on = self.config.memory_enabled
        hook = self.backbone.base_model.embeddings.register_forward_hook(insert_memory) if memory_on else None
        try:
            return self.backbone(input_ids=ids, **inputs)
        finally:
            if hook is not None:
                hook.remove()


def _at_memory_positions(embeddings: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """`embeddings` [b, 1 + M + ..., D] with positions 1..M (after [CLS]) replaced by the memory `state` [b, M, D]."""
    return torch.cat([embeddings[:, :1], state.to(embeddings.dtype), embeddings[:, 1 + state.shape[1] :]], dim=1)


def _first_set(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)
