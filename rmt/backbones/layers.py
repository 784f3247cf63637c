"""Layer-by-layer access to Hugging Face causal LMs (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX) for models that act
between layers.

ARMT reads its associative memory before every decoder layer and writes it after; the diagonal engine runs different
layers of different segments as one grouped computation. Both need the backbone taken apart: token embeddings,
positions (a learned table or rotary), the decoder layers, the final norm and the LM head.

- `DecoderAdapter` gives those parts as HF's own modules and runs each HF decoder layer as it is (no forked modeling
  code, no patching): the sequential ARMT path, trainable. Every layer gets one causal mask over all places: a
  sliding window (Mistral's, Qwen2's) is not applied, so a caller must keep its inputs within the window (ARMT refuses
  a window shorter than its [segment | memory tokens]; within it the window cuts nothing).
- `StackedLayers` is the diagonal engine's copy of the decoder layers: each weight of the L layers stacked once into
  one [L, out, in] tensor, so any contiguous range of layers runs as batched matmuls over the group on a GPU, and
  as each layer's own product on a CPU, where it must round as the layer itself does (inference only: no dropout, no
  gradients). One class covers the families with a few switches (RMSNorm or LayerNorm, rotary or not, parallel
  residual, gated MLP); fused projections are re-laid out at stacking time so that every family's attention input is
  [q | k | v] along the output dimension. Mistral and Qwen2 have Llama's decoder layer (RMSNorm, rotary on the whole
  head, gated MLP, grouped-query attention, a head size that may differ from hidden / heads) but for their
  projections' biases (Qwen2: on q, k and v; Llama: optional on every projection; Mistral: none), which the stacked
  weights carry wherever the layer has them, and their sliding windows (see above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_causal_mask

from rmt.backbones import model_type
from rmt.backbones.lora import has_lora_layers
from rmt.errors import InputError
from rmt.ops.grouped import grouped_layer_norm, grouped_linear


@dataclass(frozen=True)
class _Family:
    layers: str  # attribute of the base model holding the decoder layers
    final_norm: str
    position_table: str | None  # learned absolute positions, added to the embeddings
    embed_dropout: str | None
    rotary: str | None
    cache_argument: str  # the decoder layer's keyword for the key/value cache


# Families whose decoder layer is Llama's (input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
# mlp.{gate,up,down}_proj with act_fn), up to biases and sliding windows
_LLAMA_LIKE = ("llama", "mistral", "qwen2")
_FAMILIES: dict[str, _Family] = {
    "gpt2": _Family("h", "ln_f", "wpe", "drop", None, "cache"),
    **dict.fromkeys(_LLAMA_LIKE, _Family("layers", "norm", None, None, "rotary_emb", "cache")),
    "gpt_neox": _Family("layers", "final_layer_norm", None, "emb_dropout", "rotary_emb", "layer_past"),
}
LAYERWISE_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


class DecoderAdapter:
    """The parts of a HF causal LM, to run it one decoder layer at a time.

    Holds references to the backbone's modules (it is not itself a module, so nothing is registered twice); moving
    the backbone to another device or dtype in place keeps them valid."""

    def __init__(self, backbone: nn.Module) -> None:
        kind = model_type(backbone)
        if kind not in _FAMILIES:
            raise InputError(
                f"model family {kind!r} cannot be run layer by layer (needed by ARMT); supported: {sorted(_FAMILIES)}"
            )
        if getattr(backbone.config, "add_cross_attention", False):
            raise InputError("backbones with cross-attention are not supported by ARMT")
        family = _FAMILIES[kind]
        base = backbone.base_model
        self.family = kind
        self.config = backbone.config
        self.embed_tokens: nn.Module = backbone.get_input_embeddings()
        self.layers: nn.ModuleList = getattr(base, family.layers)
        self.final_norm: nn.Module = getattr(base, family.final_norm)
        self.lm_head: nn.Module = backbone.get_output_embeddings()
        self.position_table: nn.Module | None = getattr(base, family.position_table) if family.position_table else None
        self.embed_dropout: nn.Module | None = getattr(base, family.embed_dropout) if family.embed_dropout else None
        self.rotary: nn.Module | None = getattr(base, family.rotary) if family.rotary else None
        self.cache_argument = family.cache_argument

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [..., T, D] (no positions)."""
        return self.embed_tokens(input_ids)

    def add_positions(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """What the family does to the input embeddings x [..., T, D] at positions [T]: the learned position table
        (GPT-2), then embedding dropout."""
        if self.position_table is not None:
            x = x + self.position_table(positions)
        if self.embed_dropout is not None:
            x = self.embed_dropout(x)
        return x

    def rotary_table(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) [T, rotary_dim] at positions [T] in x's dtype, from the backbone's own rotary module."""
        if self.rotary is None:
            return None
        cos, sin = self.rotary(x, positions[None])
        return cos[0], sin[0]

    def layer_kwargs(self, x: torch.Tensor, positions: torch.Tensor) -> dict:
        """Keyword arguments of every HF decoder layer call for inputs x [B, T, D] at positions [T], causal."""
        position_ids = positions[None]  # [1, T]
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=x,
            attention_mask=None,
            cache=None,
            position_ids=position_ids,
        )
        if self.rotary is None:
            return {"attention_mask": mask}
        cos, sin = self.rotary(x, position_ids)
        return {"attention_mask": mask, "position_embeddings": (cos, sin), "position_ids": position_ids}

    def cached_layer_kwargs(
        self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, cache: object
    ) -> dict:
        """Keyword arguments of every HF decoder layer call for new inputs x [B, n, D] at position_ids [B, n] after the
        entries already in `cache` (an HF Cache the layers extend); attention_mask [B, cache length + n], 1 = visible,
        causal."""
        mask = create_causal_mask(
            config=self.config, inputs_embeds=x, attention_mask=attention_mask, cache=cache, position_ids=position_ids
        )
        kwargs = {"attention_mask": mask, self.cache_argument: cache, "use_cache": True}
        if self.rotary is not None:
            kwargs.update(position_embeddings=self.rotary(x, position_ids), position_ids=position_ids)
        return kwargs

    def run_layer(self, index: int, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return self.layers[index](x, **kwargs)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: [..., D] -> logits [..., V]."""
        return self.lm_head(self.final_norm(x))


# Per-layer tensors of each family, in a common layout: nn.Linear's [out, in] (GPT-2's Conv1D weights, stored
# [in, out] for y = x W + b, are transposed) and the attention input projection stacked as [q | k | v] along `out`
# (applied as one product where the family fuses it, GPT-2 and GPT-NeoX, and as three for Llama, Mistral and Qwen2).
# A gated MLP keeps gate and up apart: slicing a fused output would feed the activation strided views (slower on CPU).
def _llama_tensors(layer: nn.Module) -> dict[str, torch.Tensor | None]:
    """Llama's layer, and Mistral's and Qwen2's, which have its modules: a projection's bias is None where the layer
    has none (Qwen2's o_proj, every one of Mistral's)."""
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "norm1_w": layer.input_layernorm.weight,
        "norm1_b": None,
        "qkv_w": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
        "qkv_b": _cat(attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias),
        "out_w": attn.o_proj.weight,
        "out_b": attn.o_proj.bias,
        "norm2_w": layer.post_attention_layernorm.weight,
        "norm2_b": None,
        "gate_w": mlp.gate_proj.weight,
        "gate_b": mlp.gate_proj.bias,
        "up_w": mlp.up_proj.weight,
        "up_b": mlp.up_proj.bias,
        "down_w": mlp.down_proj.weight,
        "down_b": mlp.down_proj.bias,
    }


