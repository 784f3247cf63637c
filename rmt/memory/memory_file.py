"""Document memory as a value: save the memory state after reading a document, load it later to answer many
questions without reading the document again.

    stream = model.stream()
    for chunk in document_chunks:
        stream.feed(chunk)
    save_memory(model, stream.memory_state, "report.memory.safetensors", tokens=int(stream.seen[0]))
    ...
    state = load_memory(model, "report.memory.safetensors")
    ids = model.generate(question_ids, memory_state=state, max_new_tokens=20)  # [B, P + 20]; the answer: ids[:, P:]

The file is safetensors: one tensor per leaf of the state, its structure, and two fingerprints of the model that
made it: of its configuration (RMTConfig, less bptt_depth and loss_aggregation, which change only training, and the
backbone's configuration, less the fields that change no computation: names, token ids, output flags, dropout,
initialisation) and of its weights (every element of every weight tensor rounded to bf16, so that the same weights
in fp32 or bf16 match; LoRA adapters merged, so that a model with adapters and its merged checkpoint match; a pass
over all the weights, through the CPU, on every save and load). A transformers version that names its configuration
fields otherwise (they have been renamed before) refuses the files of an older one as another configuration. Loading
into a model with another configuration or other weights is refused with a message that says which: a memory is only
meaningful to the model that wrote it. The state is loaded in the dtypes of the loading model's own state. Questions
asked after a loaded memory start a new segment, as if the document ended at a segment boundary. Files of the
earlier formats still load, checked as they were written: rmt-memory-2 (the backbone's shape only, and 1,024 evenly
spaced elements of each weight tensor) and rmt-memory-1 (the memory parameters and the first rows of the token
embeddings).

The header also holds a sha256 checksum of the tensors (names, dtypes, shapes and bytes): a file whose data was
damaged (a bit flipped on disk or in a copy) is refused as corrupt instead of loading as another memory; files
written before the checksum existed have none and load unchecked. A state with NaN or inf values is
refused on save and on load (a model that diverged while reading has no memory worth keeping).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn
from torch.utils import _pytree as pytree

from rmt.backbones.lora import merged_state_dict
from rmt.config import ADDED_AFTER_FIRST_FORMAT
from rmt.errors import InputError, MissingFileError
from rmt.files import write_atomic
from rmt.memory.state import State, check_state

if TYPE_CHECKING:
    from rmt.memory.interface import MemoryModel

FORMAT = "rmt-memory-3"
_SECOND_FORMAT = "rmt-memory-2"
_FIRST_FORMAT = "rmt-memory-1"
_SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")  # rmt-memory-2
_SAMPLES_PER_TENSOR = 1024  # rmt-memory-2: evenly spaced elements of each weight tensor in the weights fingerprint
# Backbone configuration fields that change no computation of the memory (names, token ids, what a forward returns,
# the dtype, which the weights fingerprint covers; dropout, off where a memory is read; initialisation; how a
# feed-forward layer is chunked): left out of the configuration fingerprint, along with every field whose name starts
# with "_" (transformers' own bookkeeping).
_NOT_COMPUTING_KEYS = frozenset(
    {
        "architectures", "attn_implementation", "bos_token_id", "cls_token_id", "dtype", "eos_token_id",
        "finetuning_task", "id2label", "label2id", "output_attentions", "output_hidden_states", "pad_token_id",
        "prefix", "problem_type", "return_dict", "sep_token_id", "task_specific_params", "tie_word_embeddings",
        "tokenizer_class", "torch_dtype", "torchscript", "transformers_version", "use_cache",
        "attention_dropout", "attention_probs_dropout_prob", "attn_pdrop", "classifier_dropout", "embd_pdrop",
        "hidden_dropout", "hidden_dropout_prob", "resid_pdrop", "summary_first_dropout",
        "initializer_range", "initializer_factor", "chunk_size_feed_forward",
    }
)  # fmt: skip
_FIRST_FORMAT_ROWS = 64  # rmt-memory-1: rows of the embedding matrix hashed into the weights fingerprint
# The header key of the tensors' checksum. An optional key of the same format, not a new format: files without it (and
# rmt versions that do not know it) still read each other's files.
_CHECKSUM = "tensors_sha256"
# RMTConfig fields added after memory files were first written, with the value every older file's model had: left
# out of the config fingerprint at that value, so the older files still load.
_FIELDS_ADDED_LATER = {
    name: ADDED_AFTER_FIRST_FORMAT[name]
    for name in ("memory_write_scale", "armt_write_norm", "xl_contiguous_positions")
}


# RMTConfig fields that say how a model trains, not what it computes: a memory file does not depend on them.
_TRAINING_FIELDS = ("bptt_depth", "loss_aggregation")


def config_fingerprint(model: MemoryModel) -> str:
    """sha256 of the model's RMTConfig (without the fields that only change training) and of its backbone's
    configuration (without the fields that change no computation)."""
    backbone = {
        key: value
        for key, value in model.backbone.config.to_dict().items()
        if key not in _NOT_COMPUTING_KEYS and not key.startswith("_")
    }
    return _config_digest(model, backbone, training_fields=False)


def _shape_config_fingerprint(model: MemoryModel, training_fields: bool = False) -> str:
    """The configuration fingerprint of rmt-memory-1 and -2 files: the backbone's shape alone (and, in files written
    before the training fields were left out, those too: `training_fields=True`)."""
    backbone = {key: getattr(model.backbone.config, key, None) for key in _SHAPE_KEYS}
    return _config_digest(model, backbone, training_fields)


def _config_digest(model: MemoryModel, backbone: dict[str, Any], training_fields: bool) -> str:
    rmt = model.config.to_dict()
    for name, value in _FIELDS_ADDED_LATER.items():
        if rmt.get(name) == value:
            del rmt[name]
    if not training_fields:
        for name in _TRAINING_FIELDS:
            del rmt[name]
    text = json.dumps({"rmt": rmt, "backbone": backbone}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_fingerprint(model: MemoryModel) -> str:
    """sha256 of every weight tensor's name, shape and elements rounded to bf16 (the same weights in fp32 or bf16
    match), LoRA adapters merged into their layers under the names a model without adapters has."""
    digest = hashlib.sha256()
    for name, tensor in sorted(merged_state_dict(cast(nn.Module, model)).items()):
        if not tensor.is_floating_point():
            continue
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        rounded = tensor.detach().to("cpu", torch.bfloat16).contiguous().reshape(-1)
        digest.update(rounded.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def sampled_weights_fingerprint(model: MemoryModel) -> str:
    """The weights fingerprint of rmt-memory-2 files: every weight tensor's name, shape and up to
    _SAMPLES_PER_TENSOR evenly spaced elements rounded to bf16. Quick on any model; `rmt eval` records it with its
    results (a by-length run resumes only with the same weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        count = min(flat.numel(), _SAMPLES_PER_TENSOR)
        # Integer arithmetic: float positions round past the last element beyond 2**24 elements (an LLM's embedding).
        picks = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[picks.to(flat.device)].to("cpu", torch.bfloat16).to(torch.float32)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _first_format_weights_fingerprint(model: MemoryModel) -> str:
    """The weights fingerprint of rmt-memory-1 files: the wrapper's own weights and the first token embeddings."""
    digest = hashlib.sha256()
    tensors = dict(sorted(model.memory_state_dict().items()))
    tensors["backbone.embeddings"] = model.backbone.get_input_embeddings().weight[:_FIRST_FORMAT_ROWS]
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


# For each format: the configuration fingerprints a file of it may hold, and its weights fingerprint.
_FINGERPRINTS: dict[str, tuple[tuple[Callable[[MemoryModel], str], ...], Callable[[MemoryModel], str]]] = {
    FORMAT: ((config_fingerprint,), weights_fingerprint),
    _SECOND_FORMAT: (
        (_shape_config_fingerprint, functools.partial(_shape_config_fingerprint, training_fields=True)),
        sampled_weights_fingerprint,
    ),
    _FIRST_FORMAT: (
        (_shape_config_fingerprint, functools.partial(_shape_config_fingerprint, training_fields=True)),
        _first_format_weights_fingerprint,
    ),
}


def _tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of CPU tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())  # any dtype's bytes (bf16 too)
    return digest.hexdigest()


