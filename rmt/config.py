"""Typed configuration of a recurrent memory wrapper.

`RMTConfig` holds every knob of the memory mechanism (not of the backbone, which keeps its own Hugging Face
config). It is validated on construction: a bad value raises `ValueError` naming the field and the allowed
range, so a typo fails before any model is built. Field docstrings double as CLI help text.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from rmt.errors import InputError, MissingFileError, RMTWarning

Mode = Literal["decoder", "encoder"]
WriteInit = Literal["memory", "learned"]
MemoryPositions = Literal["sequential", "shared"]
LossAggregation = Literal["tokens", "segments", "last_segment"]
MemoryKind = Literal["rmt", "armt"]
EncoderMemoryInput = Literal["after_embeddings", "embedding_layer"]
EncoderMemoryInit = Literal["token_embeddings", "embedding_output"]
MemoryWriteScale = Literal["hidden", "token_embeddings"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("decoder", "encoder"),
    "write_init": ("memory", "learned"),
    "memory_positions": ("sequential", "shared"),
    "loss_aggregation": ("tokens", "segments", "last_segment"),
    "memory_kind": ("rmt", "armt"),
    "encoder_memory_input": ("after_embeddings", "embedding_layer"),
    "encoder_memory_init": ("token_embeddings", "embedding_output"),
    "memory_write_scale": ("hidden", "token_embeddings"),
}


def _doc(text: str) -> dict[str, Any]:
    return {"doc": " ".join(text.split())}


@dataclass
class RMTConfig:
    """Configuration of the recurrent memory around a Hugging Face backbone."""

    num_memory_tokens: int = field(
        default=10,
        metadata=_doc("Number of memory tokens M (>= 0). 0 switches memory off: each segment is processed alone."),
    )
    segment_size: int = field(
        default=128,
        metadata=_doc(
            "Input tokens per segment T (> 0). The input is cut into segments of this size; the last one may be "
            "shorter. T plus the memory slots must fit the backbone's position limit."
        ),
    )
    mode: Mode = field(
        default="decoder",
        metadata=_doc(
            "'decoder': causal LM, layout [read memory | segment | write memory]. "
            "'encoder': sequence classification, layout [CLS][memory][SEP] segment [SEP]."
        ),
    )
    bptt_depth: int = field(
        default=-1,
        metadata=_doc(
            "Truncated backpropagation through time: gradients flow through at most this many memory "
            "transitions before the end of each sample (-1: all, 0: none; >= -1). An untrained ARMT cannot learn "
            "its memory at 0: no loss reaches a write, and its value projection starts at zero."
        ),
    )
    write_init: WriteInit = field(
        default="memory",
        metadata=_doc(
            "What the write slots hold on input (decoder mode): 'memory' = the current memory state, as in the "
            "RMT paper; 'learned' = a learned write embedding."
        ),
    )
    memory_positions: MemoryPositions = field(
        default="sequential",
        metadata=_doc(
            "Position ids of memory slots (decoder mode): 'sequential' numbers [read | segment | write] "
            "0..2M+T-1; 'shared' gives write slot j the same position as read slot j (0..M-1), tokens M..M+T-1."
        ),
    )
    loss_aggregation: LossAggregation = field(
        default="tokens",
        metadata=_doc(
            "How per-token losses are combined: 'tokens' = mean over every labelled token of every segment; "
            "'segments' = mean over segments of each segment's mean; 'last_segment' = the predictions made in each "
            "sample's last segment only (a label at a segment's first position is predicted by the segment before, "
            "so it does not count there). Answer-only (masked) losses use labels = -100 on ignored positions, as in HF."
        ),
    )
    memory_kind: MemoryKind = field(
        default="rmt",
        metadata=_doc(
            "'rmt': memory tokens carried from segment to segment. 'armt': per-layer associative memory "
            "(decoder mode only)."
        ),
    )
    d_mem: int = field(
        default=64,
        metadata=_doc("ARMT only: size of the associative memory's key projection before the DPFP map (> 0)."),
    )
    armt_write_norm: bool = field(
        default=False,
        metadata=_doc(
            "ARMT only: scale the memory tokens' layer outputs to unit root mean square before the write's key, "
            "value and gate projections (not in the published ARMT). Without it, what a layer stores grows with "
            "its activations, and on a pretrained backbone the state can grow from segment to segment."
        ),
    )
    read_memory_only: bool = field(
        default=False,
        metadata=_doc(
            "Decoder RMT only. Control experiment: read slots only, no write slots, so memory is never updated "
            "(the initial memory is read by every segment)."
        ),
    )
    xl_cache_tokens: int = field(
        default=0,
        metadata=_doc(
            "Transformer-XL cache (mem_len; decoder RMT only; >= 0, 0: off): every layer also attends to the "
            "detached keys/values of the last this-many tokens of the previous segment(s) (see xl_cache_recompute "
            "for the original Transformer-XL's gradients). With "
            "num_memory_tokens=0 this is Transformer-XL; with memory tokens it is the RMT paper's MemTrXL. The "
            "cache holds segment tokens only (memory slots travel as memory) and its tokens keep their positions: "
            "position ids run on across segments, so learned absolute positions (GPT-2) must cover the whole input."
        ),
    )
    xl_cache_recompute: bool = field(
        default=False,
        metadata=_doc(
            "Transformer-XL cache as in the original Transformer-XL (needs xl_cache_tokens > 0): keep each layer's "
            "detached input hidden states of the cached tokens and recompute their keys/values with the current "
            "weights in every segment. The forward pass is the same; the difference is in training: the key/value "
            "projections (and the layers' input norms) also learn from the attention to cached tokens, which the "
            "default cache of detached keys/values gives them no gradient for. Costs one key/value projection of "
            "the cache per layer per segment and the hidden states in the state."
        ),
    )
    xl_contiguous_positions: bool = field(
        default=False,
        metadata=_doc(
            "Decoder RMT with a Transformer-XL cache and memory tokens: number each segment's tokens on from the "
            "previous segment's last token, its read slots taking the M positions just before them (those of the "
            "previous segment's last M tokens, which the cache keeps at their own). By default the read slots take "
            "M new positions between the two segments, so a segment's first token sits M + 1 positions after the "
            "token before it where Transformer-XL alone has it 1 after."
        ),
    )
    memory_write_scale: MemoryWriteScale = field(
        default="hidden",
        metadata=_doc(
            "Decoder RMT only: the scale of the memory a segment writes. 'hidden' = the backbone's last hidden "
            "states at the write slots as they are (the RMT paper); 'token_embeddings' = those vectors "
            "RMS-normalised, times a learned per-channel gain that starts at the token embeddings' standard "
            "deviation, so the memory enters the next segment on the scale of the tokens beside it (a pretrained "
            "decoder's final norm can make its last hidden states an order of magnitude larger than its "
            "embeddings)."
        ),
    )
    encoder_memory_input: EncoderMemoryInput = field(
        default="after_embeddings",
        metadata=_doc(
            "Where an encoder's memory enters (encoder mode): 'after_embeddings' = it replaces the embedding "
            "layer's output at the memory positions; 'embedding_layer' = it replaces the word embeddings there and "
            "goes through the embedding layer like a token (plus position and token-type embeddings, then the "
            "embedding LayerNorm), the path of memory fed to a Hugging Face encoder as `inputs_embeds`."
        ),
    )
    encoder_memory_init: EncoderMemoryInit = field(
        default="token_embeddings",
        metadata=_doc(
            "Scale of an encoder's learned initial memory (encoder mode): 'token_embeddings' = like the word "
            "embedding table; 'embedding_output' = like the embedding layer's normalised output, which is what "
            "the memory replaces with encoder_memory_input='after_embeddings'."
        ),
    )

    cls_token_id: int | None = field(
        default=None,
        metadata=_doc(
            "Encoder mode: id of the [CLS] token (default: the backbone config's cls_token_id, else "
            "BERT's 101 or RoBERTa's bos_token_id)."
        ),
    )
    sep_token_id: int | None = field(
        default=None,
        metadata=_doc(
            "Encoder mode: id of the [SEP] token (default: the backbone config's sep_token_id, else "
            "BERT's 102 or RoBERTa's eos_token_id)."
        ),
    )

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise InputError(f"RMTConfig.{name} must be one of {choices}, got {value!r}")
        for name in ("num_memory_tokens", "segment_size", "bptt_depth", "d_mem", "xl_cache_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"RMTConfig.{name} must be an integer, got {value!r}")
        for name in ("cls_token_id", "sep_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InputError(f"RMTConfig.{name} must be a token id (an integer >= 0) or None, got {value!r}")
        for name in ("armt_write_norm", "read_memory_only", "xl_cache_recompute", "xl_contiguous_positions"):
            if not isinstance(getattr(self, name), bool):  # a string "false" would read as true
                raise InputError(f"RMTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.num_memory_tokens < 0:
            raise InputError(f"RMTConfig.num_memory_tokens must be >= 0, got {self.num_memory_tokens}")
        if self.segment_size <= 0:
            raise InputError(f"RMTConfig.segment_size must be > 0, got {self.segment_size}")
        if self.bptt_depth < -1:
            raise InputError(f"RMTConfig.bptt_depth must be -1 (all) or >= 0, got {self.bptt_depth}")
        if self.d_mem <= 0:
            raise InputError(f"RMTConfig.d_mem must be > 0, got {self.d_mem}")
        if self.xl_cache_tokens < 0:
            raise InputError(f"RMTConfig.xl_cache_tokens must be >= 0 (0: off), got {self.xl_cache_tokens}")
        if self.xl_cache_tokens and (self.mode != "decoder" or self.memory_kind != "rmt"):
            raise InputError("RMTConfig.xl_cache_tokens > 0 needs mode='decoder' and memory_kind='rmt'")
        if self.xl_cache_recompute and not self.xl_cache_tokens:
            raise InputError("RMTConfig.xl_cache_recompute needs a Transformer-XL cache (xl_cache_tokens > 0)")
        if self.xl_contiguous_positions and not (self.xl_cache_tokens and self.num_memory_tokens):
            raise InputError(
                "RMTConfig.xl_contiguous_positions places memory slots beside a Transformer-XL cache: it needs "
                f"xl_cache_tokens > 0 and num_memory_tokens > 0 (got {self.xl_cache_tokens} and "
                f"{self.num_memory_tokens})"
            )
        if self.memory_kind == "armt" and self.mode != "decoder":
            raise InputError("RMTConfig.memory_kind='armt' requires mode='decoder'")
        if self.read_memory_only and self.num_memory_tokens == 0:
            raise InputError("RMTConfig.read_memory_only needs num_memory_tokens >= 1")
        if self.read_memory_only and (self.mode, self.memory_kind) != ("decoder", "rmt"):
            raise InputError(
                "RMTConfig.read_memory_only is a control experiment of decoder RMT (mode='decoder', "
                f"memory_kind='rmt'): mode={self.mode!r}, memory_kind={self.memory_kind!r} would write the memory all "
                "the same"
            )
        self._warn_unused()

    def _warn_unused(self) -> None:
        """Warn about fields set away from their defaults that the chosen mode or memory kind ignores."""
        unused = []
        if self.memory_kind == "armt" or self.mode == "encoder":
            unused += ["write_init", "memory_positions", "memory_write_scale"]
        if self.mode == "decoder":
            unused += ["encoder_memory_input", "encoder_memory_init", "cls_token_id", "sep_token_id"]
        else:
            unused += ["loss_aggregation"]  # a classifier's loss is its answer's, read after the last segment
        if self.read_memory_only:
            unused += ["write_init"]  # no write slots
        if self.memory_kind == "rmt":
            unused += ["d_mem", "armt_write_norm"]
        defaults = {f.name: f.default for f in fields(self)}
        for name in dict.fromkeys(unused):
            if getattr(self, name) != defaults[name]:
                setting = f"mode={self.mode!r}, memory_kind={self.memory_kind!r}"
                if name == "write_init" and self.read_memory_only:
                    setting = "read_memory_only=True"
                warnings.warn(
                    f"RMTConfig.{name}={getattr(self, name)!r} has no effect with {setting}",
                    RMTWarning,
                    stacklevel=4,
                )

    @property
    def memory_enabled(self) -> bool:
        """Whether the model has memory tokens (num_memory_tokens 0 is the no-memory baseline)."""
        return self.num_memory_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RMTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown RMTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RMTConfig:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"memory config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"memory config {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise InputError(f"memory config {path} must hold a JSON object")
        data = with_fields_added_later(data)
        missing = [name for name in SAVED_SINCE_FIRST_FORMAT if name not in data]
        if missing:
            # A field added later is absent from older files and takes the value they meant; these were in every saved
            # file, so their absence means the file was edited or cut, and a default (segments of 128 for a model
            # trained on segments of 4) would load a different model without a word.
            raise InputError(
                f"memory config {path} lacks {', '.join(missing)}: every saved rmt_config.json has them (was the "
                "file edited or cut short?)"
            )
        if data.get("mode") == "encoder" and data.get("read_memory_only"):
            # Saved before it was refused for encoders, which wrote their memory all the same: it meant nothing.
            warnings.warn(
                f"{path}: read_memory_only=True is dropped: an encoder never honoured it (its memory was written)",
                RMTWarning,
                stacklevel=2,
            )
            data = {**data, "read_memory_only": False}
        return cls.from_dict(data)


# The fields of the first saved format: every rmt_config.json written by save() has them.
SAVED_SINCE_FIRST_FORMAT = (
    "num_memory_tokens",
    "segment_size",
    "mode",
    "bptt_depth",
    "write_init",
    "memory_positions",
    "loss_aggregation",
    "memory_kind",
    "d_mem",
    "read_memory_only",
    "cls_token_id",
    "sep_token_id",
)
# The fields added after the first saved format, each with the value every model saved before it existed had (its
# default when it was added). A saved config or checkpoint record that lacks one means that value, whatever the
# field's default becomes later; every new field is listed here (a test checks that each field is in one of the two).
ADDED_AFTER_FIRST_FORMAT: dict[str, Any] = {
    "xl_cache_tokens": 0,
    "xl_cache_recompute": False,
    "xl_contiguous_positions": False,
    "memory_write_scale": "hidden",
    "armt_write_norm": False,
    "encoder_memory_input": "after_embeddings",
    "encoder_memory_init": "token_embeddings",
}


def with_fields_added_later(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved RMTConfig dict with the fields it predates filled in with the values its model had."""
    return {**{k: v for k, v in ADDED_AFTER_FIRST_FORMAT.items() if k not in saved}, **saved}


def field_help(cls: type, name: str) -> str:
    """The documentation of a config dataclass field, for CLI help text."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("doc", "")
    raise KeyError(name)
