"""The trainer's checkpoints: written atomically by the main process, filled by every process, resumed exactly.

Layout of OUTPUT/checkpoint:
    model/               the model as `save_pretrained` writes it (and the tokenizer, if the run has one): `rmt eval`
                         and `from_pretrained` read it as they read a final model
    accelerate/          `Accelerator.save_state`: model weights, optimizer, learning-rate schedule, gradient scaler
                         and every process's random number generators (CPU and GPU); with FSDP instead
                         fsdp_state.pt: the gathered optimizer state, the schedule and every process's RNG state
    trainer_state.json   the step, the TrainConfig, the model's RMTConfig and backbone shape, and the trainer's own
                         state (curriculum stage, early-stopping record)

The folder is filled in a temporary folder next to it and swapped in whole (`rmt.files`), so a crash at any moment
leaves the previous checkpoint intact, and `--resume` never finds a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError

from rmt.config import with_fields_added_later
from rmt.errors import InputError, MissingFileError
from rmt.files import (
    recover_directory,
    replace_directory,
    set_aside_exists,
    temporary_directory,
    write_json_atomic,
)
from rmt.memory.pretrained import save_memory_model
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train import fsdp
from rmt.train.config import TrainConfig

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer_state.json"
# Writes files that belong with a saved model into its folder (e.g. the tokenizer).
SaveExtras = Callable[[Path], None]
_BACKBONE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def save_checkpoint(
    path: Path,
    accelerator: Accelerator,
    model: RecurrentMemoryModel,
    step: int,
    config: TrainConfig,
    trainer_state: dict[str, Any],
    save_extras: SaveExtras | None = None,
    sharded: tuple[Any, Any] | None = None,
) -> None:
    """Write the checkpoint of `step` to `path`. Every process must call it (each saves its own RNG state).
    `save_extras(folder)`: writes files that belong with the model, e.g. the tokenizer. `sharded`: (optimizer,
    scheduler) of a model whose layers are sharded with FSDP (`rmt.train.fsdp`), whose state is gathered instead of
    going through Accelerate's save_state."""
    tmp = [str(temporary_directory(path)) if accelerator.is_main_process else None]
    broadcast_object_list(tmp)  # the main process's folder, for everyone
    tmp_dir = Path(tmp[0])
    try:
        accelerator.wait_for_everyone()
        weights = None
        if sharded is not None:
            weights = fsdp.save_state(tmp_dir, model, *sharded, accelerator)
        else:
            with _quiet_about_tied_parameters(model):
                accelerator.save_state(str(tmp_dir / "accelerate"))
        if accelerator.is_main_process:
            save_memory_model(model, tmp_dir / "model", state_dict=weights, progress=config.progress)
            if save_extras is not None:
                save_extras(tmp_dir / "model")
            record = {
                "step": step,
                "train_config": asdict(config),
                "rmt_config": model.config.to_dict(),
                "backbone": _backbone_shape(model),
                "trainer": trainer_state,
                "processes": accelerator.num_processes,  # with the batch settings, the global batch's size
            }
            write_json_atomic(tmp_dir / TRAINER_STATE, record)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_directory(tmp_dir, path)
    finally:
        if accelerator.is_main_process and tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _quiet_about_tied_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Drop Accelerate's "Removed shared tensor ... while saving" warning when every tensor it names is a parameter
    that the model itself shares between two modules (an LM head tied to the input embeddings): safetensors stores
    such a tensor once, and loading it into the one Parameter restores both places (tested). The warning would
    otherwise be printed at every checkpoint of SmolLM2 or GPT-2. Any other aliasing still warns."""
    names_by_parameter: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_parameter.setdefault(id(parameter), []).append(name)
    tied = {name for names in names_by_parameter.values() if len(names) > 1 for name in names}

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Removed shared tensor" not in message:
            return True
        # Under DDP the saved state dict's names carry the wrapper's "module." prefix.
        named = {name.removeprefix("module.") for name in re.findall(r"'([^']+)'", message)}
        return not named or not named <= tied

    accelerate_logger = logging.getLogger("accelerate.utils.other")
    accelerate_logger.addFilter(keep)
    try:
        yield
    finally:
        accelerate_logger.removeFilter(keep)


def read_checkpoint(
    path: Path, accelerator: Accelerator, model: RecurrentMemoryModel, config: TrainConfig | None = None
) -> dict[str, Any]:
    """The trainer_state.json record of the checkpoint at `path`, once it is known to fit: refuses a checkpoint of
    another model, or (given the run's `config`) one whose LoRA adapters, trained parameters, FSDP sharding or
    optimization settings differ from the run's, with a message that names the difference. Loads nothing into the
    model: a caller's further checks may still refuse the resume with the model as it was (`restore_checkpoint`
    then loads)."""
    if accelerator.is_main_process:
        recover_directory(path)
    accelerator.wait_for_everyone()
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise MissingFileError(
            f"cannot resume: no checkpoint at {path} (run without --resume to start a new run)"
            if not path.exists()
            else f"cannot resume: checkpoint {path} is incomplete: {TRAINER_STATE} is missing"
        )
    try:
        record = json.loads(state_file.read_text())
        step = int(record["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot resume: {state_file} is corrupt: {err}") from err
    record["step"] = step
    _check_same_model(record, model, path)
    if config is not None:
        _check_same_sharding(record, config, path)
        _check_same_adapters(record, config, path)
        _check_same_optimization(record, config, path, accelerator.num_processes)
    return record


def restore_checkpoint(
    path: Path, accelerator: Accelerator, model: RecurrentMemoryModel, sharded: tuple[Any, Any] | None = None
) -> None:
    """Restore model, optimizer, schedule, scaler and RNGs from the checkpoint at `path` that `read_checkpoint`
    accepted (prepared objects registered with `accelerator`; `sharded`: (optimizer, scheduler) of an FSDP-sharded
    model); a damaged checkpoint is refused with a message that names the file."""
    if sharded is None:
        _check_accelerate_state(path / "accelerate", accelerator)
    state = path / fsdp.STATE_FILE if sharded is not None else path / "accelerate"
    try:
        if sharded is not None:
            fsdp.load_state(path, model, *sharded, accelerator)
        else:
            accelerator.load_state(str(state))
    except (OSError, EOFError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        raise InputError(f"cannot resume: checkpoint {state} is incomplete or corrupt: {err}") from err


def _check_accelerate_state(folder: Path, accelerator: Accelerator) -> None:
    """Accelerate's part of a checkpoint must be there, and this process's random state readable: accelerate itself
    only logs a failure to restore it, and the resumed run's dropout and data order would then differ unseen. A
    process the checkpoint had no random state for (more processes now than then) is told so."""
    if not folder.is_dir():
        raise InputError(f"cannot resume: checkpoint {folder.parent} is incomplete: {folder.name}/ is missing")
    random_state = folder / f"random_states_{accelerator.process_index}.pkl"
    if not random_state.is_file():
        fsdp.note_missing_random_state(folder, accelerator.process_index)
        return
    try:
        torch.load(random_state, weights_only=False)  # written by this run's own accelerate: a trusted file
    except Exception as err:  # any failure to unpickle it means the file is damaged
        raise InputError(f"cannot resume: {random_state} is damaged: {err}") from err


class CheckpointDifferenceError(InputError):
    """A resume refused for settings that differ from the checkpoint's. `changes`: (setting, checkpoint's value,
    now); `named(names)` gives the same refusal with settings renamed (a command line names its own flags)."""

    def __init__(self, path: Path, changes: list[tuple[str, Any, Any]], names: dict[str, str] | None = None) -> None:
        self.path, self.changes = path, changes
        names = names or {}
        listed = "; ".join(f"{names.get(key, key)}: checkpoint {saved!r}, now {now!r}" for key, saved, now in changes)
        super().__init__(self.message(path, listed))

    @staticmethod
    def message(path: Path, listed: str) -> str:
        raise NotImplementedError

    def named(self, names: dict[str, str]) -> CheckpointDifferenceError:
        return type(self)(self.path, self.changes, names)


class ModelMismatchError(CheckpointDifferenceError):
    """A resume into a model other than the checkpoint's; a setting is an RMTConfig field or "backbone KEY"."""

    @staticmethod
    def message(path: Path, listed: str) -> str:
        return (
            f"cannot resume from {path}: it was trained with a different model ({listed}); resume with the same "
            "settings or start a new run in another --output"
        )


