"""Generation settings (`rmt.memory.generation`): transformers' GenerationConfig fields give what a Hugging Face
model's own `generate` gives (checked against the backbone's `generate` on a memory model that reduces to it), a
setting that is not implemented or a keyword that is no setting is refused, max_length and num_return_sequences
follow Hugging Face, scores have one entry per step run, and generate leaves every submodule's train/eval mode as
it found it."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, strengthen_memory, tiny_decoder
from transformers import (
    ForcedBOSTokenLogitsProcessor,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from rmt import ARMTForCausalLM, RMTConfig, RMTForCausalLM
from rmt.errors import InputError
from rmt.inference import DiagonalARMT


def plain_model(family: str = "llama") -> RMTForCausalLM:
    """No memory and one segment longer than prompt + new tokens: the backbone itself, so its own `generate` is the
    reference for every setting."""
    torch.manual_seed(0)
    return RMTForCausalLM(tiny_decoder(family), RMTConfig(num_memory_tokens=0, segment_size=64)).eval()


def memory_model(kind: str = "rmt") -> RMTForCausalLM | ARMTForCausalLM:
    torch.manual_seed(0)
    if kind == "armt":
        config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=5, d_mem=8)
        return strengthen_memory(ARMTForCausalLM(tiny_decoder("llama"), config)).eval()
    return RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)).eval()


def prompts(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# Each setting changes the greedy tokens of the prompts below (checked in the test; max_length: their number), so a
# setting that is ignored fails. "EOS" stands for a token the unconstrained run emits early, used as eos_token_id.
GREEDY_SETTINGS = {
    "min_new_tokens": {"min_new_tokens": 6, "eos_token_id": "EOS"},
    "min_length": {"min_length": 12, "eos_token_id": "EOS"},
    "suppress_tokens": {"suppress_tokens": "FIRST"},
    "begin_suppress_tokens": {"begin_suppress_tokens": "FIRST"},
    "bad_words_ids": {"bad_words_ids": "FIRST_WORDS"},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 1},
    "repetition_penalty": {"repetition_penalty": 3.0},
    "sequence_bias": {"sequence_bias": "FIRST_BIAS"},
    "forced_eos_token_id": {"forced_eos_token_id": 5},
    "exponential_decay_length_penalty": {"exponential_decay_length_penalty": (1, 3.0), "eos_token_id": 7},
    "max_length": {"max_length": 9},
}
SAMPLING_SETTINGS = {
    "temperature-top_k": {"temperature": 0.7, "top_k": 5},
    "top_p": {"top_p": 0.5},
    "min_p": {"min_p": 0.9},
    "typical_p": {"typical_p": 0.5},
    "top_h": {"top_h": 0.5},
    "epsilon_cutoff": {"epsilon_cutoff": 0.016},
    "eta_cutoff": {"eta_cutoff": 0.5, "temperature": 0.05},
    "renormalize_logits": {"renormalize_logits": True, "temperature": 0.5},
    "num_return_sequences": {"num_return_sequences": 3, "temperature": 2.0},
}


def _resolve(settings: dict, free: torch.Tensor) -> dict:
    """Fill the placeholders from `free` [B, N], the new tokens of an unconstrained greedy run."""
    first = sorted({int(t) for t in free[:, 0]})
    values = {
        "EOS": int(free[0, 1]),
        "FIRST": first,
        "FIRST_WORDS": [[t] for t in first],
        "FIRST_BIAS": [[[t], -100.0] for t in first],
    }
    return {name: values.get(value, value) if isinstance(value, str) else value for name, value in settings.items()}


def _live(new: torch.Tensor, eos: int | None) -> torch.Tensor:
    """[B, N]: the steps up to each row's EOS. After it transformers feeds the row pad tokens and this loop feeds it
    nothing, so the scores there (which choose nothing) differ."""
    if eos is None:
        return torch.ones_like(new, dtype=torch.bool)
    at_eos = (new == eos).long()
    return at_eos.cumsum(dim=1) - at_eos == 0  # no EOS before the step


def _both(model, prompt, seed: int = 0, **settings):
    """Our generate and the backbone's own on the same prompt and seed: (sequences, scores) of each. The backbone gets
    an explicit mask: transformers would otherwise take every prompt token equal to pad_token_id for padding."""
    torch.manual_seed(seed)
    ours = model.generate(prompt, output_scores=True, return_dict_in_generate=True, **settings)
    torch.manual_seed(seed)
    theirs = model.backbone.generate(
        prompt, attention_mask=torch.ones_like(prompt), output_scores=True, return_dict_in_generate=True, **settings
    )
    return (ours.sequences, torch.stack(ours.scores, dim=1)), (theirs.sequences, torch.stack(theirs.scores, dim=1))


@pytest.mark.parametrize("name", GREEDY_SETTINGS)
def test_greedy_settings_match_hugging_face_generate(name):
    model = plain_model()
    prompt = prompts(2, 6, seed=1)
    free = model.generate(prompt, max_new_tokens=8)[:, 6:]
    settings = _resolve(GREEDY_SETTINGS[name], free)
    length = {} if "max_length" in settings else {"max_new_tokens": 8}
    (ours, our_scores), (theirs, their_scores) = _both(model, prompt, pad_token_id=0, **length, **settings)
    assert torch.equal(ours, theirs)
    live = _live(ours[:, 6:], settings.get("eos_token_id"))
    assert torch.allclose(our_scores[live], their_scores[live], atol=1e-5)
    if name == "max_length":
        assert ours.shape == (2, 9)
    else:
        width = min(ours.shape[1], free.shape[1] + 6)
        assert not torch.equal(ours[:, 6:width], free[:, : width - 6])  # the setting made a difference


@pytest.mark.parametrize("name", SAMPLING_SETTINGS)
def test_sampling_settings_match_hugging_face_generate(name):
    """Same seed, same processed scores, same draws: transformers samples with torch.multinomial too, and repeats each
    prompt row num_return_sequences times in place (rows grouped per prompt)."""
    model = plain_model()
    prompt = prompts(2, 6, seed=2)
    settings = {"do_sample": True, "max_new_tokens": 8, "pad_token_id": 0, **SAMPLING_SETTINGS[name]}
    settings.setdefault("top_k", 0)  # transformers' generate would otherwise add its default top_k=50
    (ours, our_scores), (theirs, their_scores) = _both(model, prompt, seed=3, **settings)
    assert torch.equal(ours, theirs)
    assert torch.allclose(our_scores, their_scores, atol=1e-5)
    tested = next(iter(SAMPLING_SETTINGS[name]))
    torch.manual_seed(3)
    unset = model.generate(
        prompt, output_scores=True, return_dict_in_generate=True, **{k: v for k, v in settings.items() if k != tested}
    )
    assert not torch.equal(our_scores, torch.stack(unset.scores, dim=1))  # the setting made a difference


class _BanTopToken(LogitsProcessor):
    """Bans each row's highest-scoring token: run after top_k=1 it would leave nothing to sample from."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.scatter(1, scores.argmax(dim=1, keepdim=True), float("-inf"))


