"""ARMTForCausalLM through the shared segment loop: identity with the backbone, memory, padding, BPTT, checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, strengthen_memory, tiny_decoder

from rmt import RMTConfig
from rmt.memory.armt import ARMTForCausalLM
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.registry import model_class
from rmt.memory.state import select_rows, tree_map

SEG, MEM = 8, 4
FAMILIES = ["gpt2", "llama", "gpt_neox"]


def armt(family: str = "llama", trained: bool = True, **overrides) -> ARMTForCausalLM:
    """A tiny ARMT; `trained` gives it random memory weights strong enough that memory visibly changes logits
    (the untrained W_v = 0 would make most checks vacuous)."""
    config = RMTConfig(memory_kind="armt", num_memory_tokens=MEM, segment_size=SEG, d_mem=4, **overrides)
    model = ARMTForCausalLM(tiny_decoder(family), config).eval()
    return strengthen_memory(model) if trained else model


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _assert_states_close(a, b) -> None:
    """Every tensor of two memory states equal up to fp32 rounding, relative to its size: the associative state's
    entries reach about 6, where a different order of the same sums (another CPU's kernels) moves the last bit."""
    tree_map(lambda x, y: torch.testing.assert_close(x.float(), y.float(), rtol=1e-5, atol=1e-5) or x, a, b)


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


def test_eager_attention_backbone():
    """The layer-by-layer run builds HF's causal mask for the backbone's attention implementation."""
    backbone = tiny_decoder("llama")
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


@pytest.mark.parametrize("family", ["gpt2", "llama"])
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


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("depth", [0, 1, -1])
def test_forward_backward_gradients_equal_forward_with_truncated_bptt(depth, recompute):
    """The streaming backward (and with recompute=True, each window segment recomputed in the backward pass)
    against one graph over the whole input, with samples of several lengths."""
    model = armt("llama", bptt_depth=depth).train()
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
    out = model.generate(ids, max_new_tokens=2 * SEG, output_scores=True)
    sequence = ids
    with torch.no_grad():
        for _ in range(2 * SEG):
            sequence = torch.cat([sequence, model(sequence).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, sequence)
    assert out.scores.shape == (2, 2 * SEG, VOCAB)
