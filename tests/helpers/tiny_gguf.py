"""Tiny GGUF files of the decoder families rmt wraps, written in a test, so that the GGUF loading path (rmt.build's
resolve_model, pretrained_backbone, pretrained_tokenizer, and transformers' own GGUF reader under them) runs without
real GGUF files, which ship in packages that CI does not install.

Each file is laid out as llama.cpp's converter (convert_hf_to_gguf.py) lays out its family's files: the family's
`general.architecture` and `<architecture>.*` hyperparameters, the weights of a random transformers model under
llama.cpp's tensor names, the embedding tied to the output (no `output.weight`), every tensor float32 (so what
transformers loads equals the model the file was written from), and what the converter does to each family's tensors:

- llama (as SmolLM2-135M's file): the query and key rows permuted from HF's rotate-half layout to GGML's interleaved
  pairs (transformers undoes that on load).
- mistral: llama.cpp writes Mistral as the llama architecture, so a Mistral model's file is a llama file; transformers
  loads it as a LlamaForCausalLM (the same network when Mistral has no sliding window, which the file cannot say).
- qwen2 (as Qwen2.5-0.5B's): query, key and value biases, and no permutation (llama.cpp runs Qwen2's rotary
  embedding in HF's own layout).
- gpt2: learned positions (`position_embd`), LayerNorms with biases, one fused query/key/value projection, and the
  Conv1D weights ([in, out]) transposed to [out, in] (transformers transposes them back).

All families share one byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) with SmolLM2's three control
tokens, bos/eos/unk/pad ids and a few merges; `tokenizer.ggml.pre` names each family's own pre-tokenizer.

    model = tiny_model("qwen2")
    path = write_tiny_gguf(tmp_path / "tiny.gguf", model)
    AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")  # computes what `model` computes
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# ids of the control tokens, first in the vocabulary as in SmolLM2's (which uses the same three)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = EOS_ID  # as SmolLM2's file says
# A few byte-level merges (the byte alphabet spells a space "Ġ"), each joining two tokens already in the vocabulary.
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "w"))
ROPE_THETA = 50_000.0  # neither transformers' default nor SmolLM2's: the file's value must be the one used
RMS_EPS = 1e-5
# transformers builds every GPT-2 it reads from GGUF with 1024 positions and a 4 x hidden MLP, whatever the file says
# (it reads the context length into `n_ctx`, which GPT-2 does not use, and ignores the feed-forward width)
GPT2_POSITIONS = 1024


def byte_alphabet() -> list[str]:
    """The printable character that byte-level BPE writes for each byte 0..255: the byte's own character where that
    is printable (and not a space), otherwise a character from 256 on, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    spelling, extra = [], 0
    for byte in range(256):
        if byte in printable:
            spelling.append(chr(byte))
        else:
            spelling.append(chr(256 + extra))
            extra += 1
    return spelling


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """(tokens, llama.cpp token types, merges "a b") of the tiny byte-level BPE tokenizer: the control tokens, the
    256 byte tokens, then one token per merge."""
    tokens = [*SPECIAL_TOKENS, *byte_alphabet()]
    for left, right in MERGES:
        assert left in tokens and right in tokens, (left, right)
        tokens.append(left + right)
    assert len(set(tokens)) == len(tokens)
    types = [int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS)
    types += [int(gguf.TokenType.NORMAL)] * (len(tokens) - len(SPECIAL_TOKENS))
    return tokens, types, [f"{left} {right}" for left, right in MERGES]


VOCAB_SIZE = len(SPECIAL_TOKENS) + 256 + len(MERGES)