@pytest.mark.parametrize(
    ("custom", "settings"),
    [
        ([_BanTopToken()], {"do_sample": True, "top_k": 2}),
        ([RepetitionPenaltyLogitsProcessor(5.0)], {"repetition_penalty": 1.5}),
    ],
    ids=["before-the-warpers", "replaces-the-built-in-of-its-type"],
)
def test_a_callers_logits_processor_is_merged_as_hugging_face_merges_it(custom, settings):
    """Before the sampling warpers, and in place of the processor a setting builds (`repetition_penalty`)."""
    model = plain_model()
    prompt = prompts(2, 6, seed=5)
    settings = {**settings, "max_new_tokens": 6, "pad_token_id": 0, "logits_processor": LogitsProcessorList(custom)}
    (ours, our_scores), (theirs, their_scores) = _both(model, prompt, seed=4, **settings)
    assert torch.equal(ours, theirs)
    assert torch.allclose(our_scores, their_scores, atol=1e-5)


def test_num_return_sequences_repeats_each_prompt_and_its_memory():
    """Rows b*R .. b*R+R-1 continue prompt b (and its memory_state rows); top-1 sampling makes them all greedy's."""
    model = memory_model()
    prompt = prompts(2, 7, seed=4)
    state = model(prompts(2, 9, seed=5)).memory_state
    greedy = model.generate(prompt, memory_state=state, max_new_tokens=6)
    out = model.generate(prompt, memory_state=state, max_new_tokens=6, do_sample=True, top_k=1, num_return_sequences=3)
    assert torch.equal(out, greedy.repeat_interleave(3, dim=0))
    with pytest.raises(InputError, match="num_return_sequences"):
        model.generate(prompt, max_new_tokens=6, num_return_sequences=3)  # greedy has one answer, as in HF


