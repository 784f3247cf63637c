"""Fully sharded training (PyTorch FSDP2) that fits the streaming backward: `TrainConfig(fsdp=True)`.

The backbone's transformer layers are sharded over the processes with `torch.distributed.fsdp.fully_shard` (one unit
per layer: the classes the backbone lists in `_no_split_modules`); everything else (embeddings, final norm, heads, the
memory wrapper's parameters) stays replicated. Sharding per layer is what lets `forward_backward` run its backward
piece by piece: each layer gathers its weights when it runs (forward, or backward of a segment) and reduce-scatters
its gradients after each backward, which accumulate into its shard, so several backward calls per step are fine (a
test compares the gradients with one process). The replicated parameters' gradients are averaged by the trainer's
all-reduce, as without FSDP.

Checkpoints gather the full weights and optimizer state on the main process (`get_model_state_dict` /
`get_optimizer_state_dict` with full state dicts) and write them in the usual layout (model/ is a plain
`save_pretrained` folder), plus every process's RNG states (the CPU generator's, and on a GPU its device's, which
dropout draws from there); resuming loads them and re-shards.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from rmt.errors import InputError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
STATE_FILE = "fsdp_state.pt"


def shard_layers(model: nn.Module, accelerator: Accelerator) -> int:
    """Give every process the main process's weights, then shard each transformer layer of the backbone over the
    processes; returns the number of layers sharded."""
    if getattr(model.config, "xl_cache_recompute", False):
        raise InputError(
            "fsdp cannot shard a model with xl_cache_recompute: it recomputes the cached keys/values with the layers' "
            "projections outside their forward, where sharded weights are not gathered; train it without --fsdp"
        )
    if accelerator.num_processes < 2:
        raise InputError("fsdp shards a model over several processes: launch with torchrun or accelerate launch")
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)
    names = set(getattr(model.backbone, "_no_split_modules", None) or [])
    layers = [module for module in model.backbone.modules() if type(module).__name__ in names]
    if not layers:
        raise InputError(f"fsdp: {type(model.backbone).__name__} names no transformer layer class to shard")
    for layer in layers:
        fully_shard(layer)
    return len(layers)


def is_sharded(param: torch.Tensor) -> bool:
    return isinstance(param, DTensor)


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients so that their global norm is at most `max_norm`; returns the norm before clipping. Sharded
    gradients contribute their local shards' squares summed over processes; replicated ones (equal everywhere after
    the trainer's averaging) count once."""
    device = params[0].device
    sharded = torch.zeros((), device=device)
    replicated = torch.zeros((), device=device)
    for param in params:
        if param.grad is None:
            continue
        if is_sharded(param.grad):
            sharded += param.grad.to_local().float().square().sum()
        else:
            replicated += param.grad.float().square().sum()
    dist.all_reduce(sharded)
    norm = math.sqrt(float(sharded + replicated))
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for param in params:
            if param.grad is not None:
                param.grad.mul_(scale)
    return norm


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full weights, gathered on the main process (empty elsewhere). Every process must call it."""
    return get_model_state_dict(model, options=FULL)


def save_state(
    folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, accelerator: Accelerator
) -> dict[str, torch.Tensor] | None:
    """Gather the full model and optimizer state and every process's RNG state; the main process writes the
    optimizer, schedule and RNG states to `folder` and gets the model's full weights back (to save as model/).
    Every process must call it."""
    weights = full_weights(model)
    optimizer_state = get_optimizer_state_dict(model, _unwrap(optimizer), options=FULL)
    rng = gather_object([_rng_states(accelerator.device)])
    if accelerator.is_main_process:
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng}
        torch.save(state, folder / STATE_FILE)
        return weights
    return None


def _rng_states(device: torch.device) -> dict[str, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_states(states: dict[str, torch.Tensor | None] | torch.Tensor, device: torch.device) -> None:
    """Restore `_rng_states`'s record (a bare tensor: the CPU state alone, as checkpoints before the GPU's held)."""
    if isinstance(states, torch.Tensor):
        states = {"cpu": states, "cuda": None}
    torch.set_rng_state(states["cpu"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def load_state(folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, accelerator: Accelerator) -> None:
    """Restore what `save_state` wrote (and the weights of folder/model) into the sharded model and its optimizer."""
    from rmt.memory.pretrained import load_memory_model

    weights: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {}
    if accelerator.is_main_process:
        weights = load_memory_model(folder / "model").state_dict()
        state = torch.load(folder / STATE_FILE, weights_only=False)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    # The optimizer state goes out shard by shard (broadcast_from_rank0); only the small rest is sent whole, with
    # whether the file held an optimizer state, so that every process refuses a file without one.
    optimizer_state = state.pop("optimizer", None) if accelerator.is_main_process else {}
    if accelerator.is_main_process:
        state["has_optimizer"] = optimizer_state is not None
    shared = [state if accelerator.is_main_process else None]
    dist.broadcast_object_list(shared, src=0)
    state = shared[0]
    if not state["has_optimizer"]:
        raise KeyError(f"{STATE_FILE} holds no optimizer state")
    set_optimizer_state_dict(model, _unwrap(optimizer), optimizer_state, options=options)
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.process_index < len(state["rng"]):
        _set_rng_states(state["rng"][accelerator.process_index], accelerator.device)
    else:
        note_missing_random_state(folder, accelerator.process_index)


def note_missing_random_state(folder: Path, process: int) -> None:
    """Say that a resumed process starts without its saved random state (its checkpoint had fewer processes)."""
    print(
        f"note: {folder} holds no random state for process {process} (it was saved by fewer processes): this "
        "process's random numbers will differ from an uninterrupted run's",
        file=sys.stderr,
    )


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)
