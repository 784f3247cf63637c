"""Checkpoint I/O of memory models: `save_pretrained` / `from_pretrained` in the Hugging Face way.

A checkpoint is a folder:
    backbone/             the backbone in its own Hugging Face format (safetensors), loadable without rmt
    memory.safetensors    the wrapper's own parameters (memory embeddings, ARMT projections)
    rmt_config.json       the RMTConfig
It is written into a temporary folder and swapped in whole (`rmt.files.atomic_directory`), so a crash never leaves a
half-written checkpoint and an existing one is replaced only once the new one is complete. Other files already in the
folder (a tokenizer saved there or in backbone/, a README) are kept, as in Hugging Face's own `save_pretrained`;
old weight files are not. A loaded model is in
eval mode, as Hugging Face models are after `from_pretrained`.

A checkpoint on the Hugging Face Hub loads by its id ("owner/name", when no local path of that name exists), through
the Hub's cache (`hub_checkpoint_folder`); `push_to_hub` uploads one (`upload_to_hub`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

from rmt.backbones.loading import (
    BACKBONE_DIR,
    MEMORY_CONFIG,
    MEMORY_WEIGHTS,
    dtype_keywords,
    hub_unreachable,
    loading_problems,
    looks_like_hub_id,
    model_inside,
    one_line,
)
from rmt.backbones.lora import has_lora_layers, merged_state_dict
from rmt.config import RMTConfig
from rmt.errors import InputError, MissingFileError
from rmt.files import atomic_directory, recover_directory
from rmt.memory.registry import model_class

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from rmt.memory.interface import MemoryModel

# What a save replaces even where it writes no file of that name: the old weights (their sharding may change). The
# rest of an existing checkpoint folder (a tokenizer in backbone/, a README) is kept.
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
_OWNED = (MEMORY_WEIGHTS, MEMORY_CONFIG, *(f"{BACKBONE_DIR}/{pattern}" for pattern in _WEIGHT_FILES))


def save_memory_model(
    model: MemoryModel,
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    extras: Callable[[Path], None] | None = None,
    max_shard_size: int | str | None = None,
) -> None:
    """Write `model` to the folder `path` atomically (see the module docstring). `state_dict`: the model's full
    weights when its own parameters are sharded over processes (FSDP), gathered by the caller. A backbone with LoRA
    adapters is written with them merged into its weights. `progress=False` hides transformers' progress bar of the
    write (a trainer run without progress bars saves quietly). `extras(folder)` writes more files (a tokenizer) into
    the folder before it is swapped in, so they change with the weights, at once. `max_shard_size`: the largest
    backbone weights file (transformers' default when None)."""
    if state_dict is None and has_lora_layers(model.backbone):
        state_dict = merged_state_dict(model)
    if state_dict is None:
        backbone_weights = None
        memory_weights = model.memory_state_dict()
    else:
        backbone_weights = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
        memory_weights = {k: v for k, v in state_dict.items() if not k.startswith("backbone.")}
    if Path(path).exists() and not Path(path).is_dir():
        raise InputError(f"cannot save a model to {path}: it is a file, not a folder")
    with atomic_directory(path, owned=_OWNED) as tmp, transformers_progress_bars(progress):
        shards = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.backbone.save_pretrained(tmp / BACKBONE_DIR, state_dict=backbone_weights, **shards)
        tensors = {k: v.detach().contiguous().cpu() for k, v in memory_weights.items()}
        save_file(tensors, str(tmp / MEMORY_WEIGHTS), metadata={"format": "pt"})
        model.config.save(tmp / MEMORY_CONFIG)
        if extras is not None:
            extras(tmp)


@contextmanager
def transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' progress bars inside the block when not `enabled`; restore the global setting after."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


# RMTConfig fields that decide which memory weights a checkpoint holds, or their shapes: a load cannot change them.
_FIXED_BY_WEIGHTS = (
    "mode",
    "memory_kind",
    "num_memory_tokens",
    "d_mem",
    "write_init",
    "memory_write_scale",
    "read_memory_only",
)


def load_memory_model(path: str | os.PathLike, expected: type[MemoryModel] | None = None, **kwargs: Any) -> MemoryModel:
    """Load a checkpoint written by `save_memory_model`. `expected`: refuse a checkpoint of another model class.
    Keyword arguments named after RMTConfig fields change the saved config (as Hugging Face's config overrides do:
    `segment_size=256`, `bptt_depth=2`), except those that decide the memory weights (`_FIXED_BY_WEIGHTS`); the
    others go to the backbone's from_pretrained (`dtype`, `device_map`, ...).

    A hub id ("owner/name") that is no local path is fetched from the Hugging Face Hub with `HUB_ARGUMENTS`
    (`revision`, `token`, `cache_dir`, `local_files_only`, `force_download`), which a local folder ignores, as
    transformers does.

    Missing files raise MissingFileError, damaged ones an InputError naming the file ("corrupt checkpoint: ...").
    Errors that are not about the files (e.g. a `device_map` this machine cannot serve) keep their own type and
    message."""
    fields = {f.name for f in dataclasses.fields(RMTConfig)}
    hub = {name: kwargs.pop(name) for name in HUB_ARGUMENTS if name in kwargs}
    overrides = {name: value for name, value in kwargs.items() if name in fields}
    backbone_kwargs = {name: value for name, value in kwargs.items() if name not in fields}
    path = hub_checkpoint_folder(path, **hub) if _names_a_hub_checkpoint(path) else Path(path)
    recover_directory(path, remove=False)  # a version a crashed save set aside; a reader deletes nothing
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a checkpoint folder")
    if not path.is_dir():
        raise MissingFileError(f"no checkpoint at {path}: the folder does not exist")
    missing = [n for n in (MEMORY_CONFIG, MEMORY_WEIGHTS, BACKBONE_DIR) if not (path / n).exists()]
    if missing:
        raise MissingFileError(f"no complete checkpoint at {path}: missing {', '.join(missing)}{_hint(path, missing)}")
    for name, folder in ((MEMORY_CONFIG, False), (MEMORY_WEIGHTS, False), (BACKBONE_DIR, True)):
        if (path / name).is_dir() != folder:
            raise InputError(f"corrupt checkpoint: {path / name} is a {'file' if folder else 'folder'}")
    unreadable = _first_unreadable(path)
    if unreadable is not None:  # safetensors would report it as "No such file"
        raise InputError(
            f"cannot read {unreadable}: permission denied (readable by its owner alone? chmod a+r shares it)"
        )
    config = RMTConfig.load(path / MEMORY_CONFIG)
    changed = [name for name in _FIXED_BY_WEIGHTS if name in overrides and overrides[name] != getattr(config, name)]
    if changed:
        saved = ", ".join(f"{name}={getattr(config, name)!r}" for name in changed)
        raise InputError(
            f"checkpoint {path} was saved with {saved}, which decide its memory weights: a load cannot change them"
        )
    if overrides:
        config = dataclasses.replace(config, **overrides)
    model_cls = model_class(config)
    if expected is not None and not issubclass(model_cls, expected):
        raise InputError(f"checkpoint {path} holds an {model_cls.__name__} model, not an {expected.__name__} one")
    try:
        tensors = load_file(str(path / MEMORY_WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise InputError(f"corrupt checkpoint: cannot read {path / MEMORY_WEIGHTS}: {err}") from err
    backbone_kwargs = dtype_keywords(backbone_kwargs)
    backbone = _load_backbone(path / BACKBONE_DIR, config.mode, backbone_kwargs)
    model = model_cls(backbone, config)
    expected_tensors = model.memory_state_dict()
    if set(tensors) != set(expected_tensors):
        overridden = f" (with {', '.join(sorted(overrides))} overridden)" if overrides else ""
        raise InputError(
            f"corrupt checkpoint: {path / MEMORY_WEIGHTS} holds {sorted(tensors)}, expected {sorted(expected_tensors)}"
            f"{overridden}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected_tensors[name].shape:
            raise InputError(
                f"corrupt checkpoint: {name} has shape {tuple(tensor.shape)} in {path / MEMORY_WEIGHTS}, "
                f"expected {tuple(expected_tensors[name].shape)}"
            )
        if not tensor.dtype.is_floating_point:  # load_state_dict would cast whole numbers to floats silently
            raise InputError(f"corrupt checkpoint: {name} holds {tensor.dtype} values in {path / MEMORY_WEIGHTS}")
    model.load_state_dict(tensors, strict=False)
    return model.to(backbone.device).eval()


# from_pretrained's keyword arguments that say how to fetch a checkpoint from the Hugging Face Hub, as transformers'
HUB_ARGUMENTS = ("revision", "token", "cache_dir", "local_files_only", "force_download")


def _names_a_hub_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` reads as a hub id ("owner/name") and names no local path. A mistyped local path of two parts
    whose first part is a local folder (`runs/modle`) stays a local path, so its error says the folder is missing."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = str(path)
    if isinstance(path, Path) or Path(name).exists() or not looks_like_hub_id(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name.split("/")[0]).is_dir()


def hub_checkpoint_folder(repo_id: str, **hub: Any) -> Path:
    """The local folder of the rmt checkpoint `repo_id` on the Hugging Face Hub: its snapshot in the Hub's cache,
    downloaded when missing or stale. `hub`: `HUB_ARGUMENTS`. A repository that is not an rmt checkpoint (no
    rmt_config.json: a plain Hugging Face model) is refused before its weights download."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    unknown = sorted(set(hub) - set(HUB_ARGUMENTS))
    if unknown:
        raise InputError(f"not arguments of a hub download: {', '.join(unknown)} (it takes {', '.join(HUB_ARGUMENTS)})")
    not_local = f"no checkpoint at {repo_id}: it is no local folder, and as a Hugging Face Hub id"
    unreachable = hub_unreachable()
    if unreachable and "local_files_only" not in hub:  # the cache alone, without the hub library's retries
        hub = {**hub, "local_files_only": True}
        not_local = f"{not_local} (the Hub cannot be reached: {unreachable}; only its local cache was read)"
    try:
        hf_hub_download(repo_id, MEMORY_CONFIG, **hub)
        return Path(snapshot_download(repo_id, **hub))
    except RepositoryNotFoundError as err:
        raise MissingFileError(
            f"{not_local} no repository of that name is visible (a private one needs token=): {one_line(err)}"
        ) from err
    except LocalEntryNotFoundError as err:  # no connection (or local_files_only) and nothing in the cache
        raise MissingFileError(f"{not_local} it could not be fetched: {one_line(err)}") from err
    except EntryNotFoundError as err:
        raise InputError(
            f"the Hugging Face Hub repository {repo_id} is not an rmt checkpoint: it has no {MEMORY_CONFIG} (a "
            "plain model gets memory as a backbone: RMTForCausalLM(AutoModelForCausalLM.from_pretrained(...), "
            "RMTConfig(...)))"
        ) from err
    except OSError as err:  # another answer of the Hub (a revision it does not have, a gated repository, ...)
        raise MissingFileError(f"{not_local} it could not be fetched: {one_line(err)}") from err


def local_checkpoint(name: str) -> str:
    """`name` itself, or for a hub id of an rmt checkpoint ("owner/name", no local path) the folder of its snapshot
    in the Hub's cache, downloaded if needed: what a command reads the model, its tokenizer (in backbone/) and its
    files from, and records as the checkpoint it evaluated."""
    return str(hub_checkpoint_folder(name)) if _names_a_hub_checkpoint(name) else name


def upload_to_hub(
    model: MemoryModel,
    repo_id: str,
    commit_message: str = "Upload rmt model",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = None,
    tokenizer: Any = None,
) -> str:
    """Save `model` as `save_memory_model` does into a temporary folder and upload it to the Hugging Face Hub
    repository `repo_id` (created if missing) in one commit, whose URL is returned. Weight files of an earlier upload
    that this one does not write (other shards) are deleted in the same commit, as a local save replaces them.
    `tokenizer` is saved into backbone/ with it, where `rmt train` keeps a checkpoint's tokenizer and `rmt eval` /
    `rmt generate` read it."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        extras = None if tokenizer is None else lambda into: tokenizer.save_pretrained(into / BACKBONE_DIR)
        save_memory_model(model, folder, max_shard_size=max_shard_size, extras=extras)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            delete_patterns=list(_OWNED),
        )
    return str(commit.commit_url)


def _hint(path: Path, missing: list[str]) -> str:
    """What a folder that is no rmt checkpoint may be instead: a checkpoint's backbone, a plain Hugging Face model, a
    flat state dict (a training library's save), or a run folder with the checkpoint inside it."""
    if len(missing) < 3:
        return model_inside(path)
    if (path / "config.json").is_file():
        if path.name == BACKBONE_DIR and (path.parent / MEMORY_CONFIG).is_file():
            return f" (it is the backbone of the checkpoint {path.parent}: give that folder)"
        return (
            " (it is a plain Hugging Face model, not an rmt checkpoint: give it memory with rmt train --model "
            f"{path}, or in Python RMTForCausalLM(AutoModelForCausalLM.from_pretrained(...), RMTConfig(...)))"
        )
    if any(path.glob("model*.safetensors")):
        return (
            " (its model*.safetensors is a flat state dict, as Trainer.save_model or Accelerator.save_model write: "
            "save an rmt model with unwrap_model(model).save_pretrained(...))"
        )
    return model_inside(path)


def _first_unreadable(path: Path) -> Path | None:
    """The first of the files a load reads (weights, configs) or its backbone folder that this process may not read,
    if any: saves before rmt gave saved files the umask's permissions wrote the weights owner-only. Other files a
    folder holds (a private note kept from an earlier save) do not matter."""
    backbone = path / BACKBONE_DIR
    if not os.access(backbone, os.R_OK | os.X_OK):
        return backbone
    read = [path / MEMORY_WEIGHTS, path / MEMORY_CONFIG, backbone / "config.json"]
    read += [file for file in backbone.iterdir() if any(fnmatch.fnmatchcase(file.name, p) for p in _WEIGHT_FILES)]
    return next((file for file in read if file.exists() and not os.access(file, os.R_OK)), None)


def _load_backbone(folder: Path, mode: str, kwargs: dict) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _backbone_config(folder)
    auto = AutoModelForCausalLM if mode == "decoder" else AutoModelForSequenceClassification
    # transformers initialises a weight the files lack, or hold in another shape, at random and only reports it (or,
    # for a shape, raises a bare RuntimeError): both are refused here as a damaged checkpoint, unless the caller
    # asked for mismatched shapes to be re-initialised.
    kinds = ["missing_keys", "unexpected_keys"]
    if not kwargs.get("ignore_mismatched_sizes", False):
        kinds.append("mismatched_keys")
    try:
        # Not config=config: the caller's keyword arguments that override config values (use_cache=False) would
        # then go to the model's constructor instead.
        backbone, info = auto.from_pretrained(
            folder, output_loading_info=True, **{**kwargs, "ignore_mismatched_sizes": True}
        )
    except (SafetensorError, OSError) as err:  # unreadable or missing weight files
        raise InputError(f"corrupt checkpoint: cannot load the backbone weights from {folder}: {err}") from err
    except StrictDataclassError as err:  # a config value given as a keyword argument that the family refuses
        raise InputError(f"cannot load the backbone from {folder}: {one_line(err)}") from err
    except KeyError as err:  # a config value the family's layers look up and do not know (a rope type)
        raise InputError(
            f"corrupt checkpoint: cannot build the backbone {folder / 'config.json'} describes: no {err} known"
        ) from err
    except ValueError as err:
        if not str(err).startswith("Unrecognized configuration class"):
            raise  # not about the files: a device_map or attention implementation this machine cannot serve
        raise InputError(
            f"cannot load the backbone from {folder}: its family {config.model_type!r} has no "
            f"{'causal LM' if mode == 'decoder' else 'sequence classifier'} in this transformers"
        ) from err
    found = loading_problems(info, kinds)
    if found:
        raise InputError(f"corrupt checkpoint: the backbone weights in {folder} do not match its config ({found})")
    return backbone


def _backbone_config(folder: Path) -> PretrainedConfig:
    """The backbone's config, read from `folder`/config.json; a missing file is a MissingFileError, and a file that
    is not JSON, names no family or holds values its family's config refuses (heads that do not divide the width, a
    count given as text, an unknown rope type) an InputError naming it, as is a family this transformers lacks."""
    from transformers import AutoConfig

    config_file = folder / "config.json"
    try:
        fields = json.loads(config_file.read_text())
    except FileNotFoundError as err:
        raise MissingFileError(f"no complete checkpoint: {config_file} is missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"corrupt checkpoint: cannot load the backbone from {folder}: {config_file}: {err}") from err
    if not isinstance(fields, dict) or "model_type" not in fields:
        raise InputError(f"corrupt checkpoint: cannot load the backbone from {folder}: {config_file} has no model_type")
    try:
        return AutoConfig.from_pretrained(folder)
    except ValueError as err:
        if "does not recognize this architecture" in str(err) or "Unrecognized model" in str(err):
            raise InputError(
                f"cannot load the backbone from {folder}: this transformers does not know its family "
                f"{fields['model_type']!r}"
            ) from err
        raise InputError(f"corrupt checkpoint: {config_file}: {one_line(err)}") from err
    except (StrictDataclassError, TypeError, KeyError) as err:
        raise InputError(f"corrupt checkpoint: {config_file}: {one_line(err)}") from err