def test_max_length_counts_the_prompt_width_as_hugging_face_does():
    """max_length bounds the result's width, padding included, as in transformers (it counted from the longest
    prompt's real tokens, so a batch padded wider than its prompts came back longer than max_length)."""
    model = plain_model()
    prompt = prompts(2, 9, seed=6)
    mask = torch.ones_like(prompt)
    mask[:, :2] = 0  # both rows left-padded: the longest prompt has 7 tokens
    mask[1, :5] = 0
    expected = model.generate(prompt, mask, max_new_tokens=3)
    assert torch.equal(model.generate(prompt, mask, max_length=12), expected)
    theirs = model.backbone.generate(prompt, attention_mask=mask, max_length=12, do_sample=False, pad_token_id=0)
    assert torch.equal(expected, theirs)
    # Where both are set, max_new_tokens wins, from the call or from a config (as in Hugging Face).
    config = GenerationConfig(max_new_tokens=2)
    with pytest.warns(UserWarning, match="max_new_tokens=2 .* takes precedence over max_length=12"):
        assert model.generate(prompt, mask, generation_config=config, max_length=12).shape == (2, 11)
    assert torch.equal(model.generate(prompt, mask, max_new_tokens=3, max_length=10), expected)
    with pytest.raises(InputError, match="max_length=9 leaves no new token after the prompt's 9 positions"):
        model.generate(prompt, mask, max_length=9)
    with pytest.raises(InputError, match="set max_new_tokens"):
        model.generate(prompt, mask)
    # Lengths that are not whole numbers, and a config that is not a GenerationConfig, are one error each (they
    # were a TypeError and an AttributeError).
    with pytest.raises(InputError, match=r"max_new_tokens must be a whole number of tokens, got 2\.5"):
        model.generate(prompt, mask, max_new_tokens=2.5)
    with pytest.raises(InputError, match=r"max_length must be a whole number of tokens, got 12\.5"):
        model.generate(prompt, mask, max_length=12.5)
    with pytest.raises(InputError, match="generation_config must be a transformers GenerationConfig, got a dict"):
        model.generate(prompt, mask, generation_config={"max_new_tokens": 3})


def test_the_dict_output_is_hugging_faces_and_its_tools_take_it():
    """return_dict_in_generate=True gives transformers' GenerateDecoderOnlyOutput, scores one [B, V] tensor per
    step, so compute_transition_scores works on it (scores were one [B, N, V] tensor, which it refused)."""
    model = plain_model()
    prompt = prompts(2, 6, seed=12)
    settings = {"max_new_tokens": 4, "output_scores": True, "return_dict_in_generate": True, "do_sample": False}
    ours = model.generate(prompt, **settings)
    theirs = model.backbone.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert isinstance(ours, GenerateDecoderOnlyOutput) and isinstance(ours.scores, tuple)
    shapes = [[tuple(step.shape) for step in out.scores] for out in (ours, theirs)]
    assert shapes[0] == shapes[1] == [(2, VOCAB)] * 4
    transitions = [
        model.backbone.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        for out in (ours, theirs)
    ]
    torch.testing.assert_close(*transitions, rtol=1e-5, atol=1e-5)


def test_max_time_stops_decoding():
    model = memory_model()
    out = model.generate(
        prompts(1, 4, seed=7), max_new_tokens=10, max_time=0.0, output_scores=True, return_dict_in_generate=True
    )
    assert out.sequences.shape == (1, 5) and torch.stack(out.scores, dim=1).shape == (1, 1, VOCAB)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_beams": 4}, "beam search is not supported; use num_beams=1"),
        ({"num_beams": 4, "do_sample": True}, "beam search is not supported"),
        ({"stop_strings": ["end"]}, "stop_strings is not supported"),
        ({"force_words_ids": [[3]]}, "force_words_ids"),
        ({"penalty_alpha": 0.6, "top_k": 4}, "contrastive search is not supported"),
        ({"guidance_scale": 1.5}, "guidance_scale=1"),
        ({"dola_layers": "high"}, "dola_layers"),
        ({"prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens"),
        ({"encoder_repetition_penalty": 1.3}, "encoder_repetition_penalty"),
        ({"encoder_no_repeat_ngram_size": 2}, "encoder_no_repeat_ngram_size"),
        ({"output_logits": True}, "output_logits"),
        ({"do_smaple": True}, "unknown generate argument.*do_smaple"),
        (
            {"streamer": object(), "do_sample": True},
            "streamer: argument.*of Hugging Face.s generate that this generate does not take",
        ),
    ],
)
def test_settings_that_would_be_ignored_are_refused(settings, message):
    model = memory_model()
    with pytest.raises(InputError, match=message):
        model.generate(prompts(1, 4, seed=8), max_new_tokens=3, **settings)