def _check_same_model(record: dict[str, Any], model: RecurrentMemoryModel, path: Path) -> None:
    differences = []
    saved = record.get("rmt_config", {})
    # A field the record lacks was added to RMTConfig after the checkpoint was written: the checkpoint's model had
    # the value of the models before the field, as the model loaded from it has now.
    before = with_fields_added_later(saved) if saved else {}
    for key, value in model.config.to_dict().items():
        if key in before and before[key] != value:
            differences.append((key, before[key], value))
    for key, value in _backbone_shape(model).items():
        saved_value = record.get("backbone", {}).get(key)
        if saved_value is not None and saved_value != value:
            differences.append((f"backbone {key}", saved_value, value))
    if differences:
        raise ModelMismatchError(path, differences)


# Settings a resumed run cannot change. The optimizer state restored from the checkpoint holds the learning rates
# and weight decay (a new value would be overridden without a word); a new schedule shape would make the learning
# rate jump mid-run; the batches after the checkpoint are drawn from the seed and the global batch's size. How the
# global batch is split (batch size, accumulation, processes) may change: the gradient is the same.
RESUME_FIXED = (
    "learning_rate",
    "memory_learning_rate",
    "weight_decay",
    "decayed_parameters",
    "lr_schedule",
    "warmup_steps",
    "min_lr_factor",
    "seed",
    "trainable",  # the optimizer's parameter groups hold what trained
)
GLOBAL_BATCH = "global_batch"  # batch_size x grad_accumulation x processes, in ResumeSettingsError.changes


