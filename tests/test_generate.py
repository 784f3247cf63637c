"""Generation (`rmt.memory.generation`): every greedy token is the argmax of a full forward pass over prompt +
generated tokens with the same segmentation, across segment boundaries, for plain RMT, Tr-XL, MemTrXL, the read-only
memory control and ARMT; prompts of different lengths in one batch; one position per new token through the layers
(the open segment's cache); sampling through transformers' logits processors; EOS, padding and bad inputs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import VOCAB, strengthen_memory, tiny_decoder
from transformers import GenerationConfig

from rmt import ARMTForCausalLM, RMTConfig, RMTForCausalLM
from rmt.errors import InputError
from rmt.memory.generation import check_generation_settings, generate
from rmt.memory.outputs import GenerateOutput


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
    "rmt-rescaled": {"memory_write_scale": "token_embeddings"},
    "no-memory": {"num_memory_tokens": 0},
    "trxl": {"num_memory_tokens": 0, "xl_cache_tokens": 4},
    "memtrxl": {"xl_cache_tokens": 7},
    "memtrxl-contiguous": {"xl_cache_tokens": 7, "xl_contiguous_positions": True},
    "memory-at-start": {"read_memory_only": True, "xl_cache_tokens": 5},
}


@pytest.mark.parametrize(
    ("family", "name"),
    [("llama", name) for name in CONFIGS]
    + [(family, kind) for family in ("gpt2", "mistral", "qwen2", "gpt_neox") for kind in ("rmt", "memtrxl")],
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
    out = generate(model, prompt, max_new_tokens=9, output_scores=True, return_dict_in_generate=True)
    expected = reference_greedy(model, prompt, 9)
    assert torch.equal(out.sequences, expected)
    assert torch.stack(out.scores, dim=1).shape == (2, 9, VOCAB)


def test_padded_prompts_decode_each_row_as_if_alone():
    model = model_for("llama", xl_cache_tokens=5)
    prompt = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0  # left padding: 5 real tokens
    mask[2, :6] = 0  # 2 real tokens
    out = model.generate(prompt, max_new_tokens=6, attention_mask=mask)
    for row in range(3):
        alone = model.generate(prompt[row : row + 1, mask[row].bool()], max_new_tokens=6)
        assert torch.equal(out[row, 8:], alone[0, -6:])


@pytest.mark.parametrize("pad", [VOCAB - 1, -1])
def test_eos_stops_a_row_and_pads_it(pad):
    """A finished row gets pad_token_id in the output, even one outside the vocabulary (-1, as some configs have):
    the stream is fed nothing for it (it refused the id before)."""
    model = model_for("gpt2")
    prompt = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(5))
    free = model.generate(prompt, max_new_tokens=6)[:, 4:]
    eos = next(int(t) for t in free[0, :4] if t not in free[1])  # row 0 emits it early, row 1 never
    first = int((free[0] == eos).nonzero()[0])  # where row 0 first emits it
    out = model.generate(prompt, max_new_tokens=6, eos_token_id=eos, pad_token_id=pad)[:, 4:]
    assert out.shape[1] == 6 and first < 4  # row 0 stopped with steps left, which row 1 went on to take
    assert torch.equal(out[1], free[1])
    assert torch.equal(out[0, : first + 1], free[0, : first + 1])
    assert bool((out[0, first + 1 :] == pad).all())


@pytest.mark.parametrize("setting", [{"repetition_penalty": 1.5}, {"no_repeat_ngram_size": 2}])
def test_processors_see_no_pad_id_after_a_row_ends(setting):
    """Processors index the scores with the ids they see: a finished row shows them an id of the vocabulary, not a
    pad id outside it (-1 crashed them), and the other row decodes on as if alone."""
    model = model_for("llama")
    prompt = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(5))
    free = model.generate(prompt, max_new_tokens=8, **setting)[:, 4:]
    eos = int(free[0, 2])
    assert eos not in free[1] and eos not in free[0, :2]  # row 0 ends at step 3 of 8, row 1 never
    out = model.generate(prompt, max_new_tokens=8, eos_token_id=eos, pad_token_id=-1, **setting)[:, 4:]
    assert torch.equal(out[1], free[1]) and torch.equal(out[0, :3], free[0, :3]) and bool((out[0, 3:] == -1).all())


def test_a_callers_processor_sees_the_vocabulary_as_given_in_padded_and_unpadded_calls():
    """Only rmt's own processors see padding as an extra id: a caller's SequenceBiasLogitsProcessor, which sizes its
    bias by the first call's vocabulary, crashed when reused for a padded batch after an unpadded one."""
    from transformers.generation.logits_process import LogitsProcessorList, SequenceBiasLogitsProcessor

    model = model_for("llama")
    caller = LogitsProcessorList([SequenceBiasLogitsProcessor({(3,): -5.0})])
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    model.generate(prompt, max_new_tokens=3, logits_processor=caller)
    padded = model.generate(
        prompt, mask, max_new_tokens=3, logits_processor=caller, output_scores=True, return_dict_in_generate=True
    )
    assert torch.stack(padded.scores, dim=1).shape[-1] == VOCAB


