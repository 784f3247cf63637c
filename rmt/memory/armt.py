"""ARMT: an associative memory in every decoder layer of a Hugging Face causal LM (GPT-2, Llama, Mistral, Qwen2,
GPT-NeoX).

Per segment, the backbone runs on  [segment tokens (t) | memory tokens (M)]:  the M memory tokens are the same
learned embeddings in every segment (their hidden states are not carried). Before each decoder layer l the hidden
states read layer l's memory (A_l [K, D], z_l [K]); after it, the layer's outputs at the memory tokens write it
(rules in `rmt/ops/associative.py`). Tokens come first and attention is causal, so tokens never see the memory tokens:
on a first segment (no read) the token logits are exactly the backbone's. Every segment starts again at position 0.
A sliding window (Mistral's, Qwen2's) must span a whole [segment | memory tokens]: within it the window cuts nothing, so
ARMT runs every layer with plain causal attention; a shorter window is refused (see `check_window`).

The backbone is run one layer at a time through `rmt.backbones.layers.DecoderAdapter` (HF's own modules, no forked
modeling code). The segment loop, padding, truncated BPTT, streaming `forward_backward` and checkpointing are the
shared ones of `RecurrentMemoryModel`; this class only says how one segment is processed.

Memory state (passed in and returned by `step`, never stored on the module), batch first in every leaf:
    (layers, written)
    layers:  tuple over the L decoder layers of (A [B, K, D], z [B, K]), fp32 whatever the model dtype; K = 6 d_mem
    written: [B] bool, False until the sample's first segment has been written. While False the first-segment rules
             apply (no read, vbar = 0, gamma = 1). An explicit flag rather than "z == 0" so the rules are exact and
             per sample even in the degenerate case where every write key is zero.
Padded rows: the shared loop packs each sample's real tokens to the front, and `step` places the memory tokens
right after each row's real tokens (positions len .. len + M - 1), with the padding after them where causal
attention keeps it out of sight, so a padded sample computes what it computes alone (up to float rounding: its
products run at the batch's width).

Generation (`generate`, `stream`: rmt.memory.generation, rmt.memory.stream) cuts prompt + generated tokens into
segments by absolute position, as `forward` does, so decoding continues the open segment: its tokens read the memory
of the segments before it and attend to each other through a key/value cache; its memory write happens when it holds
T tokens. The generated tokens are the argmax of `forward(prompt + generated so far).logits[:, -1]` at every step.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from rmt.backbones import check_fits, hidden_size, kv_shape, sliding_window
from rmt.backbones.layers import DecoderAdapter
from rmt.config import RMTConfig
from rmt.errors import InputError
from rmt.memory.open_cache import OpenCache
from rmt.memory.recurrent import RecurrentMemoryModel, check_config
from rmt.memory.registry import register_model
from rmt.memory.state import State, batch_size_of
from rmt.ops.associative import associative_read, associative_write


def layout_segment(
    tokens: torch.Tensor, memory: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [real tokens | memory | padding] of width t + M from token embeddings tokens [b, t, D] (real tokens first,
    `lengths` [b] of them), memory [M, D]. Returns (embeddings [b, t + M, D], memory positions [b, M])."""
    b, t, dim = tokens.shape
    m = memory.shape[0]
    index = lengths[:, None] + torch.arange(m, device=tokens.device)  # [b, M]
    x = torch.cat([tokens, tokens.new_zeros(b, m, dim)], dim=1)  # [b, t + M, D]
    x = x.scatter(1, index[..., None].expand(b, m, dim), memory.to(x.dtype).expand(b, m, dim))
    return x, index


def check_window(backbone: nn.Module, segment_size: int, memory_tokens: int) -> None:
    """Raise an InputError when a layer's sliding window is shorter than [segment | memory tokens], naming the largest
    segment_size that fits.

    Refused rather than applied: in every layer the memory tokens that write the memory would attend only to the
    segment's last places, and applying windows would take per-layer masks (Qwen2 mixes full and sliding layers) in
    the layer-by-layer run, the diagonal engine's grouped attention and generation's cache. A window that spans the
    segment and its memory tokens cuts nothing (generation's open segment holds fewer places still), so there one
    causal mask for every layer (the layer-by-layer run) and plain causal attention (the diagonal engine) are exactly
    the backbone's own attention."""
    window = sliding_window(backbone)
    places = segment_size + memory_tokens
    if window is None or window >= places:  # place i sees places i - window + 1 .. i
        return
    fitting = window - memory_tokens
    advice = f"lower segment_size to at most {fitting}" if fitting >= 1 else "use fewer memory tokens"
    raise InputError(
        f"ARMT attends within [segment ({segment_size}) | memory tokens ({memory_tokens})] = {places} places, but "
        f"this backbone's sliding window spans {window}: the memory tokens would not attend to the segment's first "
        f"tokens; {advice}, or use a backbone without a sliding window"
    )


