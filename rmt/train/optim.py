"""Which parameters train, with which learning rate, and the optimizer and schedule that update them.

Two groups: the parameters the memory wrapper adds (memory embeddings, ARMT projections) together with a freshly
initialised classification head, at `memory_learning_rate`; and the pretrained backbone at `learning_rate`.
`trainable="memory"` freezes the backbone (the head of a classifier still trains: a pretrained encoder has none for
the task); `trainable="lora"` freezes it too except its LoRA adapters (`rmt.backbones.lora`), which then form the
backbone group. AdamW; warmup then cosine / linear / constant through transformers' schedules. With
decayed_parameters="matrices" each group is split in two: the parameters of two or more dimensions, which decay, and
the rest (biases, normalisation gains) at weight decay 0.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler

from rmt.backbones.lora import CLASSIFIER_HEADS
from rmt.errors import InputError
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train.config import TrainConfig


def parameter_groups(model: RecurrentMemoryModel, trainable: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(memory and head parameters, backbone parameters) that train, after setting each parameter's requires_grad
    as `trainable` says: every parameter for "all", the wrapper's and a classifier head's for "memory", those and
    the LoRA adapters for "lora". Set, not only cleared: a model that its user froze trains whole with "all"
    (`train` restores the flags when it ends)."""
    head = task_head_ids(model)
    memory, backbone = [], []
    for name, param in model.named_parameters():
        in_backbone = name.startswith("backbone.")
        own = not in_backbone or id(param) in head
        if trainable == "lora" and in_backbone:  # adding the adapters froze the backbone, its task head included
            param.requires_grad_(".lora_" in name or id(param) in head)
        else:
            param.requires_grad_(trainable == "all" or own)
        if param.requires_grad:
            (memory if own else backbone).append(param)
    return memory, backbone


def task_head_ids(model: RecurrentMemoryModel) -> set[int]:
    """The ids of a sequence classifier's task head parameters (new for every task, so they train with the memory);
    empty for a causal LM."""
    head: set[int] = set()
    if not model.token_logits:
        for name in CLASSIFIER_HEADS:
            module = getattr(model.backbone, name, None)
            if isinstance(module, nn.Module):
                head.update(id(p) for p in module.parameters())
    return head


def build_optimizer(
    model: RecurrentMemoryModel, config: TrainConfig, foreach: bool | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters in their groups (memory, then backbone: the last group's rate is the
    backbone's), and its learning-rate schedule. foreach=False for groups that mix sharded (DTensor) and plain
    parameters, which the fused multi-tensor kernels cannot take."""
    memory, backbone = parameter_groups(model, config.trainable)
    if not memory and not backbone:
        raise InputError(
            f"trainable={config.trainable!r} leaves nothing to train: this model has no memory parameters (0 memory "
            "tokens); train all of it, or give it memory tokens"
        )
    groups = []
    for name, params, lr in (("memory", memory, config.memory_lr), ("backbone", backbone, config.learning_rate)):
        if config.decayed_parameters == "matrices":
            groups.append({"params": [p for p in params if p.dim() >= 2], "lr": lr, "name": name})
            groups.append({"params": [p for p in params if p.dim() < 2], "lr": lr, "name": name, "weight_decay": 0.0})
        else:
            groups.append({"params": params, "lr": lr, "name": name})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay, foreach=foreach)
    names = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}
    extra = {"min_lr_rate": config.min_lr_factor} if config.lr_schedule == "cosine" else None
    scheduler = get_scheduler(
        names[config.lr_schedule],
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.steps,
        scheduler_specific_kwargs=extra,
    )
    return optimizer, scheduler


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