@pytest.mark.parametrize("name", ["no_repeat_ngram_size", "bad_words_ids", "sequence_bias"])
def test_processors_that_match_ids_do_not_see_the_padding(name):
    """A one-token prompt left-padded with the id X it emits first decodes as if alone under n-gram, bad-word and
    sequence-bias checks that would ban X after the padding: they see padding as an id outside the vocabulary."""
    model = model_for("llama")
    row = torch.randint(0, VOCAB, (1, 1), generator=torch.Generator().manual_seed(7))
    first = int(model.generate(row, max_new_tokens=1)[0, -1])
    assert first != int(row[0, 0])
    setting = {
        "no_repeat_ngram_size": {"no_repeat_ngram_size": 1},
        "bad_words_ids": {"bad_words_ids": [[first, int(row[0, 0]), first]]},
        "sequence_bias": {"sequence_bias": {(first, int(row[0, 0]), first): -1e9}},
    }[name]
    alone = model.generate(row, max_new_tokens=6, **setting)[0, 1:]
    padded = torch.cat([torch.full((1, 3), first), row], dim=1)
    mask = torch.tensor([[0, 0, 0, 1]])
    left = model.generate(padded, mask, max_new_tokens=6, **setting)[0, 4:]
    assert int(alone[0]) == first and torch.equal(left, alone)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"eos_token_id": VOCAB}, f"eos_token_id names {VOCAB}, outside the model's vocabulary"),
        ({"eos_token_id": -1}, "eos_token_id names -1, outside"),
        ({"eos_token_id": [3, VOCAB + 7]}, f"eos_token_id names {VOCAB + 7}, outside"),
        ({"eos_token_id": 2.5}, "eos_token_id must be a token id"),
        ({"forced_eos_token_id": VOCAB}, "forced_eos_token_id"),
        ({"forced_bos_token_id": VOCAB}, "forced_bos_token_id"),
        ({"pad_token_id": "0"}, "pad_token_id must be a whole number"),
        ({"suppress_tokens": [1, VOCAB]}, f"suppress_tokens names {VOCAB}, outside the model's vocabulary"),
        ({"begin_suppress_tokens": [-2]}, "begin_suppress_tokens names -2, outside"),
        ({"bad_words_ids": [[1, 2], [VOCAB + 1]]}, f"bad_words_ids names {VOCAB + 1}, outside"),
        ({"bad_words_ids": [5]}, "bad_words_ids must be a list of lists of token ids, got \\[5\\]"),
        ({"suppress_tokens": 5}, "suppress_tokens must be a list of token ids, got 5"),
        ({"sequence_bias": {(3, VOCAB): -1.0}}, f"sequence_bias names {VOCAB}, outside"),
    ],
)
def test_end_and_forced_tokens_outside_the_vocabulary_are_refused(setting, message):
    """An EOS id the model cannot emit never ended a row (decoding ran to max_new_tokens without a word); a forced
    one, or an EOS id that is no number, failed with a traceback from inside transformers or torch."""
    model = model_for("gpt2")
    with pytest.raises(InputError, match=message):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, **setting)


def test_an_end_token_outside_the_vocabulary_from_the_backbones_config_is_refused():
    """A GPT2Config names 50256 whatever its vocabulary: the message says where the id came from, and the call's
    eos_token_id=None overrides it."""
    model = model_for("gpt2")
    model.backbone.generation_config.eos_token_id = VOCAB
    prompt = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(InputError, match=f"eos_token_id names {VOCAB}, outside .* the backbone's; eos_token_id="):
        model.generate(prompt, max_new_tokens=2)
    assert model.generate(prompt, max_new_tokens=2, eos_token_id=None).shape == (1, 5)


@pytest.mark.parametrize("argument", ["streamer", "stopping_criteria", "past_key_values"])
def test_arguments_of_hugging_faces_generate_that_it_does_not_take_are_named_so(argument):
    model = model_for("gpt2")
    with pytest.raises(InputError, match=f"{argument}: argument\\(s\\) of Hugging Face's generate that this"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, **{argument: None})


