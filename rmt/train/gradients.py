"""Gradients averaged over processes by hand, for training loops that backpropagate segment by segment: DDP's own
hooks expect one backward pass per forward, and `forward_backward` runs one per segment (or window of segments), so
`rmt.train.loop` and `rmt.train.MemoryTrainer` run it outside DDP's synchronisation and average here once per step."""

from __future__ import annotations

import torch
from accelerate.utils import reduce

ALL_REDUCE_BUCKET = 2**24  # gradient elements per all-reduce call: bounds the flat buffer


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average `.grad` over processes in flat buckets; every process passes the same parameters in the same order
    (a missing gradient counts as zeros), so the collectives always pair up. A parameter that no process gave a
    gradient keeps none, as in one process: AdamW skips it (zeros would still move it by its momentum and weight
    decay, and count an Adam step; ARMT's write projections get no gradient at one segment)."""
    if not params:
        return
    # 1 where this process has a gradient, averaged with the last bucket (no collective of its own): 0 = none had one.
    given = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    start = 0
    while start < len(grads):
        end, size = start, 0
        while end < len(grads) and (size == 0 or size + grads[end].numel() <= ALL_REDUCE_BUCKET):
            size += grads[end].numel()
            end += 1
        pieces = [g.reshape(-1).float() for g in grads[start:end]]
        flat = reduce(torch.cat([*pieces, given] if end == len(grads) else pieces), reduction="mean")
        offset = 0
        for param, grad in zip(params[start:end], grads[start:end], strict=True):
            param.grad = flat[offset : offset + grad.numel()].view_as(grad).to(grad.dtype)
            offset += grad.numel()
        start = end
    for param, share in zip(params, flat[offset:].tolist(), strict=True):
        if share == 0:
            param.grad = None
