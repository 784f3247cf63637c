"""Shared fixtures: tiny random Hugging Face backbones built from config objects (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from rmt.build import random_backbone

VOCAB = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and when other processes share the cores an OpenMP barrier per op
    stalls (some files took minutes instead of seconds on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_decoder(
    family: str = "gpt2", vocab_size: int = VOCAB, hidden: int = 32, layers: int = 2, positions: int = 256
):
    """A tiny random causal LM of the given family, in eval mode, fp32 (Llama with grouped-query attention)."""
    num_kv_heads = 2 if family == "llama" else None
    return random_backbone(family, vocab_size, layers, hidden, 4, positions, num_kv_heads=num_kv_heads).eval()


def tiny_encoder(num_labels: int = 3, hidden: int = 32, layers: int = 2, positions: int = 128):
    """A tiny random BERT sequence classifier, in eval mode."""
    return random_backbone("bert", 128, layers, hidden, 4, positions, num_labels=num_labels).eval()


def strengthen_memory(model):
    """Random associative-memory projections strong enough that memory visibly changes an ARMT's logits (the
    untrained W_v = 0 would make most checks vacuous). Returns the model."""
    torch.manual_seed(1)
    with torch.no_grad():
        model.w_q.normal_(0, 1.0)
        model.w_k.normal_(0, 1.0)
        model.w_v.normal_(0, 0.5)
    return model


@pytest.fixture(params=["gpt2", "llama", "gpt_neox"])
def decoder_family(request) -> str:
    return request.param