@pytest.mark.parametrize("pad", [VOCAB, -5])
def test_any_whole_pad_id_is_taken(pad):
    """The pad id only fills finished rows of the result (it is never fed to the model), as in transformers."""
    model = model_for("gpt2")
    prompt = torch.zeros(1, 3, dtype=torch.long)
    eos = int(model.generate(prompt, max_new_tokens=1)[0, -1])
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=3, eos_token_id=eos, pad_token_id=pad)
    assert out[:, 4:].eq(pad).all()


def test_bad_arguments():
    model = model_for("gpt2")
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=0)
    with pytest.raises(ValueError, match="no tokens"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2)


def armt_model() -> ARMTForCausalLM:
    torch.manual_seed(0)
    config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=5, d_mem=8)
    return strengthen_memory(ARMTForCausalLM(tiny_decoder("llama"), config)).eval()


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_prompts_of_different_lengths_decode_together(kind):
    """Left-padded prompts of 11, 6 and 2 tokens in one loop: each row decodes as if alone, crossing its own segment
    boundaries at different steps."""
    model = armt_model() if kind == "armt" else model_for("llama")
    prompt = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(prompt)
    mask[1, :5] = 0
    mask[2, :9] = 0
    out = model.generate(prompt * mask, mask, max_new_tokens=8)
    for row in range(3):
        alone = reference_greedy(model, prompt[row : row + 1, mask[row].bool()], 8)
        assert torch.equal(out[row, 11:], alone[0, -8:])


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_each_new_token_is_one_position_through_the_layers(kind):
    """The open segment's keys/values are cached: a new token runs one position through layer 0; a segment is re-run
    once when it closes (its T tokens and memory slots), and RMT then reads the new memory (M positions)."""
    model = armt_model() if kind == "armt" else model_for("llama")
    layer = model.backbone.model.layers[0]
    widths = []
    hook = layer.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(args[0].shape[1]), with_kwargs=True
    )
    prompt = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(6))
    try:
        model.generate(prompt, max_new_tokens=12)
    finally:
        hook.remove()
    # 4 prompt tokens + 11 fed back = 15 tokens = 3 closed segments of 5.
    if kind == "rmt":  # M = 3: read memory, prompt, 11 single tokens, 3 closes of [3 | 5 | 3], 2 new read memories
        assert Counter(widths) == Counter({3: 3, 4: 1, 1: 11, 11: 3})
    else:  # ARMT, M = 2: prompt, 11 single tokens, 3 closes of [5 | 2]
        assert Counter(widths) == Counter({4: 1, 1: 11, 7: 3})


def test_sampling_goes_through_transformers_processors():
    model = model_for("llama")
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(7))
    greedy = model.generate(prompt, max_new_tokens=6)
    torch.manual_seed(0)
    top1 = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=1)  # top-1 sampling = greedy
    assert torch.equal(top1, greedy)
    torch.manual_seed(0)
    first = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=5.0)
    torch.manual_seed(0)
    again = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=5.0)
    assert torch.equal(first, again) and not torch.equal(first, greedy)
    for bad, name in (({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k"), ({"top_p": 1.5}, "top_p")):
        with pytest.raises(InputError, match=f"bad generation settings: `?{name}`? "):
            model.generate(prompt, max_new_tokens=2, do_sample=True, **bad)


def test_generation_past_the_learned_positions_is_refused():
    """GPT-2 with a Transformer-XL cache numbers positions across segments: generating past its 256 positions stops
    with an error naming the limit, not with an index error."""
    model = model_for("gpt2", xl_cache_tokens=4)
    prompt = torch.randint(0, VOCAB, (1, 150), generator=torch.Generator().manual_seed(9))  # positions 0..239
    assert model.generate(prompt, max_new_tokens=10).shape == (1, 160)
    with pytest.raises(ValueError, match=r"reaches position 2\d\d.*embeds at most 256"):
        model.generate(prompt, max_new_tokens=100)


def test_token_lists_given_as_tensors_or_in_range_still_decode():
    """suppress_tokens as a tensor of ids worked before the vocabulary check and still does."""
    model = model_for("gpt2")
    prompt = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0))
    free = model.generate(prompt, max_new_tokens=3)[0, 4:].tolist()  # what suppression must change
    out = model.generate(prompt, max_new_tokens=3, suppress_tokens=torch.tensor(free), sequence_bias={(3,): -1.0})
    assert out.shape == (1, 7) and not set(out[0, 4:].tolist()) & set(free)


def test_the_output_reads_as_hugging_faces_does():
    model = model_for("gpt2")
    prompt = torch.zeros(1, 3, dtype=torch.long)
    out = model.generate(prompt, max_new_tokens=2, output_scores=True, return_dict_in_generate=True)
    assert isinstance(out, GenerateOutput)
    assert out[0] is out["sequences"] is out.sequences and out[1] is out["scores"] is out.scores
    assert out.to_tuple() == (out.sequences, out.scores)
    # By default the sequences alone, a tensor, as the backbone's own generate returns them.
    ids = model.generate(prompt, max_new_tokens=2)
    theirs = model.backbone.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2, do_sample=False)
    assert type(ids) is type(theirs) is torch.Tensor and torch.equal(ids, out.sequences)
    assert model.generate(prompt, max_new_tokens=2, return_dict_in_generate=False).equal(ids)
    no_scores = model.generate(prompt, max_new_tokens=2, return_dict_in_generate=True)
    assert no_scores.scores is None and torch.equal(no_scores.sequences, ids)
    with pytest.warns(UserWarning, match="output_scores=True is ignored without return_dict_in_generate"):
        assert model.generate(prompt, max_new_tokens=2, output_scores=True).equal(ids)
    # Set in a generation config, as in Hugging Face.
    config = GenerationConfig(return_dict_in_generate=True, output_scores=True, max_new_tokens=2)
    from_config = model.generate(prompt, generation_config=config).scores
    assert torch.equal(torch.stack(from_config, dim=1), torch.stack(out.scores, dim=1))


