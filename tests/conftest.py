"""Shared fixtures: tiny random Hugging Face backbones built from config objects (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

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
    """A tiny random causal LM of the given family, in eval mode, fp32."""
    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            bos_token_id=0,
            eos_token_id=0,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=positions,
        )
        model = LlamaForCausalLM(config)
    elif family == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=positions,
        )
        model = GPTNeoXForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval()


def tiny_encoder(num_labels: int = 3, hidden: int = 32, layers: int = 2, positions: int = 128):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=positions,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture(params=["gpt2", "llama", "gpt_neox"])
def decoder_family(request) -> str:
    return request.param
