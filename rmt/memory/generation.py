"""Generation for every memory model (RMT, Tr-XL, MemTrXL, ARMT; the diagonal engine too), in Hugging Face terms.

    ids = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)                   # greedy
    ids = model.generate(input_ids, max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9)
    ids              # [B, P + N]: each prompt row as given, then its N <= 20 new tokens (pad_token_id after EOS)
    out = model.generate(input_ids, max_new_tokens=20, return_dict_in_generate=True, output_scores=True)
    out.sequences, out.scores   # transformers' GenerateDecoderOnlyOutput: scores are N tensors [B, V]

The input is read by a `MemoryStream` (rmt.memory.stream), so decoding continues the segment that holds the prompt's
last token, exactly as `forward` segments prompt + generated tokens: every new token costs one position through the
layers (the open segment's keys/values are cached), plus a re-run of the segment when it fills and its memory is
written. Under greedy decoding the tokens are the argmax of `forward(prompt + generated so far).logits[:, -1]` (tests).

Prompts of different lengths decode together in one loop: pad them (left or right) and pass `attention_mask`; each
row is read from its own first real token, as if alone. The logits processors see each row's real tokens
right-aligned (padding first), and the processors that match token ids (no_repeat_ngram_size, bad_words_ids,
sequence_bias) see the padding as an id outside the vocabulary, so they run on a row's own text however it was padded
and whatever id pads it; repetition_penalty skips the padding. A caller's own processors (`logits_processor`) see the
padding ids and the vocabulary as given, as transformers shows them.

Settings are transformers' `GenerationConfig` fields, applied with transformers' own logits processors, as
`model.generate` of a Hugging Face model applies them: greedy (`do_sample=False`, the default) or sampling
(temperature, top_k, top_p, min_p, typical_p, top_h, epsilon_cutoff, eta_cutoff), repetition_penalty,
no_repeat_ngram_size, bad_words_ids, suppress_tokens, begin_suppress_tokens, sequence_bias, min_new_tokens /
min_length, forced_bos_token_id / forced_eos_token_id, exponential_decay_length_penalty, remove_invalid_values,
renormalize_logits; max_new_tokens / max_length, max_time, eos_token_id, pad_token_id, num_return_sequences (with
sampling). Your own `logits_processor` is merged in as transformers merges it: before the sampling warpers, in
place of a built-in processor of the same type. A setting that would change the
result and that this token-by-token loop does not implement (beam search, constraints, stop_strings, contrastive
search, ...) and a keyword that is no GenerationConfig field are refused with an InputError, never silently ignored;
so are sampling settings that transformers lets through (top_p NaN or 0, temperature inf) and an end or forced token
id outside the vocabulary.

`prefill(closed_ids, closed_mask, memory_state)` lets an engine compute the memory of the prompt's complete segments
its own way (the diagonal engine does); the rest of the prompt and decoding then go through the stream.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, cast

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    ExponentialDecayLengthPenalty,
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from rmt.errors import InputError
from rmt.memory.interface import MemoryModel
from rmt.memory.outputs import GenerateOutput
from rmt.memory.segments import check_one_text, closed_length, validate_attention_mask, validate_input_ids
from rmt.memory.state import State, merge_rows, select_rows
from rmt.memory.stream import MemoryStream

Prefill = Callable[[torch.Tensor, torch.Tensor, State | None], State]


@torch.no_grad()
def generate(
    model: MemoryModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    logits_processor: LogitsProcessorList | None = None,
    memory_state: State | None = None,
    output_scores: bool = False,
    prefill: Prefill | None = None,
    **kwargs: Any,
) -> torch.Tensor | GenerateOutput:
    """Generate after each prompt row of input_ids [B, P]. `kwargs` set GenerationConfig fields over
    `generation_config` (else the backbone's, else transformers' defaults): see the module docstring for those
    applied; any other setting that changes the result, and any keyword that is no GenerationConfig field, raises an
    InputError. `memory_state` continues from earlier input (e.g. a document's memory loaded from a file; a state of
    one sample is given to every prompt row). The prompt may also be passed as `inputs`, its name in Hugging Face.

    Length: `max_new_tokens`, or `max_length` counted as Hugging Face counts it, from the prompt's width P padding
    included: max_new_tokens = max_length - P, the same for every row, so the result is at most max_length wide.
    Where both are set, max_new_tokens wins, as in Hugging Face. `min_length` becomes min_new_tokens the same way
    (min_new_tokens wins where both are set, as in Hugging Face). A call that sets neither, and whose backbone's
    generation config sets no length either, is refused rather than cut at transformers' default of 20 tokens.
    Settings resolve as Hugging Face resolves them: `kwargs` over `generation_config`, whose
    unset fields come from the backbone's generation_config and then transformers' defaults (so sampling keeps the
    50 likeliest tokens unless top_k says otherwise).

    num_return_sequences = R > 1 (sampling only) samples R continuations of every prompt: B * R rows, the R of
    prompt b at rows b * R .. b * R + R - 1 (as Hugging Face groups them); `memory_state` rows are repeated alike.

    Result, as Hugging Face's generate returns it: the sequences [B*R, P + N] as a tensor; with
    `return_dict_in_generate=True` (a keyword, or set in the generation config) a `GenerateOutput` (transformers'
    GenerateDecoderOnlyOutput) holding them and, with `output_scores=True` too, scores: a tuple of one [B*R, V]
    tensor per decoding step run, the processed logits each new token was chosen from (without
    `return_dict_in_generate` the scores are not kept, with a warning).
    N = max_new_tokens unless decoding ended early: every row at EOS (or max_time ran out) after N steps. A row that
    ended before the others is padded with pad_token_id; its scores at those steps are computed from its last real
    token (Hugging Face feeds it the pad tokens instead): they choose nothing."""
    input_ids = _prompt(input_ids, attention_mask, kwargs)
    config, mask, max_new_tokens, min_new_tokens = _settings(
        model, input_ids, attention_mask, generation_config, kwargs
    )
    input_ids = input_ids.to(model.device)
    repeats = config.num_return_sequences or 1
    if repeats > 1:  # GenerationConfig has refused it under greedy decoding
        rows = torch.arange(input_ids.shape[0], device=model.device).repeat_interleave(repeats)
        if memory_state is not None:
            memory_state = select_rows(model.start_state(input_ids.shape[0], memory_state), rows)
        input_ids, mask = input_ids[rows], mask[rows]
    batch, width = input_ids.shape
    eos = _token_ids(config.eos_token_id)
    pad = int(config.pad_token_id) if config.pad_token_id is not None else (eos[0] if eos else 0)  # as transformers
    # Processors read each row's real tokens right-aligned, so a right-padded prompt's padding does not sit between
    # its text and the new tokens; repetition_penalty skips that padding (as transformers does for left padding).
    padding = width - mask.sum(dim=1)
    view = input_ids.gather(1, torch.sort(mask.to(torch.int8), dim=1, stable=True).indices)
    processors = _processors(config, logits_processor, eos, width, max_new_tokens, min_new_tokens, padding)
    eos_ids = torch.tensor(eos, device=model.device)
    as_dict = bool(config.return_dict_in_generate)
    keep_scores = as_dict and (output_scores or bool(config.output_scores))
    if output_scores and not as_dict:  # transformers logs the same of a config's output_scores
        warnings.warn(
            "output_scores=True is ignored without return_dict_in_generate=True (as in transformers): generate "
            "returns the sequences only",
            stacklevel=4,  # the caller of model.generate (torch.no_grad adds a frame)
        )
    deadline = None if config.max_time is None else time.monotonic() + config.max_time

    with evaluation_mode(cast(nn.Module, model)):
        stream = _read_prompt(model, input_ids, mask, memory_state, prefill)
        logits = stream.last_logits()
        finished = torch.zeros(batch, dtype=torch.bool, device=model.device)
        chosen: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            scores_now = processors(view, logits.float()) if processors else logits.float()
            if config.do_sample:
                token = torch.multinomial(torch.softmax(scores_now, dim=-1), 1).squeeze(1)
            else:
                token = scores_now.argmax(dim=-1)
            if keep_scores:
                scores.append(scores_now)
            chosen.append(token.masked_fill(finished, pad))
            # A finished row's scores choose nothing: it shows the processors an id of the vocabulary (the pad id
            # may lie outside it, and processors index the scores with the ids they see).
            view = torch.cat([view, token.masked_fill(finished, 0)[:, None]], dim=1)
            if eos:
                finished |= torch.isin(token, eos_ids)
            out_of_time = deadline is not None and time.monotonic() > deadline
            if bool(finished.all()) or out_of_time or step == max_new_tokens - 1:
                break
            # A finished row feeds nothing (mask 0); its id is 0, not the pad id, which may lie outside the vocabulary.
            fed = token.masked_fill(finished, 0)[:, None]
            logits = stream.feed(fed, (~finished).long()[:, None], logits="last")
    # As many new columns as steps run, and one score per step (Hugging Face's convention).
    sequences = torch.cat([input_ids, torch.stack(chosen, dim=1)], dim=1)
    if not as_dict:
        return sequences
    return GenerateOutput(sequences=sequences, scores=tuple(scores) if keep_scores else None)


def _prompt(input_ids: torch.Tensor | None, attention_mask: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The prompt, given as `input_ids` or as `inputs` (Hugging Face's name, taken out of `kwargs`). A
    GenerationConfig in attention_mask's place (Hugging Face's generate takes it second) is refused by name. The
    token_type_ids a tokenizer may return (`generate(**tokenizer(texts))`) are taken out too: one text (all type 0)
    is read as forward reads it; a second text is refused."""
    check_one_text(kwargs.pop("token_type_ids", None))
    inputs = kwargs.pop("inputs", None)
    if inputs is not None:
        if input_ids is not None:
            raise InputError("give the prompt once: input_ids or inputs (Hugging Face's name for it), not both")
        input_ids = inputs
    if input_ids is None:
        raise InputError("generate needs a prompt: input_ids [batch, tokens]")
    if isinstance(attention_mask, GenerationConfig):
        raise InputError(
            "generate's second argument is attention_mask, not a GenerationConfig: pass the config by name, "
            "generate(input_ids, generation_config=config)"
        )
    return input_ids


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (no dropout) inside the block, each one's own flag restored after it:
    `train(was_training)` would put an eval backbone inside a training wrapper into training mode."""
    flags = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in flags:
            child.training = training


def _read_prompt(
    model: MemoryModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    memory_state: State | None,
    prefill: Prefill | None,
) -> Any:
    """A stream that has read every prompt row (the complete segments through `prefill` when given)."""
    batch = input_ids.shape[0]
    if prefill is None:
        stream = MemoryStream(model, batch, memory_state)
        stream.feed(input_ids, mask)
        return stream
    lengths = mask.sum(dim=1)
    order = torch.sort((mask == 0).to(torch.int8), dim=1, stable=True).indices
    packed = input_ids.gather(1, order)  # each row's real tokens first
    closed = torch.tensor([closed_length(int(n), model.config.segment_size) for n in lengths], device=mask.device)
    state = model.start_state(batch, memory_state)
    rows = (closed > 0).nonzero().flatten()
    if rows.numel():
        width = int(closed.max())
        closed_mask = (torch.arange(width, device=mask.device)[None, :] < closed[rows, None]).long()
        start = None if memory_state is None else select_rows(state, rows)  # in the model's dtypes and device
        state = merge_rows(state, rows, prefill(packed[rows, :width], closed_mask, start))
    stream = MemoryStream(model, batch, state)
    offsets = torch.arange(int((lengths - closed).max()), device=mask.device)
    open_ids = packed.gather(1, (closed[:, None] + offsets).clamp(max=packed.shape[1] - 1))
    stream.feed(open_ids, (offsets[None, :] < (lengths - closed)[:, None]).long())
    return stream


# Arguments of Hugging Face's generate (or of the model call it makes) that this loop has no counterpart for.
_HF_ONLY_ARGUMENTS = frozenset(
    {
        "assistant_model",
        "custom_generate",
        "negative_prompt_attention_mask",
        "negative_prompt_ids",
        "past_key_values",
        "prefix_allowed_tokens_fn",
        "stopping_criteria",
        "streamer",
        "synced_gpus",
        "tokenizer",
        "use_model_defaults",
    }
)


@cache
def _config_fields() -> frozenset[str]:
    """The settings a GenerationConfig has (its bookkeeping entries aside)."""
    fields = GenerationConfig().to_dict()
    return frozenset(name for name in fields if not name.startswith("_") and name != "transformers_version")


def _unsupported(config: GenerationConfig) -> list[str]:
    """Why each setting of `config` that would change the result but that this loop does not implement is refused.
    Settings that only matter to those (length_penalty, early_stopping, diversity_penalty, the assistant's) or only
    to speed or memory (use_cache, cache_implementation, ...) are accepted and have nothing to change here."""
    checks = [
        ((config.num_beams or 1) > 1, "beam search is not supported; use num_beams=1"),
        ((config.num_beam_groups or 1) > 1, "group beam search is not supported; use num_beam_groups=1"),
        (config.constraints is not None, "constraints (constrained beam search) are not supported"),
        (config.force_words_ids is not None, "force_words_ids (constrained beam search) is not supported"),
        (
            bool(config.penalty_alpha) and not config.do_sample,
            "contrastive search is not supported; leave penalty_alpha unset",
        ),
        (config.stop_strings is not None, "stop_strings is not supported (it needs a tokenizer); use eos_token_id"),
        (bool(config.token_healing), "token_healing is not supported (it needs a tokenizer)"),
        (config.dola_layers is not None, "DoLa decoding is not supported; leave dola_layers unset"),
        (
            config.guidance_scale not in (None, 1, 1.0),
            "classifier-free guidance is not supported; use guidance_scale=1",
        ),
        (config.watermarking_config is not None, "watermarking_config is not supported"),
        (
            config.prompt_lookup_num_tokens is not None
            or config.assistant_early_exit is not None
            or getattr(config, "use_mtp", None),
            "assisted generation (prompt_lookup_num_tokens, assistant_early_exit, use_mtp) is not supported",
        ),
        (
            config.encoder_repetition_penalty not in (None, 1, 1.0),
            "encoder_repetition_penalty is not supported; use repetition_penalty",
        ),
        (bool(config.encoder_no_repeat_ngram_size), "encoder_no_repeat_ngram_size is not supported"),
        (
            bool(config.output_attentions or config.output_hidden_states or config.output_logits),
            "output_attentions, output_hidden_states and output_logits are not supported: the result holds sequences "
            "and (return_dict_in_generate=True, output_scores=True) the processed scores",
        ),
    ]
    return [reason for refused, reason in checks if refused]


def _generation_config(
    model: MemoryModel, config: GenerationConfig | None, overrides: dict[str, Any]
) -> GenerationConfig:
    # Checked before GenerationConfig keeps them: it stores unknown keywords as custom entries, so a typo such as
    # do_smaple=True would otherwise be accepted and ignored.
    if config is not None and not isinstance(config, GenerationConfig):
        raise InputError(
            f"generation_config must be a transformers GenerationConfig, got a {type(config).__name__}: pass its "
            "settings as keyword arguments of generate, or GenerationConfig(**settings)"
        )
    unsupported = sorted(set(overrides) & _HF_ONLY_ARGUMENTS)
    if unsupported:
        raise InputError(
            f"{', '.join(unsupported)}: argument(s) of Hugging Face's generate that this generate does not take "
            "(it decodes greedily or by sampling, with logits processors; the prompt is input_ids)"
        )
    unknown = sorted(set(overrides) - _config_fields())
    if unknown:
        raise InputError(
            f"unknown generate argument(s) {', '.join(unknown)}: neither GenerationConfig fields nor "
            "arguments of generate"
        )
    _check_token_ids(overrides, model.vocab_size)  # now: GenerationConfig fails on a pad id that is no number
    # As transformers resolves them: the call's keywords over `config`, whose unset fields come from the backbone's
    # generation_config and then transformers' global defaults (e.g. top_k=50 when sampling). Its default max_length
    # (20 tokens) is left out: a call that names no length is refused rather than cut at 20.
    base = copy.deepcopy(config) if config is not None else GenerationConfig()
    own = getattr(model.backbone, "generation_config", None)
    defaults = {k: v for k, v in GenerationConfig._get_default_generation_params().items() if k != "max_length"}
    try:  # transformers validates its settings at each step
        if own is not None:
            base.update(**own.to_dict(), defaults_only=True)
        base.update(**defaults, defaults_only=True)
        config = GenerationConfig(**{**base.to_dict(), **overrides})
    except ValueError as err:
        raise InputError(f"bad generation settings: {err}") from err
    if "max_length" in overrides and "max_new_tokens" not in overrides and config.max_new_tokens is not None:
        warnings.warn(  # transformers warns the same way
            f"max_new_tokens={config.max_new_tokens} (from the generation config) takes precedence over "
            f"max_length={overrides['max_length']}",
            stacklevel=3,
        )
    refused = _unsupported(config)
    if refused:
        raise InputError("; ".join(refused))
    # Those from the passed config or the backbone's (a GPT-2 config names 50256 whatever its vocabulary) too.
    _check_token_ids(config.to_dict(), model.vocab_size, origin="the generation_config passed or the backbone's")
    _check_sampling(config)
    return config


# The sampling settings that are fractions or scales. transformers' warpers check their ranges, but with comparisons
# that NaN passes (top_p, epsilon_cutoff, eta_cutoff) and with inf in range (temperature=inf samples uniformly).
_SAMPLING_NUMBERS = ("temperature", "top_p", "min_p", "typical_p", "top_h", "epsilon_cutoff", "eta_cutoff")


def _check_sampling(config: GenerationConfig) -> None:
    """Refuse the sampling settings transformers would take: a value that is no finite number (NaN, inf, a string),
    top_p <= 0 (its warper accepts 0 and then keeps one token: greedy decoding in disguise), a top_k that is no whole
    number >= 0 (True passes its check and fails inside torch). Its warpers refuse the rest (temperature <= 0,
    top_p > 1, a negative top_k, ...). Under greedy decoding these settings are ignored, as in transformers (which
    warns): a backbone's generation config may hold any."""
    if not config.do_sample:
        return
    for name in _SAMPLING_NUMBERS:
        value = getattr(config, name, None)
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            raise InputError(f"bad generation settings: {name} must be a finite number, got {value!r}")
    if config.top_p is not None and not 0 < config.top_p <= 1:
        raise InputError(
            f"bad generation settings: top_p must be in (0, 1] (the probability mass sampled from; 1: all), "
            f"got {config.top_p!r}"
        )
    if config.top_k is not None and not (_is_whole(config.top_k) and config.top_k >= 0):
        raise InputError(f"bad generation settings: top_k must be a whole number >= 0 (0: all), got {config.top_k!r}")


def _is_number(value: Any) -> bool:
    """A real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    """A whole number (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _lengths(config: GenerationConfig, width: int) -> tuple[int, int]:
    """max_new_tokens and min_new_tokens, the max_length / min_length forms counted from the prompt's `width`
    (padding included, as in transformers)."""
    for name in ("max_new_tokens", "max_length", "min_new_tokens", "min_length"):
        value = getattr(config, name)
        if value is not None and not _is_whole(value):
            raise InputError(f"{name} must be a whole number of tokens, got {value!r}")
    max_new = config.max_new_tokens
    if max_new is None and config.max_length is not None:  # max_new_tokens wins where both are set, as in transformers
        max_new = config.max_length - width
        if max_new < 1:
            raise InputError(
                f"max_length={config.max_length} leaves no new token after the prompt's {width} positions (padding "
                "included, as in transformers); raise it or set max_new_tokens"
            )
    elif max_new is None:
        raise InputError("set max_new_tokens (or max_length): how many tokens to generate")
    if max_new < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new}")
    min_new = config.min_new_tokens
    if min_new is None:
        min_new = max((config.min_length or 0) - width, 0)
    return max_new, min_new


def check_generation_settings(
    model: MemoryModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    **kwargs: Any,
) -> None:
    """Raise the InputError that `generate(model, input_ids, attention_mask, generation_config, **kwargs)` would
    raise for its inputs and settings (transformers' checks of the GenerationConfig and of each logits processor
    included), without running the model: a command can refuse bad settings before it reads a long document."""
    input_ids = _prompt(input_ids, attention_mask, kwargs)
    config, mask, max_new_tokens, min_new_tokens = _settings(
        model, input_ids, attention_mask, generation_config, kwargs
    )
    padding = input_ids.shape[1] - mask.sum(dim=1)
    _processors(
        config, None, _token_ids(config.eos_token_id), input_ids.shape[1], max_new_tokens, min_new_tokens, padding
    )


def _settings(
    model: MemoryModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    generation_config: GenerationConfig | None,
    kwargs: dict[str, Any],
) -> tuple[GenerationConfig, torch.Tensor, int, int]:
    """The checked settings of a `generate` call: its GenerationConfig, the attention mask (on the model's device),
    max_new_tokens and min_new_tokens."""
    if not model.token_logits:
        raise InputError(f"{type(model).__name__} is a classifier: it does not generate")
    config = _generation_config(model, generation_config, kwargs)
    validate_input_ids(input_ids, model.vocab_size)
    mask = validate_attention_mask(attention_mask, input_ids).to(model.device)
    max_new_tokens, min_new_tokens = _lengths(config, input_ids.shape[1])
    return config, mask, max_new_tokens, min_new_tokens


def _check_token_ids(settings: dict[str, Any], vocab_size: int, origin: str | None = None) -> None:
    """Refuse an end or forced token that is no id of the model's vocabulary: an eos_token_id out of it can never be
    generated, so no row would stop at it (silently decoding to max_new_tokens), and a forced one failed inside
    transformers' processor. pad_token_id may be any whole number: it only fills finished rows of the result and is
    never fed to the model, and configs use -1 or an id past the embeddings (transformers allows both). `origin`:
    settings that come from a generation config rather than the call, said in the message with how to override."""
    for name, several in (("eos_token_id", True), ("forced_eos_token_id", True), ("forced_bos_token_id", False)):
        value = settings.get(name)
        if value is None:
            continue
        ids = value if several and isinstance(value, (list, tuple)) else [value]
        kind = "a token id (a whole number) or a list of them" if several else "a token id (a whole number)"
        _check_ids_in_vocabulary(name, value, kind, ids, vocab_size, origin)
    pad = settings.get("pad_token_id")
    if pad is not None and not _is_whole(pad):
        raise InputError(f"bad generation settings: pad_token_id must be a whole number, got {pad!r}")
    # Token lists: an id outside the vocabulary was ignored (suppress_tokens) or failed in transformers' processor
    # mid-decoding (bad_words_ids, sequence_bias).
    for name, kind in (
        ("suppress_tokens", "a list of token ids"),
        ("begin_suppress_tokens", "a list of token ids"),
        ("bad_words_ids", "a list of lists of token ids"),
        ("sequence_bias", "a mapping from tuples of token ids to biases"),
    ):
        value = settings.get(name)
        if value is None:
            continue
        try:
            if name == "sequence_bias":  # {(ids, ...): bias}, or transformers' list form [[[ids], bias], ...]
                pairs = value.items() if isinstance(value, dict) else value
                groups = [list(ids) for ids, _ in pairs]
            elif name == "bad_words_ids":
                groups = [list(ids) for ids in value]
            else:
                groups = [list(value)]
        except (TypeError, ValueError):
            raise InputError(f"bad generation settings: {name} must be {kind}, got {value!r}") from None
        ids = [token.item() if isinstance(token, torch.Tensor) else token for group in groups for token in group]
        _check_ids_in_vocabulary(name, value, kind, ids, vocab_size, origin)


def _check_ids_in_vocabulary(
    name: str, value: Any, kind: str, ids: list[Any], vocab_size: int, origin: str | None = None
) -> None:
    """Refuse the setting `name` (`value`, which should be `kind`) when one of its `ids` is no whole number or lies
    outside the vocabulary; `origin` names the config it came from (None: the call)."""
    where = "" if origin is None else f" (set by {origin}; {name}=... or None in the call overrides it)"
    if not all(_is_whole(token) for token in ids):
        raise InputError(f"bad generation settings: {name} must be {kind}, got {value!r}{where}")
    outside = [int(token) for token in ids if not 0 <= token < vocab_size]
    if outside:
        raise InputError(
            f"bad generation settings: {name} names {outside[0]}, outside the model's vocabulary "
            f"(ids 0..{vocab_size - 1}){where}"
        )


def _processors(
    config: GenerationConfig,
    extra: LogitsProcessorList | None,
    eos: list[int],
    prompt_width: int,
    max_new_tokens: int,
    min_new_tokens: int,
    padding: torch.Tensor,
) -> LogitsProcessorList:
    """transformers' processors for `config`, in the order its `generate` applies them (`extra`, the caller's, merged
    in before the sampling warpers), for inputs whose first `prompt_width` columns are the prompt and `padding` [B]
    of them each row's padding."""
    processors = LogitsProcessorList()
    eos_ids = list(eos) or None
    device = padding.device
    try:  # the processors validate their settings (e.g. temperature > 0, 0 < top_p <= 1)
        if config.sequence_bias is not None:
            processors.append(SequenceBiasLogitsProcessor(config.sequence_bias))
        if config.repetition_penalty not in (None, 1.0):
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, padding))
        if config.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos_ids))
        if min_new_tokens > 0 and eos_ids:  # without an EOS token every row runs to max_new_tokens anyway
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_width, min_new_tokens, eos_ids, device))
        if config.forced_bos_token_id is not None:
            processors.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            last = prompt_width + max_new_tokens
            processors.append(ForcedEOSTokenLogitsProcessor(last, config.forced_eos_token_id, device))
        if config.remove_invalid_values:
            processors.append(InfNanRemoveLogitsProcessor())
        if config.exponential_decay_length_penalty is not None:
            penalty = config.exponential_decay_length_penalty
            processors.append(ExponentialDecayLengthPenalty(penalty, eos_ids, prompt_width))
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device))
        if config.begin_suppress_tokens is not None:
            # transformers' first free step: after a forced BOS token when the prompt is a single token
            begin = prompt_width + int(prompt_width <= 1 and config.forced_bos_token_id is not None)
            processors.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin, device))
        built = {id(processor) for processor in processors}
        processors = _with_custom(processors, extra or [])
        if bool((padding > 0).any()):  # rmt's own processors only: a caller's see the ids (and vocabulary) as given
            processors = LogitsProcessorList(
                _PaddingBlind(processor, padding)
                if id(processor) in built and isinstance(processor, _MATCHES_TOKEN_IDS)
                else processor
                for processor in processors
            )
        if config.do_sample:
            if config.temperature not in (None, 1.0):  # a float for its check: temperature=2 is a temperature too
                processors.append(TemperatureLogitsWarper(float(config.temperature)))
            if config.top_h is not None:
                processors.append(TopHLogitsWarper(config.top_h))
            if config.top_k:
                processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p not in (None, 1.0):
                processors.append(TopPLogitsWarper(config.top_p))
            if config.min_p is not None:
                processors.append(MinPLogitsWarper(config.min_p))
            if config.typical_p not in (None, 1.0):
                processors.append(TypicalLogitsWarper(config.typical_p))
            if config.epsilon_cutoff not in (None, 0.0):
                processors.append(EpsilonLogitsWarper(config.epsilon_cutoff))
            if config.eta_cutoff not in (None, 0.0):
                processors.append(EtaLogitsWarper(config.eta_cutoff, device=device))
    except ValueError as err:
        raise InputError(f"bad generation settings: {err}") from err
    if config.renormalize_logits:  # transformers keeps the normalization last
        processors.append(LogitNormalization())
    return processors


