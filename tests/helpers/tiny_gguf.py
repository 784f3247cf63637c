"""A tiny llama-architecture GGUF file, written in a test, so that the GGUF loading path (rmt.build's resolve_model,
pretrained_backbone, pretrained_tokenizer, and transformers' own GGUF reader under them) runs without the real
SmolLM2 file, which ships in a package that CI does not install.

The file is laid out as llama.cpp lays out SmolLM2-135M's: `llama.*` hyperparameters, a byte-level BPE tokenizer
(`tokenizer.ggml.model = "gpt2"`) with its control tokens, bos/eos/unk/pad ids and merges, and the weights of a random
`transformers.LlamaForCausalLM` under llama.cpp's tensor names, the embedding tied to the output (no `output.weight`)
and the query and key projections permuted the way llama.cpp's converter permutes them (transformers undoes that on
load). Every tensor is float32, so what transformers loads equals the model the file was written from.

    model = tiny_llama()
    path = write_tiny_gguf(tmp_path / "tiny.gguf", model)
    AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")  # computes what `model` computes
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# ids of the control tokens, first in the vocabulary as in SmolLM2's (which uses the same three)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = EOS_ID  # as SmolLM2's file says
# A few byte-level merges (the byte alphabet spells a space "Ġ"), each joining two tokens already in the vocabulary.
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "w"))
ROPE_THETA = 50_000.0  # neither transformers' default nor SmolLM2's: the file's value must be the one used
RMS_EPS = 1e-5


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
    import gguf

    tokens = [*SPECIAL_TOKENS, *byte_alphabet()]
    for left, right in MERGES:
        assert left in tokens and right in tokens, (left, right)
        tokens.append(left + right)
    assert len(set(tokens)) == len(tokens)
    types = [int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS)
    types += [int(gguf.TokenType.NORMAL)] * (len(tokens) - len(SPECIAL_TOKENS))
    return tokens, types, [f"{left} {right}" for left, right in MERGES]


VOCAB_SIZE = len(SPECIAL_TOKENS) + 256 + len(MERGES)


def tiny_llama(
    hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, positions: int = 512, seed: int = 0
) -> LlamaForCausalLM:
    """A random LlamaForCausalLM for the tiny vocabulary, in eval mode, fp32, with grouped-query attention and tied
    embeddings (as SmolLM2). Weights are drawn wide enough (std 1/sqrt(hidden)) and the norms away from 1 that a
    misplaced or mispermuted tensor changes the logits far beyond float rounding."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=True,
        initializer_range=hidden**-0.5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
    return model.eval()


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp stores a query/key projection in: within each head, the two halves that rotary
    embedding pairs up (HF's rotate_half layout) become interleaved pairs (GGML's layout)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's tensor names, fp32, in torch's [out, in] order (GGUFWriter records the
    dimensions in GGML's reversed order itself)."""
    config = model.config
    weights = {name: tensor.detach().to(torch.float32).numpy() for name, tensor in model.state_dict().items()}
    out = {
        "token_embd.weight": weights["model.embed_tokens.weight"],
        "output_norm.weight": weights["model.norm.weight"],
    }
    if not config.tie_word_embeddings:
        out["output.weight"] = weights["lm_head.weight"]
    parts = {
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
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in parts.items():
            weight = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _llama_cpp_permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_permute(weight, config.num_key_value_heads)
            out[f"blk.{layer}.{gguf_name}.weight"] = np.ascontiguousarray(weight)
    return out


def write_tiny_gguf(path: str | Path, model: LlamaForCausalLM | None = None, name: str = "tiny llama") -> Path:
    """Write `model` (default: `tiny_llama()`) and the tiny tokenizer as a GGUF file at `path`. Returns the path.
    `name` goes to general.name (transformers reads a llama file whose name contains "mistral" as Mistral)."""
    import gguf

    model = model if model is not None else tiny_llama()
    config = model.config
    assert config.vocab_size == VOCAB_SIZE, "the model must be sized for the tiny vocabulary"
    head_dim = config.hidden_size // config.num_attention_heads
    tokens, token_types, merges = vocabulary()

    path = Path(path)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)

    for tensor_name, weight in _gguf_tensors(model).items():
        writer.add_tensor(tensor_name, weight)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