def _drawn_wide(model: PreTrainedModel) -> PreTrainedModel:
    """`model` in eval mode with its norms' scales away from 1 and its biases at random (transformers starts them at 1
    and 0, where a norm or bias loaded in the wrong place would compute the same). With weights drawn at std
    1/sqrt(hidden) (the configs' initializer_range), a misplaced or mispermuted tensor changes the logits far beyond
    float rounding."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                parameter.copy_((1 if name.endswith("weight") else 0) + 0.3 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.3 * torch.randn_like(parameter))
    return model.eval()


def _rotary_config(
    config_class: type[PretrainedConfig], hidden: int, layers: int, positions: int, **extra
) -> PretrainedConfig:
    """A tiny config of a rotary family (Llama, Mistral, Qwen2) for the tiny vocabulary: grouped-query attention and
    tied embeddings, as SmolLM2 and Qwen2.5-0.5B."""
    return config_class(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=True,
        initializer_range=hidden**-0.5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        **extra,
    )


def tiny_model(
    family: str = "llama", hidden: int = 32, layers: int = 2, positions: int | None = None, seed: int = 0
) -> PreTrainedModel:
    """A random causal LM of `family` ("llama", "mistral", "qwen2" or "gpt2") for the tiny vocabulary, in eval mode,
    fp32. Rotary families have grouped-query attention and 512 positions by default; a Mistral has no sliding window
    (a GGUF file cannot carry one); a GPT-2 has by default the 1024 positions transformers gives every GPT-2 GGUF
    file (with other `positions` its file does not load)."""
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=positions or GPT2_POSITIONS,
            initializer_range=hidden**-0.5,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
        return _drawn_wide(GPT2LMHeadModel(config))
    positions = positions or 512
    if family == "llama":
        return _drawn_wide(LlamaForCausalLM(_rotary_config(LlamaConfig, hidden, layers, positions)))
    if family == "mistral":
        config = _rotary_config(MistralConfig, hidden, layers, positions, sliding_window=None)
        return _drawn_wide(MistralForCausalLM(config))
    if family == "qwen2":
        return _drawn_wide(Qwen2ForCausalLM(_rotary_config(Qwen2Config, hidden, layers, positions)))
    raise ValueError(f"no tiny GGUF model of family {family!r}; families: {sorted(LAYOUTS)}")


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp stores a llama query/key projection in: within each head, the two halves that rotary
    embedding pairs up (HF's rotate_half layout) become interleaved pairs (GGML's layout)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _permute_query_key(name: str, weight: np.ndarray, config: PretrainedConfig) -> np.ndarray:
    if name.endswith("attn_q.weight"):
        return llama_cpp_permute(weight, config.num_attention_heads)
    if name.endswith("attn_k.weight"):
        return llama_cpp_permute(weight, config.num_key_value_heads)
    return weight


# GPT-2's projections are Conv1D modules, whose weights are [in, out]; llama.cpp stores them as [out, in].
_GPT2_CONV1D = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def _transpose_conv1d(name: str, weight: np.ndarray, config: PretrainedConfig) -> np.ndarray:
    return weight.T if name.endswith(_GPT2_CONV1D) else weight


def _as_is(name: str, weight: np.ndarray, config: PretrainedConfig) -> np.ndarray:
    return weight


def _rotary_hyperparameters(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _llama_hyperparameters(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    _rotary_hyperparameters(writer, config)
    # as llama.cpp's llama converter does; transformers takes a llama file's head size from the second
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)


def _gpt2_hyperparameters(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    writer.add_feed_forward_length(4 * config.n_embd)  # what llama.cpp writes for every GPT-2, as GPT-2's MLP is
    writer.add_layer_norm_eps(config.layer_norm_epsilon)


@dataclass(frozen=True)
class Layout:
    """How llama.cpp writes one family's file."""

    architecture: str  # general.architecture, and the prefix of the hyperparameter keys
    tokenizer_pre: str  # tokenizer.ggml.pre: how text is split before the merges (transformers reads it too)
    outside: dict[str, str]  # HF module outside the decoder layers -> llama.cpp tensor (weight and bias alike)
    layers: str  # the HF module list of the decoder layers
    layer: dict[str, str]  # HF module inside a decoder layer -> llama.cpp tensor, after "blk.{layer}."
    stored: Callable[[str, np.ndarray, PretrainedConfig], np.ndarray]  # a tensor as llama.cpp stores it, by name
    hyperparameters: Callable[[gguf.GGUFWriter, PretrainedConfig], None]  # the family's keys past the shared ones


_ROTARY_OUTSIDE = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_ROTARY_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GPT2_OUTSIDE = {
    "transformer.wte": "token_embd",
    "transformer.wpe": "position_embd",
    "transformer.ln_f": "output_norm",
    "lm_head": "output",
}
_GPT2_LAYER = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
_LLAMA = Layout(
    architecture="llama",
    tokenizer_pre="default",
    outside=_ROTARY_OUTSIDE,
    layers="model.layers",
    layer=_ROTARY_LAYER,
    stored=_permute_query_key,
    hyperparameters=_llama_hyperparameters,
)
# by the transformers model_type of the model a file is written from
LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": Layout(
        architecture="qwen2",
        tokenizer_pre="qwen2",
        outside=_ROTARY_OUTSIDE,
        layers="model.layers",
        layer=_ROTARY_LAYER,
        stored=_as_is,
        hyperparameters=_rotary_hyperparameters,
    ),
    "gpt2": Layout(
        architecture="gpt2",
        tokenizer_pre="gpt-2",
        outside=_GPT2_OUTSIDE,
        layers="transformer.h",
        layer=_GPT2_LAYER,
        stored=_transpose_conv1d,
        hyperparameters=_gpt2_hyperparameters,
    ),
}


def gguf_tensors(model: PreTrainedModel) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's tensor names and as it stores them, fp32, in torch's [out, in] order
    (GGUFWriter records the dimensions in GGML's reversed order itself). Every weight has a name or this fails."""
    config = model.config
    layout = LAYOUTS[config.model_type]
    names = dict(layout.outside)
    for index in range(config.num_hidden_layers):
        names |= {f"{layout.layers}.{index}.{hf}": f"blk.{index}.{ours}" for hf, ours in layout.layer.items()}
    out = {}
    for hf_name, tensor in model.state_dict().items():
        module, kind = hf_name.rsplit(".", 1)
        if module == "lm_head" and config.tie_word_embeddings:
            continue  # the embedding: llama.cpp writes no output.weight for a tied model
        name = f"{names[module]}.{kind}"
        weight = tensor.detach().to(torch.float32).numpy()
        out[name] = np.ascontiguousarray(layout.stored(name, weight, config))
    return out


def write_tiny_gguf(path: str | Path, model: PreTrainedModel | None = None, name: str | None = None) -> Path:
    """Write `model` (default: `tiny_model("llama")`) and the tiny tokenizer as a GGUF file at `path`, laid out as
    llama.cpp writes the model's family. Returns the path. `name` goes to general.name (default "tiny <family>"; a
    llama file whose name is exactly "mistral" is one transformers reads as Mistral)."""
    model = model if model is not None else tiny_model("llama")
    config = model.config
    assert config.vocab_size == VOCAB_SIZE, "the model must be sized for the tiny vocabulary"
    layout = LAYOUTS[config.model_type]
    tokens, token_types, merges = vocabulary()

    path = Path(path)
    writer = gguf.GGUFWriter(path, layout.architecture)
    writer.add_name(name if name is not None else f"tiny {config.model_type}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # the shape keys every family has (GPT-2's config answers to these names too)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    layout.hyperparameters(writer, config)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(layout.tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)

    for tensor_name, weight in gguf_tensors(model).items():
        writer.add_tensor(tensor_name, weight)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
