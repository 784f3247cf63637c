"""LoRA adapters on a backbone's linear layers, through `peft`: added for training, merged back into the weights.

    add_lora(model.backbone, rank=8, alpha=16)   # the backbone's linear layers get adapters (peft's LoRA layers)
    merged_state_dict(model)                     # the weights as if merged, names as without adapters
    merge_lora(model)                            # merge in place and remove the adapter layers

The trainer (`TrainConfig.trainable="lora"`) adds adapters before training and merges them at the end, and every
model folder it writes holds merged weights under the backbone's own names: `rmt eval`, `from_pretrained` and the
diagonal engine read it like any other model, without peft. Only a checkpoint's optimizer state (for `--resume`)
keeps the adapters apart.

By default every linear layer of the backbone gets an adapter except its output head (the LM head, tied to the
token embeddings in many models, or a classification head, which the trainer trains whole). `peft` is an optional
dependency (`pip install "rmt[lora]"`); only `add_lora` needs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from rmt.config import RMTConfig
from rmt.errors import InputError

ADAPTER = "default"  # peft's name for the one adapter added here
# Top-level modules of a sequence-classification backbone that hold its task head.
CLASSIFIER_HEADS = ("classifier", "score")


def has_lora_layers(module: nn.Module) -> bool:
    """Whether `module` holds LoRA adapter layers (checked without importing peft)."""
    return next(_lora_layers(module), None) is not None


def default_lora_targets(backbone: nn.Module) -> list[str]:
    """Full names of the backbone's linear layers (nn.Linear, or GPT-2's Conv1D) other than its output head."""
    from transformers.pytorch_utils import Conv1D

    heads = [_output_head(backbone), *(getattr(backbone, name, None) for name in CLASSIFIER_HEADS)]
    excluded = {id(m) for head in heads if isinstance(head, nn.Module) for m in head.modules()}
    embeddings = _embedding_weights(backbone)
    return [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and id(module) not in excluded and not _tied(module, embeddings)
    ]


def add_lora(
    backbone: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: list[str] | None = None,
) -> int:
    """Add LoRA adapters (update scale alpha / rank) to `backbone` in place; returns the number of adapted layers.

    `targets`: module names, or endings of module names after a dot (peft's target_modules, e.g. q_proj,v_proj);
    default: `default_lora_targets`. The adapters start as a zero update (peft's initialisation, drawn from torch's
    global generator), so the model's outputs do not change until they train. Freezing is the caller's choice:
    peft marks only adapter weights trainable, the trainer then reopens what it trains besides."""
    from transformers.pytorch_utils import Conv1D

    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise InputError('LoRA needs the peft package: pip install "rmt[lora]" (or pip install peft)') from err
    if isinstance(getattr(backbone, "config", None), RMTConfig):  # a memory model: its projections, its tied head
        raise InputError("add_lora takes the backbone: pass model.backbone, not the memory model")
    if has_lora_layers(backbone):
        raise InputError("the backbone already has LoRA adapters; merge them first (rmt.backbones.lora.merge_lora)")
    if isinstance(targets, str):  # "q_proj,v_proj", as the command line writes them
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if targets is not None and not targets:
        raise InputError("the LoRA targets are empty: name the layers to adapt, or give none for every linear layer")
    targets = list(targets) if targets is not None else default_lora_targets(backbone)
    if not targets:
        raise InputError("the backbone has no linear layers to put LoRA adapters on")
    output = _output_head(backbone)
    embeddings = _embedding_weights(backbone)
    for name, module in backbone.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if module is output or _tied(module, embeddings):
            raise InputError(
                f"no LoRA adapter on the output head {name!r}: many models share its weight with the token "
                "embeddings, which a merged update would change too; leave it out of the targets"
            )
        if not isinstance(module, (nn.Linear, Conv1D)):  # peft adapts embeddings apart, and merging here would not
            raise InputError(
                f"LoRA adapters go on linear layers here; {name!r} is a {type(module).__name__}: leave it out of "
                "the targets"
            )
    transposed = any(isinstance(m, Conv1D) for m in backbone.modules())  # GPT-2 stores its weights [in, out]
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, fan_in_fan_out=transposed
    )
    try:
        inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
    except ValueError as err:  # peft: no module matches a target, or a module type it cannot adapt
        raise InputError(f"cannot add LoRA adapters to {', '.join(targets)}: {err}") from err
    return sum(1 for _ in _lora_layers(backbone))


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every LoRA layer's update merged into its weight and the names a model without
    adapters has (`x.base_layer.weight` -> `x.weight`, adapter tensors dropped). `model` is not changed."""
    prefixes = {name + ".": layer for name, layer in _lora_layers(model)}
    merged = {}
    for key, tensor in model.state_dict().items():
        prefix = _owner(key, prefixes)
        if prefix is None:
            merged[key] = tensor
            continue
        rest = key[len(prefix) :]
        if not rest.startswith("base_layer."):
            continue  # the adapter's own tensors
        rest = rest.removeprefix("base_layer.")
        if rest == "weight":
            tensor = _merged_weight(prefixes[prefix])
        merged[prefix + rest] = tensor
    return merged


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer's update into its base layer and put the base layer back in its place, in place;
    returns the number of layers merged. Afterwards the module tree and parameter names are the backbone's own, and
    every parameter's requires_grad is as peft left it (the base weights frozen; the trainer restores its own)."""
    layers = list(_lora_layers(model))
    for name, layer in layers:
        base = layer.get_base_layer()
        with torch.no_grad():
            base.weight.copy_(_merged_weight(layer))
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, base)
    for module in model.modules():  # peft's record of the adapters it added, on the module it added them to
        if "peft_config" in vars(module):
            del module.peft_config
    return len(layers)


