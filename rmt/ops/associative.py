"""The associative memory of ARMT, vectorised: the path the model and the diagonal engine run.

One memory per layer: A [K, D] and z [K] (kept in fp32 whatever the model dtype), with K = 6 * d_mem keys from the
DPFP feature map. Per segment (Rodkin et al. 2024, "Associative Recurrent Memory Transformer"):

    read, every position:   q = phi(W_q h);  h <- h + (q A) / (z . q + eps)              (skipped on a first segment)
    write, memory outputs m_i:  k_i = phi(W_k m_i), v_i = W_v m_i, beta_i = sigmoid(W_b m_i),
                            vbar_i = (k_i A) / (z . k_i + eps)                           (0 on a first segment)
                            gamma_i = clip(1 - (z . k_i + eps) / (|k_i|^2 + eps), 0, 1)  (no gradient; 1 on a first one)
                            A <- A + sum_i beta_i k_i^T (v_i - vbar_i);   z <- z + sum_i gamma_i k_i

With `normalize` (RMTConfig.armt_write_norm, an addition to the published rule) the write first scales each m_i to
unit root mean square, so what the memory stores does not grow with the activations it is written from.

Every function works on one layer ([B, ...] tensors, weights [out, in]) or on a group of G layers at once, as the
diagonal engine needs ([G, B, ...] tensors, weights stacked [G, out, in]): the weight's rank tells which; on a CPU a
group gives each layer's own result bit for bit (tested). `first` is a bool per sample (per cell in a group): True
where this is the sample's first segment, so the first-segment rules apply row by row. `rmt/ops/naive.py` is the
loop-by-loop oracle the tests compare this file against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmt.ops.grouped import grouped_linear

EPS = 1e-5  # keeps the normalisers z.q and |k|^2 away from zero


def dpfp(x: torch.Tensor) -> torch.Tensor:
    """Deterministic parameter-free projection with nu = 3: [..., d] -> [..., 6d], all entries >= 0."""
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # [..., 2d]
    return torch.cat([x * x.roll(j, dims=-1) for j in (1, 2, 3)], dim=-1)  # [..., 6d]


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T for one layer (weight [out, in], x [..., in]) or a group (weight [G, out, in], x [G, ..., in]:
    `rmt.ops.grouped.grouped_linear`, which gives each layer's own result on a CPU)."""
    if weight.dim() == 2:
        return F.linear(x, weight)
    return grouped_linear(x, weight)


def dot(x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """x [..., N, d] . vector -> [..., N, 1] in fp32: vector [..., d] is one vector per matrix of x (z), or one for
    all its rows ([1, d]: W_b of a layer; [G, 1, d]: a group's).

    An elementwise product summed over d, not a matrix-vector product: a matmul kernel's order of summation depends on
    how many leading dims it batches over, so the diagonal engine's grouped cells rounded differently from one
    layer's and its bf16 logits drifted from sequential ARMT's. A sum over the last dim adds in the same order
    whatever the leading dims."""
    if vector.dim() == x.dim() - 1:  # one vector per matrix: broadcast it over the matrix's rows
        vector = vector.unsqueeze(-2)
    return (x.float() * vector.float()).sum(-1, keepdim=True)


def associative_read(
    h: torch.Tensor, A: torch.Tensor, z: torch.Tensor, w_q: torch.Tensor, first: torch.Tensor
) -> torch.Tensor:
    """h + (q A) / (z . q + eps) with q = phi(W_q h); h unchanged on rows where `first` is True.

    h [..., T, D] (model dtype); A [..., K, D] and z [..., K] fp32; w_q [d_mem, D] or [G, d_mem, D]; first [...]."""
    q = dpfp(project(h, w_q).float())  # [..., T, K]
    num = torch.matmul(q, A)  # [..., T, D]
    den = dot(q, z) + EPS  # [..., T, 1]
    read = torch.where(first[..., None, None], 0.0, num / den)
    return h + read.to(h.dtype)


def associative_write(
    m: torch.Tensor,
    A: torch.Tensor,
    z: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_b: torch.Tensor,
    first: torch.Tensor,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory after writing the memory tokens' outputs m [..., M, D]: returns (A [..., K, D], z [..., K]) fp32.

    All memory tokens of a segment write against the same old (A, z), as the sum in the update rule says.
    w_k [d_mem, D], w_v [D, D], w_b [1, D] (or stacked with a leading G); first [...] bool; normalize: scale each
    m_i to unit RMS first."""
    if normalize:  # unit RMS per memory output, computed in fp32
        m = F.rms_norm(m.float(), (m.shape[-1],), eps=EPS).to(m.dtype)
    k = dpfp(project(m, w_k).float())  # [..., M, K]
    v = project(m, w_v).float()  # [..., M, D]
    # sigmoid in float64, rounded to fp32: CPU kernels compute it one way on full vectors and another on a tail of
    # elements, so in fp32 a group's beta and one layer's differed in the last bit; in float64 both round alike.
    beta = torch.sigmoid(dot(m, w_b).double()).float()  # [..., M, 1]
    zk = dot(k, z)  # [..., M, 1]
    old = first[..., None, None]
    v_bar = torch.where(old, 0.0, torch.matmul(k, A) / (zk + EPS))  # [..., M, D]
    # gamma only rescales how much of k_i is counted in the normaliser; it is a statistic, not trained through.
    gamma = (1 - (zk + EPS) / (k.square().sum(-1, keepdim=True) + EPS)).clamp(0, 1).detach()
    gamma = torch.where(old, 1.0, gamma)  # [..., M, 1]
    A = A + torch.matmul((beta * k).transpose(-1, -2), v - v_bar)  # [..., K, D]
    z = z + (gamma * k).sum(dim=-2)  # [..., K]
    return A, z