def test_the_prompt_is_taken_by_hugging_faces_name_and_a_positional_config_is_named():
    """`inputs=` is Hugging Face's name of the prompt (it was a bare TypeError); a GenerationConfig passed second,
    where Hugging Face takes it, landed in attention_mask ("attention_mask shape <class GenerationConfig> ...")."""
    model = model_for("gpt2")
    prompt = torch.zeros(2, 3, dtype=torch.long)
    assert torch.equal(model.generate(inputs=prompt, max_new_tokens=2), model.generate(prompt, max_new_tokens=2))
    with pytest.raises(InputError, match="give the prompt once: input_ids or inputs"):
        model.generate(prompt, inputs=prompt, max_new_tokens=2)
    with pytest.raises(InputError, match="generate needs a prompt"):
        model.generate(max_new_tokens=2)
    with pytest.raises(InputError, match="pass the config by name, generate\\(input_ids, generation_config=config\\)"):
        model.generate(prompt, GenerationConfig(max_new_tokens=2))


def test_a_backbone_config_asking_for_the_dict_output_is_followed_and_callers_can_override_it():
    """return_dict_in_generate comes from the backbone's generation config too, as in Hugging Face; rmt's own callers
    (rmt generate, evaluation by length) pass False, so a checkpoint whose config sets it still gives them ids."""
    model = model_for("gpt2")
    prompt = torch.zeros(1, 3, dtype=torch.long)
    model.backbone.generation_config.return_dict_in_generate = True
    assert isinstance(model.generate(prompt, max_new_tokens=2), GenerateOutput)
    assert isinstance(model.generate(prompt, max_new_tokens=2, return_dict_in_generate=False), torch.Tensor)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_length": "9"}, "max_length must be a whole number of tokens, got '9'"),
        ({"max_length": True}, "max_length must be a whole number of tokens, got True"),
        ({"max_new_tokens": 2, "min_length": 9.5}, "min_length must be a whole number of tokens, got 9.5"),
        ({"max_new_tokens": 2, "min_new_tokens": "1"}, "min_new_tokens must be a whole number of tokens, got '1'"),
    ],
)
def test_lengths_that_are_no_whole_numbers_are_refused(setting, message):
    """Checked before any arithmetic on them (a string was a TypeError, True "left no new token", 9.5 passed)."""
    with pytest.raises(InputError, match=message):
        model_for("gpt2").generate(torch.zeros(1, 3, dtype=torch.long), **setting)


def test_check_generation_settings_takes_the_prompt_as_generate_does():
    model = model_for("gpt2")
    prompt = torch.zeros(2, 3, dtype=torch.long)
    check_generation_settings(model, inputs=prompt, max_new_tokens=2)
    with pytest.raises(InputError, match="pass the config by name"):
        check_generation_settings(model, prompt, GenerationConfig(max_new_tokens=2))
    with pytest.raises(InputError, match="give the prompt once"):
        check_generation_settings(model, prompt, inputs=prompt, max_new_tokens=2)


def test_token_types_of_one_text_are_taken_as_forward_takes_them():
    """generate(**tokenizer(texts)) with a tokenizer that returns token_type_ids (as forward accepts them)."""
    model = model_for("gpt2")
    prompt = torch.zeros(2, 3, dtype=torch.long)
    types = torch.zeros_like(prompt)
    assert torch.equal(
        model.generate(prompt, token_type_ids=types, max_new_tokens=2), model.generate(prompt, max_new_tokens=2)
    )
    with pytest.raises(InputError, match="token_type_ids marks a second text"):
        model.generate(prompt, token_type_ids=torch.ones_like(prompt), max_new_tokens=2)