@register_model("decoder", "armt")
class ARMTForCausalLM(RecurrentMemoryModel):
    """ARMT around a Hugging Face causal LM of the GPT-2, Llama, Mistral, Qwen2 or GPT-NeoX family.

    Parameters of its own: `memory` [M, D] (the memory token embeddings) and, stacked over the L layers, `w_q`,
    `w_k` [L, d_mem, D], `w_v` [L, D, D] (zero at start, so an untrained ARMT computes what its backbone computes)
    and `w_b` [L, 1, D]. The config's `write_init` and `memory_positions` are RMT options and do not apply."""

    token_logits = True

    def __init__(self, backbone: PreTrainedModel, config: RMTConfig) -> None:
        check_config(config, "ARMTForCausalLM")
        if config.mode != "decoder" or config.memory_kind != "armt":
            raise InputError(
                f"ARMTForCausalLM needs mode='decoder' and memory_kind='armt', got {config.mode!r}, "
                f"{config.memory_kind!r}"
            )
        if config.num_memory_tokens < 1:
            raise InputError("ARMT needs num_memory_tokens >= 1: the memory tokens are what writes the memory")
        if backbone.get_output_embeddings() is None:
            raise InputError(
                f"{type(backbone).__name__} has no LM head: ARMTForCausalLM needs a causal LM such as "
                "AutoModelForCausalLM (e.g. LlamaForCausalLM, not LlamaModel)"
            )
        super().__init__(backbone, config)
        self.adapter = DecoderAdapter(backbone)
        m = config.num_memory_tokens
        check_fits(backbone, config.segment_size, config.segment_size + m, f"[segment | memory tokens ({m})]")
        check_window(backbone, config.segment_size, m)
        layers, dim, d_mem = self.adapter.num_layers, hidden_size(backbone), config.d_mem
        weight = backbone.get_input_embeddings().weight
        factory = {"dtype": weight.dtype, "device": weight.device}
        # Memory tokens scaled like the token embeddings, so they enter the first layer at the usual magnitude.
        std = float(weight.detach().float().std())
        self.memory = nn.Parameter(torch.randn(config.num_memory_tokens, dim, **factory) * std)
        self.w_q = nn.Parameter(torch.randn(layers, d_mem, dim, **factory) * dim**-0.5)
        self.w_k = nn.Parameter(torch.randn(layers, d_mem, dim, **factory) * dim**-0.5)
        self.w_v = nn.Parameter(torch.zeros(layers, dim, dim, **factory))
        self.w_b = nn.Parameter(torch.randn(layers, 1, dim, **factory) * dim**-0.5)

    @property
    def key_size(self) -> int:
        """K, the size of the DPFP keys: 6 * d_mem."""
        return 6 * self.config.d_mem

    def initial_state(self, batch_size: int) -> State:
        device = self.memory.device
        keys, dim = self.key_size, self.memory.shape[1]
        layers = tuple(
            (torch.zeros(batch_size, keys, dim, device=device), torch.zeros(batch_size, keys, device=device))
            for _ in range(self.adapter.num_layers)
        )
        return layers, torch.zeros(batch_size, dtype=torch.bool, device=device)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One segment without the LM head: (last layer's hidden states at the token positions [b, t, D], before the
        final norm; new state). input_ids/attention_mask [b, t], real tokens first."""
        layer_states, written = state
        first = ~written  # [b]
        t = input_ids.shape[1]
        x, memory_index = layout_segment(self.adapter.embed(input_ids), self.memory, attention_mask.sum(dim=1))
        positions = torch.arange(x.shape[1], device=x.device)  # every segment starts at position 0
        h = self.adapter.add_positions(x, positions)  # [b, t + M, D]
        kwargs = self.adapter.layer_kwargs(h, positions)
        gather = memory_index[..., None].expand(-1, -1, h.shape[-1])  # [b, M, D]
        new_states = []
        for layer, (A, z) in enumerate(layer_states):
            h = associative_read(h, A, z, self.w_q[layer], first)
            h = self.adapter.run_layer(layer, h, kwargs)
            memory_out = h.gather(1, gather)  # [b, M, D] the layer's outputs at the memory tokens
            new_states.append(
                associative_write(
                    memory_out,
                    A,
                    z,
                    self.w_k[layer],
                    self.w_v[layer],
                    self.w_b[layer],
                    first,
                    normalize=self.config.armt_write_norm,
                )
            )
        return h[:, :t], (tuple(new_states), torch.ones_like(written))

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.encode(input_ids, attention_mask, state)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head."""
        return self.adapter.head(hidden)

    # --- the open segment of a stream (rmt.memory.stream) ------------------------------------------------------
    def open_cache(self, state: State) -> OpenCache:
        """An open segment starts empty: tokens come first and every segment starts again at position 0."""
        layers, heads, head_dim = kv_shape(self.backbone)
        return OpenCache.empty(batch_size_of(state), layers, heads, head_dim, self.memory.dtype, self.memory.device)

    def extend_cache(
        self, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, state: State, cache: OpenCache
    ) -> torch.Tensor:
        """Hidden states [B, W, D] (before the final norm, as `step` returns them) of input_ids [B, W] at positions
        `positions` [B, W] of their open segments: each layer reads its memory, then runs with the cached keys/values
        of the segment's earlier tokens (`cache` gains theirs). No memory write: it happens when the segment
        closes."""
        layer_states, written = state
        first = ~written
        h = self.adapter.add_positions(self.adapter.embed(input_ids), positions)  # [B, W, D]
        past = cache.as_hf_cache(self.backbone.config)
        mask = torch.cat([cache.valid, torch.ones_like(valid)], dim=1).long()  # as in RMTForCausalLM.extend_cache
        kwargs = self.adapter.cached_layer_kwargs(h, positions, mask, past)
        for layer, (A, z) in enumerate(layer_states):
            h = associative_read(h, A, z, self.w_q[layer], first)
            h = self.adapter.run_layer(layer, h, kwargs)
        cache.append_new(past, valid)
        return h