def _gpt2_tensors(layer: nn.Module) -> dict[str, torch.Tensor | None]:
    attn, mlp = layer.attn, layer.mlp
    return {
        "norm1_w": layer.ln_1.weight,
        "norm1_b": layer.ln_1.bias,
        "qkv_w": attn.c_attn.weight.t(),
        "qkv_b": attn.c_attn.bias,
        "out_w": attn.c_proj.weight.t(),
        "out_b": attn.c_proj.bias,
        "norm2_w": layer.ln_2.weight,
        "norm2_b": layer.ln_2.bias,
        "up_w": mlp.c_fc.weight.t(),
        "up_b": mlp.c_fc.bias,
        "down_w": mlp.c_proj.weight.t(),
        "down_b": mlp.c_proj.bias,
    }


def _neox_tensors(layer: nn.Module) -> dict[str, torch.Tensor | None]:
    attn, mlp = layer.attention, layer.mlp
    heads = attn.config.num_attention_heads

    def regroup(t: torch.Tensor | None) -> torch.Tensor | None:
        # The fused projection's rows are per head [h][q|k|v][head_dim]; regroup them as [q|k|v][h][head_dim].
        if t is None:
            return None
        return t.reshape(heads, 3, attn.head_size, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    return {
        "norm1_w": layer.input_layernorm.weight,
        "norm1_b": layer.input_layernorm.bias,
        "qkv_w": regroup(attn.query_key_value.weight),
        "qkv_b": regroup(attn.query_key_value.bias),
        "out_w": attn.dense.weight,
        "out_b": attn.dense.bias,
        "norm2_w": layer.post_attention_layernorm.weight,
        "norm2_b": layer.post_attention_layernorm.bias,
        "up_w": mlp.dense_h_to_4h.weight,
        "up_b": mlp.dense_h_to_4h.bias,
        "down_w": mlp.dense_4h_to_h.weight,
        "down_b": mlp.dense_4h_to_h.bias,
    }


def _cat(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


_TENSORS = {**dict.fromkeys(_LLAMA_LIKE, _llama_tensors), "gpt2": _gpt2_tensors, "gpt_neox": _neox_tensors}

# On CPU the group's MLP runs a few layers at a time, so that their intermediates fit this budget: one [G, B * c, 4D]
# intermediate for the whole group falls out of cache and made the grouped MLP ~1.8x slower than per-layer calls
# (1 core). The slices are of layers, never of rows: a matmul over fewer rows may take another kernel and round
# differently from the model's own layer, which made grouped bf16 cells drift from sequential ARMT.
_CPU_MLP_BYTES = 16 * 2**20


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The layers' tensors stacked into one [L, ...] tensor. Weights read transposed (GPT-2's Conv1D keeps [in, out])
    are stacked in their own layout and transposed back as a view: each layer's product is then the BLAS call the
    layer makes itself, where a contiguous [out, in] copy takes another kernel for a few rows and rounds otherwise."""
    if all(t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous() for t in tensors):
        return torch.stack([t.t() for t in tensors]).transpose(1, 2)
    return torch.stack(tensors).contiguous()


class StackedLayers:
    """The decoder layers of a backbone with every weight stacked over layers, for grouped execution.

    `forward(h, lo, hi, ...)` runs layers lo..hi-1 on h [hi - lo, B, c, D] (row g goes through layer lo + g) as one
    computation: projections are `rmt.ops.grouped.grouped_linear` over the stacked weights' slice [lo:hi] (a view, no
    copy; one batched matmul on a GPU, each layer's `F.linear` on a CPU), LayerNorms `grouped_layer_norm` by the same
    rule, attention uses the G * B rows as its batch.
    On a CPU the result equals the HF layers' bit for bit (tested). Weights are copied at construction (so they take
    twice the memory of the backbone's layers) in the backbone's dtype and on its device: build it after moving the
    model."""

    def __init__(self, adapter: DecoderAdapter) -> None:
        config, layers = adapter.config, list(adapter.layers)
        family = adapter.family
        if family not in _TENSORS:
            raise InputError(f"no stacked layers for model family {family!r}")
        if any(has_lora_layers(layer) for layer in layers):  # stacking reads the base weights, not the adapters
            raise InputError(
                "the decoder layers have LoRA adapters, which grouped cells would ignore; merge them first "
                "(rmt.backbones.lora.merge_lora)"
            )
        per_layer = [_TENSORS[family](layer) for layer in layers]
        self.weights: dict[str, torch.Tensor | None] = {
            name: None if first is None else _stack([t[name].detach() for t in per_layer])
            for name, first in per_layer[0].items()
        }  # name -> [L, ...]
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        if family in _LLAMA_LIKE:
            attn, self.act = layers[0].self_attn, layers[0].mlp.act_fn
            self.head_dim, self.rotary_dim, self.eps = attn.head_dim, attn.head_dim, config.rms_norm_eps
            self.scales = [layer.self_attn.scaling for layer in layers]
        elif family == "gpt2":
            self.act = layers[0].mlp.act
            self.head_dim, self.rotary_dim, self.eps = config.hidden_size // self.heads, 0, config.layer_norm_epsilon
            self.scales = [layer.attn.scaling for layer in layers]  # may depend on the layer index
        else:
            attn, self.act = layers[0].attention, layers[0].mlp.act
            self.head_dim, self.rotary_dim, self.eps = attn.head_size, attn.rotary_ndims, config.layer_norm_eps
            self.scales = [layer.attention.scaling for layer in layers]
        self.rms_norm = family in _LLAMA_LIKE
        self.gated_mlp = family in _LLAMA_LIKE
        self.fused_qkv = family not in _LLAMA_LIKE
        self.parallel_residual = family == "gpt_neox" and config.use_parallel_residual

    def forward(
        self,
        h: torch.Tensor,
        lo: int,
        hi: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Layers lo..hi-1 on h [G, B, c, D] (G = hi - lo): G * B self-contained sequences of c positions each,
        attending causally. rope: (cos, sin) [c, rotary_dim] at the positions (None for learned positions).
        Returns the output [G, B, c, D]."""
        group, batch, c, dim = h.shape
        w = {name: None if t is None else t[lo:hi] for name, t in self.weights.items()}  # this group's layers
        flat = h.reshape(group, batch * c, dim)  # [G, N, D]: position-wise parts see tokens as rows
        normed = self._norm(flat, w["norm1_w"], w["norm1_b"])
        sizes = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        if self.fused_qkv:  # [G, N, (H + 2 KV) hd], as the family's own fused projection
            parts = grouped_linear(normed, w["qkv_w"], w["qkv_b"]).split(sizes, dim=-1)
        else:  # Llama's layer projects q, k and v apart; one product of their summed width may round differently
            biases = [None] * 3 if w["qkv_b"] is None else w["qkv_b"].split(sizes, dim=1)
            weights = w["qkv_w"].split(sizes, dim=1)
            parts = [grouped_linear(normed, weight, bias) for weight, bias in zip(weights, biases, strict=True)]
        q, k, v = (t.reshape(group * batch, c, -1, self.head_dim).transpose(1, 2) for t in parts)
        if rope is not None:
            q, k = _rotate(q, *rope, self.rotary_dim), _rotate(k, *rope, self.rotary_dim)
        attn = self._attention(q, k, v, self.scales[lo:hi], batch)  # [G B, H, c, hd]
        attn = attn.transpose(1, 2).reshape(group, batch * c, self.heads * self.head_dim)
        attn = grouped_linear(attn, w["out_w"], w["out_b"])  # [G, N, D]
        if self.parallel_residual:  # summed in HF's order, (mlp + attn) + h, for bit-equal results
            out = self._mlp(self._norm(flat, w["norm2_w"], w["norm2_b"]), w) + attn + flat
        else:
            flat = flat + attn
            out = flat + self._mlp(self._norm(flat, w["norm2_w"], w["norm2_b"]), w)
        return out.reshape(group, batch, c, dim)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [G, N, D] through each layer's own norm (weight [G, D])."""
        w = weight[:, None, :]
        if self.rms_norm:  # as HF's LlamaRMSNorm (Mistral's, Qwen2's): normalise in fp32, scale in the model dtype
            x32 = x.float()
            x32 = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
            return w * x32.to(x.dtype)
        return grouped_layer_norm(x, weight, bias, self.eps)

    def _mlp(self, x: torch.Tensor, w: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """x [G, N, D] -> [G, N, D]; on CPU a few layers at a time, so that their [g, N, 4D] intermediates stay in
        cache (at least one layer, with all its rows)."""
        group = x.shape[0]
        if x.device.type == "cpu":
            width = w["up_w"].shape[1] * (2 if self.gated_mlp else 1)  # intermediate values per row
            group = max(1, _CPU_MLP_BYTES // (x.shape[1] * width * x.element_size()))
        if group >= x.shape[0]:
            return self._mlp_layers(x, w)
        return torch.cat(
            [
                self._mlp_layers(
                    x[g : g + group], {name: None if t is None else t[g : g + group] for name, t in w.items()}
                )
                for g in range(0, x.shape[0], group)
            ]
        )

    def _mlp_layers(self, x: torch.Tensor, w: dict[str, torch.Tensor | None]) -> torch.Tensor:
        up = grouped_linear(x, w["up_w"], w["up_b"])
        if self.gated_mlp:
            up = self.act(grouped_linear(x, w["gate_w"], w["gate_b"])) * up
        else:
            up = self.act(up)
        return grouped_linear(up, w["down_w"], w["down_b"])

    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales: list[float], batch: int
    ) -> torch.Tensor:
        if self.kv_heads != self.heads:  # grouped-query attention: query head i uses key/value head i // repeats
            repeats = self.heads // self.kv_heads
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        causal = q.shape[2] > 1

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

        if len(set(scales)) == 1:
            return attend(q, k, v, scales[0])
        # Per-layer scales (GPT-2's scale_attn_by_inverse_layer_idx): one call per layer with its own scale, as the
        # layer itself applies it (scaling the queries instead rounds differently).
        rows = [slice(g * batch, (g + 1) * batch) for g in range(len(scales))]
        return torch.cat([attend(q[r], k[r], v[r], scale) for r, scale in zip(rows, scales, strict=True)])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotary embedding of the first rotary_dim channels of x [N, heads, c, hd] (HF's rotate-half convention)."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    out = rot * cos + rotated * sin
    return out if rest.shape[-1] == 0 else torch.cat([out, rest], dim=-1)


def layer_keys_values(
    backbone: nn.Module, index: int, hidden: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, kv_heads, T, head_dim] that decoder layer `index` computes from its input hidden states
    hidden [B, T, D] at position_ids [B, T]: the layer's own input norm and key/value projections, then rotary
    positions. The values equal what the layer stores in its HF cache, and they are differentiable in the layer's
    weights (the original Transformer-XL recomputes a cached segment's keys/values this way)."""
    kind = model_type(backbone)
    base = backbone.base_model
    batch, length, _ = hidden.shape
    if kind == "gpt2":  # learned positions are already in the hidden states
        layer = base.h[index]
        attn = layer.attn
        _, keys, values = attn.c_attn(layer.ln_1(hidden)).split(attn.split_size, dim=2)
        shape = (batch, length, -1, attn.head_dim)
        return keys.view(shape).transpose(1, 2), values.view(shape).transpose(1, 2)
    if kind == "gpt_neox":  # fused projection, rows per head [q | k | v]; rotary on the first rotary_ndims channels
        layer = base.layers[index]
        attn = layer.attention
        qkv = attn.query_key_value(layer.input_layernorm(hidden))
        _, keys, values = qkv.view(batch, length, -1, 3 * attn.head_size).transpose(1, 2).chunk(3, dim=-1)
        rotary_dim = attn.rotary_ndims
    elif kind in _LLAMA_LIKE:
        layer = base.layers[index]
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden)
        keys = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        values = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        rotary_dim = attn.head_dim
    else:
        raise InputError(f"cannot recompute the keys/values of model family {kind!r}")
    cos, sin = base.rotary_emb(hidden, position_ids)  # [B, T, rotary_dim]
    return _rotate(keys, cos[:, None], sin[:, None], rotary_dim), values
