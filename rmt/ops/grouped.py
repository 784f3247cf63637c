"""One linear map per layer of a group, applied together: x [G, ..., in] through weights [G, out, in] (+ bias [G, out]).

The diagonal engine's grouped decoder layers (`rmt.backbones.layers.StackedLayers`) and ARMT's grouped memory
projections (`rmt.ops.associative.project`) both run it. On a GPU it is one batched matmul (fewer kernel launches);
the activations' inner dims are flattened so the weight is never broadcast (and copied) over them. On a CPU it is
each layer's own `F.linear`, the product the model's layer computes: a CPU BLAS may take another kernel for a batched
product than for a single one (measured: bf16 products of 18 to 32 rows), and then a group would round differently
from the same layers run one at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, batched: bool | None = None
) -> torch.Tensor:
    """x [G, ..., in] -> [G, ..., out], row g through weight[g] (+ bias[g]). batched: one batched matmul (True) or
    each layer's `F.linear` (False); None (the default) picks by device, batched everywhere but on a CPU."""
    if batched is None:
        batched = x.device.type != "cpu"
    if not batched:
        return torch.stack([F.linear(x[g], weight[g], None if bias is None else bias[g]) for g in range(x.shape[0])])
    group, out = weight.shape[0], weight.shape[1]
    flat = x.reshape(group, -1, x.shape[-1])  # [G, N, in]
    if bias is None:
        product = torch.bmm(flat, weight.transpose(1, 2))
    else:
        product = torch.baddbmm(bias[:, None, :], flat, weight.transpose(1, 2))
    return product.reshape(*x.shape[:-1], out)
