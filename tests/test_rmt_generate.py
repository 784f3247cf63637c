"""Greedy generation through RMT memory and the Transformer-XL cache (`rmt.inference.rmt_generate`): every generated
token is the argmax of a full forward pass over prompt + generated tokens with the same segmentation, across segment
boundaries, for plain RMT, Tr-XL, MemTrXL and the read-only-memory control; plus padding, EOS and bad inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_decoder

from rmt import RMTConfig, RMTForCausalLM
from rmt.inference.rmt_generate import greedy_generate


def model_for(family: str, **config) -> RMTForCausalLM:
    torch.manual_seed(0)
    settings = {"num_memory_tokens": 3, "segment_size": 5, **config}
    return RMTForCausalLM(tiny_decoder(family), RMTConfig(**settings)).eval()


def reference_greedy(model: RMTForCausalLM, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Argmax decoding by repeated full forward passes over prompt + generated tokens."""
    ids = prompt
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


CONFIGS = {
    "rmt": {},
    "rmt-shared-learned": {"memory_positions": "shared", "write_init": "learned"},
    "no-memory": {"num_memory_tokens": 0},
    "trxl": {"num_memory_tokens": 0, "xl_cache_tokens": 4},
    "memtrxl": {"xl_cache_tokens": 7},
    "memory-at-start": {"read_memory_only": True, "xl_cache_tokens": 5},
}


@pytest.mark.parametrize(
    ("family", "name"), [("llama", name) for name in CONFIGS] + [("gpt2", "rmt"), ("gpt2", "memtrxl")]
)
@pytest.mark.parametrize("prompt_length", [3, 5, 7])
def test_greedy_equals_repeated_full_forward(family, name, prompt_length):
    # Segments of 5: prompts of 3, 5 (exactly one full segment) and 7 tokens; 9 new tokens cross 2 boundaries.
    model = model_for(family, **CONFIGS[name])
    head = model.backbone.get_output_embeddings()
    if head.weight is model.backbone.get_input_embeddings().weight:
        # Untie: with tied embeddings an untrained GPT-2 mostly repeats its last token, a weak test of the rule.
        noise = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0))
        head.weight = torch.nn.Parameter(noise * float(head.weight.detach().std()))
    prompt = torch.randint(0, VOCAB, (2, prompt_length), generator=torch.Generator().manual_seed(1))
    out = greedy_generate(model, prompt, max_new_tokens=9)
    expected = reference_greedy(model, prompt, 9)
    assert torch.equal(out.sequences, expected)
    assert out.scores.shape == (2, 9, VOCAB)


def test_padded_prompts_decode_each_row_as_if_alone():
    model = model_for("llama", xl_cache_tokens=5)
    prompt = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0  # left padding: 5 real tokens
    mask[2, :6] = 0  # 2 real tokens
    out = model.generate(prompt, max_new_tokens=6, attention_mask=mask)
    for row in range(3):
        alone = model.generate(prompt[row : row + 1, mask[row].bool()], max_new_tokens=6)
        assert torch.equal(out.sequences[row, 8:], alone.sequences[0, -6:])


def test_eos_stops_a_row_and_pads_it():
    model = model_for("gpt2")
    prompt = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(3))
    free = model.generate(prompt, max_new_tokens=6).sequences[:, 4:]
    eos = int(free[0, 1])
    first = int((free[0] == eos).nonzero()[0])  # where row 0 first emits it
    out = model.generate(prompt, max_new_tokens=6, eos_token_id=eos, pad_token_id=VOCAB - 1).sequences[:, 4:]
    assert torch.equal(out[0, : first + 1], free[0, : first + 1])
    assert bool((out[0, first + 1 :] == VOCAB - 1).all())


def test_bad_arguments():
    model = model_for("gpt2")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=0)
    with pytest.raises(ValueError, match="at least one real token"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 2, attention_mask=torch.zeros(1, 3, dtype=torch.long))