def test_a_backbone_config_asking_for_beam_search_is_refused_until_overridden():
    model = memory_model()
    model.backbone.generation_config = GenerationConfig(num_beams=3)
    prompt = prompts(1, 4, seed=8)
    with pytest.raises(InputError, match="use num_beams=1"):
        model.generate(prompt, max_new_tokens=3)
    assert model.generate(prompt, max_new_tokens=3, num_beams=1).shape == (1, 7)


def test_scores_have_one_entry_per_new_token_after_an_early_stop():
    """Every row at EOS before max_new_tokens: sequences end there (no padding columns) and scores has exactly as
    many steps; a row that stopped before the others is padded up to the last row's stop."""
    model = memory_model()
    prompt = prompts(2, 6, seed=9)
    free = model.generate(prompt, max_new_tokens=10)[:, 6:]
    eos = int(free[0, 2])
    stops = [int((row == eos).nonzero()[0]) if bool((row == eos).any()) else 9 for row in free]
    out = model.generate(
        prompt,
        max_new_tokens=10,
        eos_token_id=eos,
        pad_token_id=VOCAB - 1,
        output_scores=True,
        return_dict_in_generate=True,
    )
    steps = max(stops) + 1
    assert steps < 10
    assert out.sequences.shape == (2, 6 + steps) and torch.stack(out.scores, dim=1).shape == (2, steps, VOCAB)
    new = out.sequences[:, 6:]
    for row, stop in enumerate(stops):
        assert torch.equal(new[row, : stop + 1], free[row, : stop + 1])
        assert bool((new[row, stop + 1 :] == VOCAB - 1).all())
        assert torch.equal(torch.stack(out.scores, dim=1)[row, : stop + 1].argmax(-1), new[row, : stop + 1])


def _mixed_modes(model: torch.nn.Module) -> dict[str, bool]:
    """Wrapper training, backbone in eval (as after building on an eval backbone), its output head training."""
    model.train()
    model.backbone.eval()
    model.backbone.get_output_embeddings().train()
    return {name: module.training for name, module in model.named_modules()}


@pytest.mark.parametrize("kind", ["rmt", "armt", "diagonal"])
def test_generate_restores_each_submodules_mode(kind):
    model = memory_model("armt" if kind != "rmt" else "rmt")
    modes = _mixed_modes(model)
    generator = DiagonalARMT(model) if kind == "diagonal" else model
    generator.generate(prompts(2, 7, seed=10), max_new_tokens=4)
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_generate_restores_each_submodules_mode_when_it_fails():
    torch.manual_seed(0)
    model = RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=3, segment_size=5, xl_cache_tokens=4))
    modes = _mixed_modes(model)
    with pytest.raises(ValueError, match="embeds at most 256"):  # raised while decoding, past GPT-2's positions
        model.generate(prompts(1, 150, seed=11), max_new_tokens=100)
    assert {name: module.training for name, module in model.named_modules()} == modes


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"do_sample": True, "top_p": 2.0, "max_new_tokens": 4}, "top_p"),
        ({"do_sample": True, "temperature": 0.0, "max_new_tokens": 4}, "temperature"),
        ({"num_beams": 2, "max_new_tokens": 4}, "num_beams"),
        ({"not_a_setting": 1, "max_new_tokens": 4}, "not_a_setting"),
        ({"do_sample": True, "top_p": 0.5}, "set max_new_tokens"),
        ({"max_new_tokens": 4, "repetition_penalty": 1.2}, None),
    ],
)
def test_checking_settings_refuses_what_generate_refuses(settings, refused):
    """check_generation_settings (a command's check before it reads a document) and generate agree, each setting's
    own check included (transformers' validation of a processor's value)."""
    from rmt.memory.generation import check_generation_settings

    model = plain_model()
    prompt = prompts(1, 5, seed=6)
    if refused is None:
        check_generation_settings(model, prompt, **settings)
        model.generate(prompt, **settings)
        return
    with pytest.raises(InputError, match=refused) as generated:
        model.generate(prompt, **settings)
    with pytest.raises(InputError) as checked:
        check_generation_settings(model, prompt, **settings)
    assert str(checked.value) == str(generated.value)