class ResumeSettingsError(CheckpointDifferenceError):
    """A resume with training settings the checkpoint's run did not have; a setting is a TrainConfig field or
    GLOBAL_BATCH."""

    @staticmethod
    def message(path: Path, listed: str) -> str:
        return (
            f"cannot resume from {path} with other training settings ({listed}): the restored optimizer, schedule "
            "and data order would not follow them; resume with the checkpoint's settings, or start a new run from "
            "its model"
        )


def _check_same_optimization(record: dict[str, Any], config: TrainConfig, path: Path, processes: int) -> None:
    """Refuse to resume with settings the checkpoint's state would silently override or that change the data."""
    saved, now = record.get("train_config", {}), asdict(config)
    changes = [(key, saved[key], now[key]) for key in RESUME_FIXED if key in saved and saved[key] != now[key]]
    global_batch = config.batch_size * config.grad_accumulation * processes
    saved_batch = (
        saved.get("batch_size", config.batch_size)
        * saved.get("grad_accumulation", config.grad_accumulation)
        * record.get("processes", processes)  # checkpoints from before it was recorded: taken as unchanged
    )
    if saved_batch != global_batch:
        changes.append((GLOBAL_BATCH, saved_batch, global_batch))
    if changes:
        raise ResumeSettingsError(path, changes)


def _check_same_sharding(record: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """An FSDP checkpoint holds gathered weights and optimizer state where Accelerate's holds its own folder: the two
    layouts do not read each other."""
    saved = record.get("train_config", {}).get("fsdp")
    if saved is not None and saved != config.fsdp:
        raise InputError(
            f"cannot resume from {path}: it was saved {'with' if saved else 'without'} fsdp (layers sharded with "
            f"FSDP) and this run {'shards' if config.fsdp else 'does not shard'} them; resume "
            f"{'with' if saved else 'without'} --fsdp, or start a new run from its model"
        )


def _check_same_adapters(record: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint's model and optimizer state hold LoRA adapters exactly when its run added them, in their shape."""
    saved, now = record.get("train_config", {}), asdict(config)
    if "lora" not in (saved.get("trainable"), config.trainable):
        return
    keys = ("trainable", "lora_rank", "lora_alpha", "lora_targets")  # alpha scales what the adapters hold
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, now {now[key]!r}" for key in keys if saved.get(key) != now[key]
    ]
    if differences:
        raise InputError(
            f"cannot resume from {path}: it trained other parameters ({'; '.join(differences)}); "
            "resume with the same --trainable and LoRA settings or start a new run in another --output"
        )


def _backbone_shape(model: RecurrentMemoryModel) -> dict[str, Any]:
    config = model.backbone.config
    return {key: getattr(config, key, None) for key in _BACKBONE_KEYS}


def checkpoint_exists(output_dir: str | os.PathLike) -> bool:
    """Whether OUTPUT/checkpoint holds a checkpoint to resume from (also one that a crash left set aside, which
    `read_checkpoint` restores). Reads only: every process may ask."""
    path = Path(output_dir) / CHECKPOINT_DIR
    return (path / TRAINER_STATE).is_file() or set_aside_exists(path)
