"""Per-layer operations of a group of layers, applied together: row g of x [G, ...] through layer g's weights.

The diagonal engine's grouped decoder layers (`rmt.backbones.layers.StackedLayers`) and ARMT's grouped memory
projections (`rmt.ops.associative.project`) run them. One rule for both: on a GPU a group is one batched kernel
(fewer launches); on a CPU it is each layer's own call, the computation the model's layer makes, because a batched
kernel sums in another order there (measured: bf16 products of 18 to 32 rows; LayerNorm normalised over the group and
scaled after, a few bf16 elements in thousands), and then a group would round differently from the same layers run
one at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, batched: bool | None = None
) -> torch.Tensor:
    """x [G, ..., in] -> [G, ..., out], row g through weight [G, out, in][g] (+ bias [G, out][g]). batched: one
    batched matmul (True) or each layer's `F.linear` (False); None (the default) picks by device (`_batched`). The
    batched product flattens the activations' inner dims, so the weight is never broadcast (and copied) over them."""
    if not _batched(x, batched):
        return torch.stack([F.linear(x[g], weight[g], None if bias is None else bias[g]) for g in range(x.shape[0])])
    group, out = weight.shape[0], weight.shape[1]
    flat = x.reshape(group, -1, x.shape[-1])  # [G, N, in]
    if bias is None:
        product = torch.bmm(flat, weight.transpose(1, 2))
    else:
        product = torch.baddbmm(bias[:, None, :], flat, weight.transpose(1, 2))
    return product.reshape(*x.shape[:-1], out)


def grouped_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, batched: bool | None = None
) -> torch.Tensor:
    """x [G, N, D] through each layer's LayerNorm (weight [G, D], bias [G, D] or None). batched: the whole group
    normalised in fp32 and its affine applied after (True), or each layer's `F.layer_norm` (False); None picks by
    device (`_batched`)."""
    if not _batched(x, batched):
        return torch.stack(
            [F.layer_norm(x[g], x.shape[-1:], weight[g], None if bias is None else bias[g], eps) for g in range(len(x))]
        )
    normed = F.layer_norm(x.float(), x.shape[-1:], eps=eps) * weight[:, None, :].float()
    return (normed if bias is None else normed + bias[:, None, :].float()).to(x.dtype)


def _batched(x: torch.Tensor, batched: bool | None) -> bool:
    """The group's kernel: `batched` where given, else batched everywhere but on a CPU (see the module's docstring)."""
    return x.device.type != "cpu" if batched is None else batched
