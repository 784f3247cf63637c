"""ARMT associative memory: the vectorised path (rmt/ops/associative.py) against the loop oracle (rmt/ops/naive.py).

Inputs are random with a non-zero W_v (the model starts W_v at zero, which would make these checks vacuous), and
every batch mixes samples on their first segment with samples that already hold a memory.
"""

from __future__ import annotations

import pytest
import torch

from rmt.ops import associative, naive

B, T, M, D, D_MEM = 3, 5, 4, 16, 4
K = 6 * D_MEM


def _inputs(
    seed: int = 0, b: int = B, t: int = T, m: int = M, d: int = D, d_mem: int = D_MEM
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = 6 * d_mem

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return {
        "h": rand(b, t, d),
        "m": rand(b, m, d),
        "A": rand(b, k, d, scale=0.3),
        # z is a sum of non-negative features in real use; keep it positive so z.q is a real normaliser.
        "z": (torch.rand(b, k, generator=g) * 2 + 0.1).requires_grad_(),
        "w_q": rand(d_mem, d, scale=d**-0.5),
        "w_k": rand(d_mem, d, scale=d**-0.5),
        "w_v": rand(d, d, scale=d**-0.5),
        "w_b": rand(1, d, scale=d**-0.5),
        "first": torch.arange(b) == 0,
    }


def _grads(outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    loss = sum((out * torch.randn(out.shape, generator=g)).sum() for out in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def test_dpfp_matches_oracle_and_is_nonnegative():
    x = torch.randn(2, 3, 7)
    fast = associative.dpfp(x)
    assert fast.shape == (2, 3, 42)
    torch.testing.assert_close(fast, naive.dpfp(x), rtol=0, atol=0)
    assert bool((fast >= 0).all())


def test_read_matches_oracle_outputs_and_gradients():
    x = _inputs()
    args = [x["h"], x["A"], x["z"], x["w_q"]]
    fast = associative.associative_read(*args, x["first"])
    slow = naive.read(*args, x["first"])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # A first-segment sample is left untouched; the others really read.
    torch.testing.assert_close(fast[0], x["h"][0])
    assert (fast[1:] - x["h"][1:]).abs().max() > 1e-2
    for a, b in zip(_grads((fast,), args, 1), _grads((slow,), args, 1), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_write_matches_oracle_outputs_and_gradients():
    x = _inputs()
    args = [x["m"], x["A"], x["z"], x["w_k"], x["w_v"], x["w_b"]]
    fast = associative.associative_write(*args, x["first"])
    slow = naive.write(*args, x["first"])
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    fast_grads = _grads(fast, args, 2)
    for a, b in zip(fast_grads, _grads(slow, args, 2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in fast_grads)


def test_first_segment_rules_from_an_empty_memory():
    """From A = 0, z = 0 a first write stores sum beta_i k_i^T v_i and z = sum k_i (gamma = 1, vbar = 0)."""
    x = _inputs(3)
    m, w_k, w_v, w_b = x["m"].detach(), x["w_k"].detach(), x["w_v"].detach(), x["w_b"].detach()
    A0, z0 = torch.zeros(B, K, D), torch.zeros(B, K)
    first = torch.ones(B, dtype=torch.bool)
    A1, z1 = associative.associative_write(m, A0, z0, w_k, w_v, w_b, first)
    k = associative.dpfp(m @ w_k.T)
    beta = torch.sigmoid(m @ w_b.T)
    torch.testing.assert_close(A1, (beta * k).transpose(1, 2) @ (m @ w_v.T), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z1, k.sum(1), rtol=1e-5, atol=1e-6)
    # Second segment through both paths, chained.
    not_first = torch.zeros(B, dtype=torch.bool)
    fast = associative.associative_write(m.flip(1), A1, z1, w_k, w_v, w_b, not_first)
    slow = naive.write(m.flip(1), A1, z1, w_k, w_v, w_b, not_first)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    h = x["h"].detach()
    # Read both ways from the same memory: the read is ill-conditioned where z.q is small, so feeding it the two
    # paths' (equal to ~1e-7 relative) memories would test that conditioning rather than the read.
    torch.testing.assert_close(
        associative.associative_read(h, *fast, x["w_q"].detach(), not_first),
        naive.read(h, *fast, x["w_q"].detach(), not_first),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("size", ["tiny", "smollm2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["read", "write"])
def test_grouped_weights_equal_per_layer_calls_bit_for_bit(op, dtype, size):
    """The diagonal engine's form: G layers' weights stacked [G, out, in], tensors [G, B, ...], gives each layer's
    own result exactly, so grouped cells never drift from sequential ARMT. Five layers: a group's elementwise ops
    (beta's sigmoid) then run on full vectors where one layer's run on a tail, which rounded differently in fp32.
    The SmolLM2-sized memory (width 576, d_mem 64, 16 memory tokens) is where a matrix-vector product for z.k
    took another kernel for a group than for one layer."""
    shape = {"tiny": {}, "smollm2": {"b": 2, "t": 40, "m": 16, "d": 576, "d_mem": 64}}[size]
    groups = [_inputs(seed, **shape) for seed in (4, 5, 6, 7, 8)]
    stack = {name: torch.stack([g[name].detach() for g in groups]) for name in groups[0]}
    model_dtype = ("h", "m", "w_q", "w_k", "w_v", "w_b")  # the memory (A, z) stays fp32 in a bf16 model

    def cast(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: t.detach().to(dtype) if n in model_dtype else t.detach() for n, t in x.items()}

    stack = cast(stack)
    if op == "read":
        grouped = associative.associative_read(stack["h"], stack["A"], stack["z"], stack["w_q"], stack["first"])
        for i, g in enumerate(map(cast, groups)):
            one = associative.associative_read(g["h"], g["A"], g["z"], g["w_q"], g["first"])
            assert torch.equal(grouped[i], one)
    else:
        names = ["m", "A", "z", "w_k", "w_v", "w_b", "first"]
        grouped = associative.associative_write(*(stack[n] for n in names))
        for i, g in enumerate(map(cast, groups)):
            one = associative.associative_write(*(g[n] for n in names))
            for a, b in zip(grouped, one, strict=True):
                assert torch.equal(a[i], b)


def test_bf16_inputs_keep_fp32_memory():
    x = _inputs(6)
    h, m = x["h"].detach().bfloat16(), x["m"].detach().bfloat16()
    w = {n: x[n].detach().bfloat16() for n in ("w_q", "w_k", "w_v", "w_b")}
    A, z = associative.associative_write(m, x["A"].detach(), x["z"].detach(), w["w_k"], w["w_v"], w["w_b"], x["first"])
    assert A.dtype == torch.float32 and z.dtype == torch.float32
    assert associative.associative_read(h, A, z, w["w_q"], x["first"]).dtype == torch.bfloat16


def test_normalized_write_matches_oracle_and_ignores_the_scale_of_what_is_written():
    x = _inputs(4)
    args = [x["m"], x["A"], x["z"], x["w_k"], x["w_v"], x["w_b"]]
    fast = associative.associative_write(*args, x["first"], normalize=True)
    slow = naive.write(*args, x["first"], normalize=True)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(fast, args, 5), _grads(slow, args, 5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The point of the option: memory outputs 1000 times larger write the same memory (the plain write does not).
    scaled = [x["m"] * 1000, *args[1:]]
    for a, b in zip(associative.associative_write(*scaled, x["first"], normalize=True), fast, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    plain = associative.associative_write(*args, x["first"])[0].detach()
    assert float((associative.associative_write(*scaled, x["first"])[0].detach() - plain).abs().max()) > 1.0


def test_one_sample_without_a_batch_dimension():
    """The functions also take one sample's tensors ([T, D], [K, D], [K]) and give the batched result's row."""
    x = {name: t.detach() for name, t in _inputs(9).items()}
    batched_write = associative.associative_write(x["m"], x["A"], x["z"], x["w_k"], x["w_v"], x["w_b"], x["first"])
    batched_read = associative.associative_read(x["h"], x["A"], x["z"], x["w_q"], x["first"])
    for b in range(B):
        write = associative.associative_write(
            x["m"][b], x["A"][b], x["z"][b], x["w_k"], x["w_v"], x["w_b"], x["first"][b]
        )
        for one, many in zip(write, batched_write, strict=True):
            assert one.shape == many.shape[1:]
            torch.testing.assert_close(one, many[b], rtol=1e-6, atol=1e-6)
        read = associative.associative_read(x["h"][b], x["A"][b], x["z"][b], x["w_q"], x["first"][b])
        torch.testing.assert_close(read, batched_read[b])