@pytest.mark.parametrize(
    "case",
    [
        "config-filled-from-the-backbone",
        "sampling-default-top-k",
        "pad-is-the-first-eos",
        "begin-suppress-after-bos",
        "min-new-tokens-over-min-length",
    ],
)
def test_settings_resolve_as_in_hugging_face(case):
    """A passed GenerationConfig's unset fields come from the backbone's, then transformers' defaults (top_k=50 when
    sampling); finished rows are padded with the first EOS id; begin_suppress_tokens starts after a forced BOS on a
    one-token prompt; min_new_tokens takes the place of min_length where both are set."""
    model = plain_model()
    prompt = prompts(2, 6, seed=8)
    free = model.generate(prompt, max_new_tokens=6)[:, 6:]
    if case == "config-filled-from-the-backbone":
        model.backbone.generation_config.eos_token_id = int(free[0, 1])
        model.backbone.generation_config.pad_token_id = 0
        settings = {"generation_config": GenerationConfig(max_new_tokens=6)}
    elif case == "sampling-default-top-k":
        settings = {"do_sample": True, "max_new_tokens": 6}
    elif case == "min-new-tokens-over-min-length":
        settings = {"max_new_tokens": 6, "min_length": 12, "min_new_tokens": 1, "eos_token_id": int(free[0, 1])}
    elif case == "pad-is-the-first-eos":
        settings = {"max_new_tokens": 6, "eos_token_id": [int(free[0, 1]), int(free[1, 1]), 1]}
    else:
        prompt = prompt[:, :1]
        first = model.generate(prompt, max_new_tokens=2)[:, 2]
        settings = {"max_new_tokens": 4, "forced_bos_token_id": 3, "begin_suppress_tokens": sorted(set(first.tolist()))}
    (ours, our_scores), (theirs, their_scores) = _both(model, prompt, **settings)
    assert torch.equal(ours, theirs)
    if case in ("sampling-default-top-k", "begin-suppress-after-bos"):  # no EOS: after one, the scores differ (_live)
        assert torch.allclose(our_scores, their_scores, atol=1e-5)


def test_two_callers_processors_of_one_type_merge_as_in_hugging_face():
    """The first takes the built-in's place, the second follows (and, forcing last, wins)."""
    model = plain_model()
    prompt = prompts(1, 1, seed=9)
    custom = LogitsProcessorList([ForcedBOSTokenLogitsProcessor(11), ForcedBOSTokenLogitsProcessor(22)])
    (ours, _), (theirs, _) = _both(model, prompt, max_new_tokens=2, forced_bos_token_id=9, logits_processor=custom)
    assert torch.equal(ours, theirs) and int(ours[0, 1]) == 22


def test_settings_the_backbone_config_makes_invalid_are_one_error():
    """A call's config that transformers refuses once the backbone's settings fill it in: an InputError."""
    model = plain_model()
    model.backbone.generation_config.forced_eos_token_id = 5
    config = GenerationConfig(suppress_tokens=[5], max_new_tokens=3)
    with pytest.raises(InputError, match="bad generation settings"):
        model.generate(prompts(1, 4, seed=1), generation_config=config, forced_eos_token_id=None)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"top_p": float("nan")}, "top_p must be a finite number, got nan"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": "0.9"}, "top_p must be a finite number"),
        ({"temperature": float("inf")}, "temperature must be a finite number, got inf"),
        ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
        ({"epsilon_cutoff": float("nan")}, "epsilon_cutoff must be a finite number"),
        ({"eta_cutoff": float("nan")}, "eta_cutoff must be a finite number"),
        ({"top_k": True}, "top_k must be a whole number >= 0"),
        ({"top_k": -1}, "top_k must be a whole number >= 0"),
    ],
)
def test_sampling_settings_that_transformers_lets_through_are_refused(setting, message):
    """top_p=nan or 0, temperature=inf and NaN cutoffs pass transformers' warpers (NaN fails no comparison; top_p=0
    decodes greedily, temperature=inf uniformly) and top_k=True failed inside torch: refused before any work, by
    generate, check_generation_settings and the diagonal engine alike. Greedy decoding ignores them, as in
    transformers."""
    from rmt.memory.generation import check_generation_settings

    model = plain_model()
    prompt = prompts(1, 5, seed=6)
    sampling = {"do_sample": True, "max_new_tokens": 2, **setting}
    with pytest.raises(InputError, match=message):
        check_generation_settings(model, prompt, **sampling)
    with pytest.raises(InputError, match=message):
        model.generate(prompt, **sampling)
    with pytest.raises(InputError, match=message):
        DiagonalARMT(memory_model("armt"), group_size=None).generate(prompt, **sampling)
    assert model.generate(prompt, max_new_tokens=2, **setting).shape == (1, 7)


def test_a_whole_number_temperature_samples():
    """transformers' warper takes only a float: temperature=2 was refused as not "a strictly positive float"."""
    model = plain_model()

    def sampled(temperature: float) -> torch.Tensor:
        torch.manual_seed(0)
        return model.generate(prompts(1, 5, seed=6), do_sample=True, temperature=temperature, max_new_tokens=12)

    ours = sampled(2)
    assert torch.equal(ours, sampled(2.0))
    assert not torch.equal(ours, sampled(1.0))  # applied, not ignored: the same draws pick other tokens
