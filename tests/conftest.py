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
    """A tiny random causal LM of the given family, in eval mode, fp32 (Llama, Mistral and Qwen2 with grouped-query
    attention). Its biases (GPT-2's, GPT-NeoX's, Qwen2's) are drawn at random: transformers starts them at zero, where
    code that dropped or misplaced a bias would compute the same."""
    num_kv_heads = 2 if family in ("llama", "mistral", "qwen2") else None
    backbone = random_backbone(family, vocab_size, layers, hidden, 4, positions, num_kv_heads=num_kv_heads)
    return random_biases(backbone).eval()


def sliding_decoder(family: str, window: int, layers: int = 2) -> torch.nn.Module:
    """A tiny random Mistral or Qwen2 (width 32, grouped-query attention, random biases, eval mode) with a sliding
    window of `window` places: in every layer (Mistral), or in every layer but the first (Qwen2's max_window_layers,
    so that full and sliding layers mix)."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    sizes = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    if family == "mistral":
        backbone = MistralForCausalLM(MistralConfig(sliding_window=window, **sizes))
    else:
        config = Qwen2Config(use_sliding_window=True, sliding_window=window, max_window_layers=1, **sizes)
        backbone = Qwen2ForCausalLM(config)
    return random_biases(backbone).eval()


def random_biases(backbone: torch.nn.Module) -> torch.nn.Module:
    """`backbone` with every bias drawn at random (seeded; transformers starts biases at zero, where code that
    dropped or misplaced a bias would compute the same)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if name.endswith("bias"):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return backbone


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


@pytest.fixture(params=["gpt2", "llama", "mistral", "qwen2", "gpt_neox"])
def decoder_family(request) -> str:
    return request.param


BABI_WORDS = (
    "Mary John Daniel Sandra Fred Bill Jeff hallway bathroom kitchen office bedroom garden football apple milk "
    "went journeyed travelled moved back to the got grabbed picked up took dropped discarded put down gave passed "
    "handed is north south east west of Where What Who was before did give received Question Answer"
).split()
BACKGROUND_WORDS = "the old man walked slowly along a quiet river and saw small boats under grey sky".split()


def background_text(sentences: int = 400, seed: int = 0) -> str:
    """Plain prose-like text of `sentences` sentences (6-12 words each), for BABILong haystacks in tests."""
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = rng.choices(BACKGROUND_WORDS, k=rng.randint(6, 12))
        lines.append(" ".join(words).capitalize() + ".")
    return " ".join(lines)


def word_tokenizer(directory):
    """A WordLevel Hugging Face tokenizer (bAbI and background words, punctuation, BERT and LM special tokens),
    saved to `directory` and loaded back as any pretrained tokenizer would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    words = sorted(set(BABI_WORDS) | set(BACKGROUND_WORDS) | {w.capitalize() for w in BACKGROUND_WORDS})
    vocab = {token: i for i, token in enumerate(specials + words + list(".,?!:"))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="</s>",
    )
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def tiny_model_folder(directory, kind: str = "llama", labels: list[str] | None = None):
    """A tiny random model with its word tokenizer saved as a Hugging Face folder (what `--model DIR` reads):
    kind "llama" (causal LM) or "bert" (sequence classifier with `labels`). Returns the folder."""
    tokenizer = word_tokenizer(directory)
    vocab = len(tokenizer)
    if kind == "bert":
        model = random_backbone(
            "bert", vocab, 2, 32, 4, 512, num_labels=len(labels), pad_token_id=tokenizer.pad_token_id
        )
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
        model.config.cls_token_id, model.config.sep_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        model = random_backbone("llama", vocab, 2, 32, 4, 2048)
        model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    return directory
