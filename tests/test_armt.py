"""ARMTForCausalLM through the shared segment loop: the oracle, identity with the backbone, memory, padding, BPTT,
checkpoints, sliding windows."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, sliding_decoder, strengthen_memory, tiny_decoder

from rmt import RMTConfig
from rmt.errors import InputError
from rmt.memory import armt as armt_module
from rmt.memory.armt import ARMTForCausalLM
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.registry import model_class
from rmt.memory.state import select_rows, tree_map
from rmt.ops import naive

SEG, MEM = 8, 4
FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gpt_neox"]


def armt(family: str = "llama", trained: bool = True, **overrides) -> ARMTForCausalLM:
    """A tiny ARMT; `trained` gives it random memory weights strong enough that memory visibly changes logits
    (the untrained W_v = 0 would make most checks vacuous). "mistral-sliding" and "qwen2-sliding": a sliding window
    of exactly [segment | memory tokens] (the shortest ARMT takes; Qwen2's first layer attends to all places)."""
    config = RMTConfig(memory_kind="armt", num_memory_tokens=MEM, segment_size=SEG, d_mem=4, **overrides)
    if family.endswith("-sliding"):
        backbone = sliding_decoder(family.removesuffix("-sliding"), SEG + MEM)
    else:
        backbone = tiny_decoder(family)
    model = ARMTForCausalLM(backbone, config).eval()
    return strengthen_memory(model) if trained else model


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _assert_states_close(a, b) -> None:
    """Every tensor of two memory states equal up to fp32 rounding, relative to its size: the associative state's
    entries reach about 6, where a different order of the same sums (another CPU's kernels) moves the last bit."""
    tree_map(lambda x, y: torch.testing.assert_close(x.float(), y.float(), rtol=1e-5, atol=1e-5) or x, a, b)


def oracle(model: ARMTForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """ARMT from its definition, independent of `DecoderAdapter`: per segment, the backbone's own forward (its own
    masks, sliding windows included, positions and embedding dropout) on the embeddings of [segment | memory tokens],
    each decoder layer's input read from its memory and its output at the memory tokens written to it by the loop
    oracle (rmt/ops/naive.py), hooked around HF's own layer calls. ids [B, N] unpadded. Returns (logits [B, N, V],
    the final layers' (A, z))."""
    batch = ids.shape[0]
    state = model.initial_state(batch)[0]
    first = torch.ones(batch, dtype=torch.bool)
    pieces = []
    for start in range(0, ids.shape[1], SEG):
        logits, state = _oracle_segment(model, ids[:, start : start + SEG], state, first)
        pieces.append(logits)
        first = torch.zeros_like(first)
    return torch.cat(pieces, dim=1), state


def _oracle_segment(
    model: ARMTForCausalLM, ids: torch.Tensor, state: tuple, first: torch.Tensor
) -> tuple[torch.Tensor, tuple]:
    """One segment of `oracle`: (token logits [B, t, V], the layers' new (A, z))."""
    backbone, t = model.backbone, ids.shape[1]
    x = torch.cat([backbone.get_input_embeddings()(ids), model.memory.expand(ids.shape[0], -1, -1)], dim=1)
    written = []

    def read(index: int, args: tuple) -> tuple:
        return (naive.read(args[0], *state[index], model.w_q[index], first), *args[1:])

    def write(index: int, output: torch.Tensor) -> None:
        weights = (model.w_k[index], model.w_v[index], model.w_b[index])
        memory_out = output[:, t:]
        written.append(naive.write(memory_out, *state[index], *weights, first, model.config.armt_write_norm))

    hooks = []
    for index, layer in enumerate(model.adapter.layers):
        hooks.append(layer.register_forward_pre_hook(lambda _, args, i=index: read(i, args)))
        hooks.append(layer.register_forward_hook(lambda _, args, out, i=index: write(i, out)))
    try:
        logits = backbone(inputs_embeds=x).logits[:, :t]
    finally:
        for hook in hooks:
            hook.remove()
    return logits, tuple(written)


def _assert_close_to_largest(got: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str = "") -> None:
    """Equal to `tolerance` of the largest entry of `expected`: the oracle's loops sum in another order, and memory
    values and gradients span orders of magnitude within one tensor."""
    assert float((got - expected).abs().max()) <= tolerance * float(expected.abs().max()), name


@pytest.mark.parametrize("family", [*FAMILIES, "mistral-sliding", "qwen2-sliding"])
def test_forward_and_gradients_equal_the_oracle(family):
    """Logits, final memory and every parameter's gradient (the backbone's, Qwen2's q/k/v biases included, and the
    memory's) against `oracle`, over two whole segments and a ragged one; the sliding windows at the shortest length
    ARMT takes, where HF's own forward builds its sliding-window mask and ARMT's plain causal one must agree."""
    model = armt(family)
    ids = _ids(2, 2 * SEG + 3)
    weights = torch.randn(2, ids.shape[1], VOCAB, generator=torch.Generator().manual_seed(3))

    def run(forward) -> tuple[torch.Tensor, tuple, dict[str, torch.Tensor]]:
        logits, state = forward()
        (logits * weights).sum().backward()  # a loss that weighs every logit
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return logits.detach(), tree_map(torch.detach, state), grads

    logits, state, grads = run(lambda: (lambda out: (out.logits, out.memory_state[0]))(model(ids)))
    expected, expected_state, expected_grads = run(lambda: oracle(model, ids))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    tree_map(lambda a, b: _assert_close_to_largest(a, b, 1e-5) or a, state, expected_state)
    assert set(grads) == set(expected_grads) and any(name.endswith("q_proj.bias") for name in grads) == (
        family.startswith("qwen2")
    )
    for name, grad in expected_grads.items():
        _assert_close_to_largest(grads[name], grad, 1e-4, name)
    with torch.no_grad():  # not vacuous: memory changes the second segment's logits
        assert (logits[:, SEG : 2 * SEG] - model.backbone(ids[:, SEG : 2 * SEG]).logits).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_a_sliding_window_shorter_than_segment_and_memory_is_refused(family, monkeypatch):
    """ARMT attends within [segment | memory tokens] with one causal mask: a window that would cut it is refused
    with the numbers (a window of exactly SEG + MEM runs, and equals the oracle above). Not refused, one place
    shorter, it would compute other logits than the backbone's own sliding-window attention."""
    config = RMTConfig(memory_kind="armt", num_memory_tokens=MEM, segment_size=SEG, d_mem=4)
    message = (
        rf"\[segment \({SEG}\) \| memory tokens \({MEM}\)\] = {SEG + MEM} places, but this backbone's sliding "
        rf"window spans {SEG + MEM - 1}: .* lower segment_size to at most {SEG - 1}"
    )
    with pytest.raises(InputError, match=message):
        ARMTForCausalLM(sliding_decoder(family, SEG + MEM - 1), config)
    with pytest.raises(InputError, match="use fewer memory tokens"):
        ARMTForCausalLM(sliding_decoder(family, MEM), config)
    ARMTForCausalLM(sliding_decoder(family, SEG + MEM), config)
    monkeypatch.setattr(armt_module, "check_window", lambda *args: None)
    cut = strengthen_memory(ARMTForCausalLM(sliding_decoder(family, SEG + MEM - 1), config).eval())
    ids = _ids(2, 2 * SEG)
    with torch.no_grad():
        assert (cut(ids).logits - oracle(cut, ids)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_armt_equals_backbone_on_each_segment(family):
    """W_v = 0: nothing is ever written, so every segment (ragged last one included) equals the backbone alone."""
    model = armt(family, trained=False)
    ids = _ids(2, 3 * SEG + 3)
    with torch.no_grad():
        logits = model(ids).logits
        expected = torch.cat([model.backbone(ids[:, s : s + SEG]).logits for s in range(0, ids.shape[1], SEG)], 1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_first_segment_equals_backbone_and_memory_matters_later(family):
    model = armt(family)
    ids = _ids(2, 3 * SEG)
    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(logits[:, :SEG], model.backbone(ids[:, :SEG]).logits, rtol=1e-5, atol=1e-5)
        # Memory carries segment 1 into segment 3: change one token of segment 1 only.
        changed = ids.clone()
        changed[:, 2] = (changed[:, 2] + 1) % VOCAB
        diff = (model(changed).logits[:, 2 * SEG :] - logits[:, 2 * SEG :]).abs().max()
        assert diff > 1e-4  # 100 times what is left with the memory's values zeroed (below)
        with torch.no_grad():
            model.w_v.zero_()
        no_memory = (model(changed).logits[:, 2 * SEG :] - model(ids).logits[:, 2 * SEG :]).abs().max()
        assert no_memory < 1e-6


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_eager_attention_backbone(family):
    """The layer-by-layer run builds HF's causal mask for the backbone's attention implementation."""
    backbone = tiny_decoder(family)
    backbone.config._attn_implementation = "eager"
    config = RMTConfig(memory_kind="armt", num_memory_tokens=MEM, segment_size=SEG, d_mem=4)
    model = ARMTForCausalLM(backbone, config).eval()
    ids = _ids(2, 2 * SEG)
    with torch.no_grad():
        expected = torch.cat([backbone(ids[:, s : s + SEG]).logits for s in (0, SEG)], 1)
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_state_layout_and_first_segment_flag():
    model = armt("gpt2")
    state = model.initial_state(3)
    layers, written = state
    assert len(layers) == 2 and written.dtype == torch.bool and not bool(written.any())
    A, z = layers[0]
    assert A.shape == (3, 6 * 4, 32) and z.shape == (3, 24) and A.dtype == z.dtype == torch.float32
    out = model(_ids(3, SEG + 2))
    assert bool(out.memory_state[1].all())
    assert float(out.memory_state[0][1][1].detach().min()) >= 0  # z sums non-negative keys


def test_bf16_model_keeps_fp32_memory():
    model = armt("llama").to(torch.bfloat16)
    ids = _ids(2, 2 * SEG + 1)
    with torch.no_grad():
        out = model(ids)
        reference = armt("llama")(ids).logits
    assert out.logits.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for layer in out.memory_state[0] for t in layer)
    assert float((out.logits.float() - reference).abs().max()) < 0.05 * float(reference.abs().max())


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_padded_samples_equal_samples_alone(family):
    """Right padding, left padding and different numbers of segments per sample."""
    model = armt(family)
    lengths = [3 * SEG + 3, SEG + 5, 2 * SEG]
    samples = [_ids(1, n, seed=i) for i, n in enumerate(lengths)]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (sample, n) in enumerate(zip(samples, lengths, strict=True)):
        if i == 1:  # left padded
            ids[i, width - n :], mask[i, width - n :] = sample[0], 1
        else:
            ids[i, :n], mask[i, :n] = sample[0], 1
    with torch.no_grad():
        batched = model(ids, mask)
        for i, (sample, n) in enumerate(zip(samples, lengths, strict=True)):
            alone = model(sample)
            got = batched.logits[i, width - n :] if i == 1 else batched.logits[i, :n]
            torch.testing.assert_close(got, alone.logits[0], rtol=1e-5, atol=1e-5)
            mine = select_rows(batched.memory_state, torch.tensor([i]))
            _assert_states_close(mine, alone.memory_state)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("depth", [0, 1, -1])
def test_forward_backward_gradients_equal_forward_with_truncated_bptt(depth, recompute, family):
    """The streaming backward (and with recompute=True, each window segment recomputed in the backward pass)
    against one graph over the whole input, with samples of several lengths."""
    model = armt(family, bptt_depth=depth).train()
    ids = _ids(3, 4 * SEG)
    mask = torch.ones_like(ids)
    mask[1, 2 * SEG + 3 :] = 0  # right padding: 3 segments
    mask[2, : SEG + 2] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    reference = grads()
    streamed = model.forward_backward(ids, attention_mask=mask, labels=labels, recompute=recompute)
    got = grads()
    torch.testing.assert_close(streamed.loss, loss.detach(), rtol=1e-6, atol=1e-6)
    assert set(got) == set(reference)
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
    # At depth 0 no gradient crosses a segment: only the read (w_q) gets one, not what writes for later segments.
    for name in ("memory", "w_q", "w_k", "w_v", "w_b") if depth else ("w_q",):
        assert reference[name].abs().sum() > 0, name


def test_save_and_load_round_trip(tmp_path):
    model = armt("gpt2")
    ids = _ids(2, 2 * SEG + 3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RecurrentMemoryModel.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, ARMTForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_registered_and_validated():
    config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=SEG)
    assert model_class(config) is ARMTForCausalLM
    with pytest.raises(ValueError, match="num_memory_tokens >= 1"):
        ARMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(memory_kind="armt", num_memory_tokens=0))
    with pytest.raises(ValueError, match="positions"):
        ARMTForCausalLM(tiny_decoder("gpt2", positions=16), RMTConfig(memory_kind="armt", segment_size=16))
    with pytest.raises(ValueError, match="memory_kind='armt'"):
        ARMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=2))


@pytest.mark.parametrize("prompt", [5, SEG, 2 * SEG + 3])
def test_generate_equals_argmax_of_full_forward(prompt):
    """The decoding rule: generation == argmax of forward over the prompt and the tokens generated so far."""
    model = armt("llama")
    ids = _ids(2, prompt)
    out = model.generate(ids, max_new_tokens=2 * SEG, output_scores=True, return_dict_in_generate=True)
    sequence = ids
    with torch.no_grad():
        for _ in range(2 * SEG):
            sequence = torch.cat([sequence, model(sequence).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, sequence)
    assert torch.stack(out.scores, dim=1).shape == (2, 2 * SEG, VOCAB)