def _non_finite_leaf(leaves: list[torch.Tensor]) -> int | None:
    """The index of the first floating-point leaf holding a NaN or an infinity, or None."""
    return next(
        (i for i, leaf in enumerate(leaves) if leaf.is_floating_point() and not bool(torch.isfinite(leaf).all())), None
    )


def save_memory(model: MemoryModel, state: State, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write `state` (as `forward` or a stream returns it) to `path` atomically; `metadata` (JSON values, e.g. the
    number of tokens read, the document's name) is stored with it. A state with NaN or inf values is refused."""
    leaves = pytree.tree_leaves(state)
    if not leaves or not all(isinstance(leaf, torch.Tensor) and leaf.dim() > 0 for leaf in leaves):
        # checked here: the batch size below is read from the first leaf
        raise InputError(
            "save_memory's state must be a memory state as forward or a stream returns it (tensors with a batch "
            f"dimension first), got a {type(state).__name__}"
        )
    check_state(state, model.initial_state(leaves[0].shape[0]))
    bad = _non_finite_leaf(leaves)
    if bad is not None:
        raise InputError(
            f"the memory state holds NaN or inf values (leaf {bad}): the model diverged while reading; a file of it "
            "would be refused when loaded"
        )
    leaves, spec = pytree.tree_flatten(state)
    tensors = {f"leaf.{i:03d}": leaf.detach().to("cpu").contiguous() for i, leaf in enumerate(leaves)}
    header = {
        "format": FORMAT,
        "structure": pytree.treespec_dumps(spec),
        "config_fingerprint": config_fingerprint(model),
        "weights_fingerprint": weights_fingerprint(model),
        "metadata": _metadata_json(metadata),
        _CHECKSUM: _tensors_checksum(tensors),
    }
    path = Path(path)
    write_atomic(path, save(tensors, metadata=header))
    return path


def _metadata_json(metadata: dict[str, Any]) -> str:
    try:
        return json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise InputError(f"save_memory's metadata must be JSON values (str, numbers, lists, dicts): {err}") from None


def load_memory(model: MemoryModel, path: str | os.PathLike) -> State:
    """The state saved in `path`, on the model's device; refused (InputError) unless `model` wrote it."""
    state, _ = read_memory(model, path)
    return state


def read_memory(model: MemoryModel, path: str | os.PathLike) -> tuple[State, dict[str, Any]]:
    """(state, the metadata saved with it) from `path`, checked against `model`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a memory file")
    if not path.is_file():
        raise MissingFileError(f"no memory file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path} is not a memory file (unreadable safetensors: {err})") from err
    written_as = header.get("format")
    if written_as not in _FINGERPRINTS:
        raise InputError(f"{path} is not a memory file written by rmt (format {header.get('format')!r})")
    if _CHECKSUM in header and header[_CHECKSUM] != _tensors_checksum(tensors):
        raise InputError(
            f"{path} is corrupt: its tensors do not match the checksum saved with them (a damaged copy); "
            "read the document again to write a new one"
        )
    configurations, weights = _FINGERPRINTS[written_as]
    if header.get("config_fingerprint") not in [fingerprint(model) for fingerprint in configurations]:
        raise InputError(
            f"{path} was written by a model of another configuration (memory kind, memory tokens, segment size or "
            "backbone differ): load it into the model that read the document"
        )
    if header.get("weights_fingerprint") != weights(model):
        raise InputError(
            f"{path} was written by a model with the same configuration but other weights (another checkpoint, or "
            "these weights in fp16: fp32 and bf16 match): load it into the model that read the document"
        )
    try:
        spec = pytree.treespec_loads(header["structure"])
        leaves = [tensors[f"leaf.{i:03d}"] for i in range(len(tensors))]
        state = pytree.tree_unflatten(leaves, spec)
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path} is not a memory file (damaged header or tensors: {err!r})") from err
    reference = model.initial_state(leaves[0].shape[0])
    check_state(state, reference)
    bad = _non_finite_leaf(leaves)
    if bad is not None:  # a file without a checksum, or written by a model that diverged
        raise InputError(
            f"{path} holds NaN or inf memory values (leaf {bad}): the model diverged while reading, or the file is "
            "damaged; read the document again"
        )
    # In the loading model's dtypes (a state saved by the same weights in fp32, read by them in bf16, or back).
    state = pytree.tree_map(lambda leaf, own: leaf.to(model.device, own.dtype), state, reference)
    return state, metadata
