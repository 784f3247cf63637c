"""Which Hugging Face model families the memory wrappers support, and the few facts they need about each.

The wrappers use only public HF interfaces (`inputs_embeds`, `attention_mask`, `position_ids`, the base model and
the output embeddings), so a family is supported when those behave as in its siblings; the tests check that
with memory off the wrapper reproduces the backbone's own logits. Anything outside the lists below is refused
with a clear error rather than run with silently wrong positions or heads.
"""

from __future__ import annotations

from torch import nn

from rmt.errors import InputError

# model_type -> family notes; decoders must accept explicit position_ids and expose base_model + lm head.
DECODER_FAMILIES: dict[str, str] = {
    "gpt2": "learned absolute positions (n_positions)",
    "llama": "rotary positions",
    "mistral": "rotary positions",
    "qwen2": "rotary positions",
    "gpt_neox": "rotary positions",
}
ENCODER_FAMILIES: dict[str, str] = {
    "bert": "learned absolute positions",
    "roberta": "learned absolute positions (offset by padding_idx + 1)",
}


def model_type(backbone: nn.Module) -> str:
    from transformers import PreTrainedModel

    if hasattr(backbone, "peft_config") and not isinstance(backbone, PreTrainedModel):
        # A PeftModel (or peft's tuner) passes itself off as the model it wraps (config, attributes), but its
        # base_model is not the transformer's: the first forward failed deep inside with an AttributeError.
        raise InputError(
            f"the backbone is a peft {type(backbone).__name__}: give the model inside it "
            "(`peft_model.get_base_model()`, whose adapter layers stay in place and train), or apply get_peft_model "
            "to the memory model"
        )
    config = getattr(backbone, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise InputError(
            f"backbone {type(backbone).__name__} is not a Hugging Face PreTrainedModel (it has no config.model_type)"
        )
    return config.model_type


def check_family(backbone: nn.Module, mode: str) -> str:
    """Raise a ValueError naming the family when `backbone` is not supported in `mode`; return its model_type."""
    families = DECODER_FAMILIES if mode == "decoder" else ENCODER_FAMILIES
    kind = model_type(backbone)
    if kind not in families:
        raise InputError(f"unknown model family {kind!r} for mode={mode!r}; supported: {sorted(families)}")
    return kind


def check_fits(backbone: nn.Module, segment_size: int, needed: int, layout: str) -> None:
    """Raise an InputError when a segment laid out as `layout` needs more positions (`needed`) than the backbone
    embeds, naming the largest segment_size that fits."""
    limit = max_positions(backbone)
    if limit is not None and needed > limit:
        fitting = segment_size - (needed - limit)
        advice = (
            f"lower segment_size to at most {fitting}"
            if fitting >= 1
            else "the memory alone takes them all: use fewer memory tokens or a backbone with more positions"
        )
        raise InputError(
            f"segment_size={segment_size} needs {needed} positions ({layout}) but the backbone embeds at most "
            f"{limit}: {advice}"
        )


def max_positions(backbone: nn.Module) -> int | None:
    """The number of positions the backbone can embed (None when unbounded)."""
    config = backbone.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            if config.model_type == "roberta":  # positions start after padding_idx
                value -= (config.pad_token_id or 0) + 1
            return value
    return None


def layer_windows(backbone: nn.Module) -> list[int | None]:
    """Each attention layer's sliding window (Mistral's or Qwen2's may have one), None for a layer that attends to
    all places: such a layer attends to its last `window` places and its key/value cache keeps one fewer."""
    from transformers import DynamicCache

    return [getattr(layer, "sliding_window", None) or None for layer in DynamicCache(config=backbone.config).layers]


def sliding_window(backbone: nn.Module, windows: list[int | None] | None = None) -> int | None:
    """The shortest sliding window among the backbone's layers (`windows`: its `layer_windows`, when known); None
    when every layer attends to all places."""
    set_windows = [w for w in (layer_windows(backbone) if windows is None else windows) if w]
    return min(set_windows) if set_windows else None


def sliding_reach(backbone: nn.Module, windows: list[int | None] | None = None) -> int | None:
    """How many places back the last place of one forward pass can draw from through all layers when every layer
    has a sliding window (`windows`: its `layer_windows`, when known): each layer reaches `window - 1` places
    further. None when a layer attends to all places (through it, every place reaches every earlier one)."""
    windows = layer_windows(backbone) if windows is None else windows
    if not windows or not all(windows):
        return None
    return sum(window - 1 for window in windows)


def hidden_size(backbone: nn.Module) -> int:
    return backbone.get_input_embeddings().weight.shape[1]


def kv_shape(backbone: nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of the backbone's attention cache."""
    config = backbone.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden_size(backbone) // heads
    return config.num_hidden_layers, kv_heads, head_dim