def _output_head(backbone: nn.Module) -> nn.Module | None:
    return backbone.get_output_embeddings() if hasattr(backbone, "get_output_embeddings") else None


def _embedding_weights(backbone: nn.Module) -> set[int]:
    """The ids of the backbone's embedding weights (looked up once, not once per layer)."""
    return {id(m.weight) for m in backbone.modules() if isinstance(m, nn.Embedding)}


def _tied(module: nn.Module, embedding_weights: set[int]) -> bool:
    """Whether `module`'s weight is an embedding's too (a tied LM head; `embedding_weights`: the ids from
    `_embedding_weights`): a merged update would change both."""
    weight = getattr(module, "weight", None)
    return weight is not None and not isinstance(module, nn.Embedding) and id(weight) in embedding_weights


def _merged_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight plus the update of every adapter the layer applies: its active adapters (any name, a
    user's own too) that peft has not already merged into the base weight itself."""
    base = layer.get_base_layer().weight
    if getattr(layer, "lora_embedding_A", {}):  # never returned unmerged: its trained update would be lost
        raise InputError("a LoRA adapter on an embedding layer cannot be merged here; adapt linear layers")
    applied = [] if layer.disable_adapters else layer.active_adapters
    pending = [name for name in applied if name in layer.lora_A and name not in layer.merged_adapters]
    merged = base.detach().float()
    for name in pending:
        merged = merged + layer.get_delta_weight(name).detach().float()
    return merged.to(base.dtype)


def _owner(key: str, prefixes: dict[str, nn.Module]) -> str | None:
    """The LoRA layer prefix that `key` lies under (LoRA layers do not nest), or None."""
    head = key
    while "." in head:
        head = head.rpartition(".")[0]
        if head + "." in prefixes:
            return head + "."
    return None


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((name, m) for name, m in model.named_modules() if _is_lora_layer(m))


def _is_lora_layer(module: nn.Module) -> bool:
    # peft's LoRA layers wrap the original layer as `base_layer` and hold the adapters in `lora_A`/`lora_B`.
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")
