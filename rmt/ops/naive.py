"""Reference (oracle) implementation of ARMT's associative memory: one sample, one token at a time.

Written to be obviously right rather than fast: explicit loops over samples, positions and memory tokens, DPFP built
from an index formula instead of `roll`, each update term added one by one. Tests compare the vectorised path in
`rmt/ops/associative.py` (outputs and gradients) against these functions. Shapes are one layer's:
h [B, T, D], m [B, M, D], A [B, K, D], z [B, K], first [B] bool, weights [out, in].
"""

from __future__ import annotations

import torch

from rmt.ops.associative import EPS


def dpfp(x: torch.Tensor, nu: int = 3) -> torch.Tensor:
    """phi(x) = concat_{j=1..nu} x'[i] * x'[(i - j) mod 2d] with x' = [relu(x), relu(-x)]: [..., d] -> [..., 2d nu]."""
    x = torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=-1)
    n = x.shape[-1]
    index = torch.arange(n, device=x.device)
    return torch.cat([x * x[..., (index - j) % n] for j in range(1, nu + 1)], dim=-1)


def read(h: torch.Tensor, A: torch.Tensor, z: torch.Tensor, w_q: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    rows = []
    for b in range(h.shape[0]):
        positions = []
        for t in range(h.shape[1]):
            if bool(first[b]):
                positions.append(h[b, t])
                continue
            q = dpfp((w_q @ h[b, t]).float())  # [K]
            positions.append(h[b, t] + ((q @ A[b]) / (z[b] @ q + EPS)).to(h.dtype))
        rows.append(torch.stack(positions))
    return torch.stack(rows)


def write(
    m: torch.Tensor,
    A: torch.Tensor,
    z: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_b: torch.Tensor,
    first: torch.Tensor,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    new_A, new_z = [], []
    for b in range(m.shape[0]):
        A_b, z_b = A[b], z[b]
        for i in range(m.shape[1]):
            m_i = m[b, i]
            if normalize:  # unit root mean square, vector by vector
                m_i = (m_i.float() / (m_i.float().pow(2).sum() / m_i.numel() + EPS).sqrt()).to(m.dtype)
            k = dpfp((w_k @ m_i).float())  # [K]
            v = (w_v @ m_i).float()  # [D]
            beta = torch.sigmoid(w_b.float() @ m_i.float())[0]  # from fp32 products, as the vectorised path
            if bool(first[b]):
                v_bar = torch.zeros_like(v)
                gamma = torch.ones(())
            else:
                v_bar = (k @ A[b]) / (z[b] @ k + EPS)  # the memory before this segment's writes
                gamma = (1 - (z[b] @ k + EPS) / (k @ k + EPS)).clamp(0, 1).detach()
            A_b = A_b + beta * torch.outer(k, v - v_bar)
            z_b = z_b + gamma * k
        new_A.append(A_b)
        new_z.append(z_b)
    return torch.stack(new_A), torch.stack(new_z)