_MATCHES_TOKEN_IDS = (NoRepeatNGramLogitsProcessor, NoBadWordsLogitsProcessor, SequenceBiasLogitsProcessor)


class _PaddingBlind:
    """A processor that matches token ids, shown each row's padding (its first `padding[b]` columns) as the id just
    past the vocabulary, with a column of -inf scores for it: padding then matches no n-gram, bad word or biased
    sequence, whichever id the caller padded with."""

    def __init__(self, processor: Any, padding: torch.Tensor) -> None:
        self.processor, self.padding = processor, padding

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)
        blind = input_ids.masked_fill(columns < self.padding[:, None], scores.shape[-1])
        widened = torch.cat([scores, scores.new_full((scores.shape[0], 1), -math.inf)], dim=1)
        return self.processor(blind, widened)[:, :-1]


def _with_custom(built: LogitsProcessorList, custom: list) -> LogitsProcessorList:
    """`built` with the caller's processors merged in as transformers' generate merges them: one of the same type as
    a built-in processor takes its place, the others follow."""
    replacing: dict[type, Any] = {}
    for processor in custom:  # the first of a type takes the built-in's place, as in transformers
        replacing.setdefault(type(processor), processor)
    merged = LogitsProcessorList(replacing.get(type(processor), processor) for processor in built)
    merged.extend(processor for processor in custom if not any(processor is used for used in merged))
    return merged


def stop_token_ids(model: MemoryModel, tokenizer: Any) -> list[int]:
    """The ids that end an answer: the backbone's generation config's eos_token_id (one or several: Llama 3's instruct
    models end a turn with <|eot_id|> or <|end_of_text|>) and then the tokenizer's, without repeats."""
    own = getattr(model.backbone, "generation_config", None)
    return list(dict.fromkeys([*_token_ids(getattr(own, "eos_token_id", None)), *_token_ids(tokenizer.eos_token_id)]))


def _token_ids(value: int | list[int] | None) -> list[int]:
    """Token ids of a setting that takes one or several, in their order, without repeats."""
    if value is None:
        return []
    return [int(value)] if _is_whole(value) else list(dict.fromkeys(int(token) for token in value))
