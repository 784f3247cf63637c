"""GGUF files as transformers reads them: which architectures rmt takes, what transformers misreads, and one-line
refusals of files it cannot load (cut short, of another architecture, misread); `rmt.build` loads them."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedModel

from rmt.backbones.loading import loading_problems, one_line
from rmt.errors import InputError

# GGUF architectures (general.architecture) that transformers reads into a family the memory models wrap. llama.cpp
# writes Mistral models as llama; gpt_neox, which the memory models wrap from a Hugging Face folder, transformers
# cannot read from GGUF.
GGUF_ARCHITECTURES = ("gpt2", "llama", "qwen2")
# What transformers (5.25 at least) misreads in a family's GGUF file, said when a file's tensors then do not fit
_GGUF_MISREADS = {
    "gpt2": "transformers gives every GPT-2 it reads from GGUF 1024 positions and an MLP 4 times the hidden size, "
    "whatever the file says (it reads the context length into a key GPT-2 does not use and ignores the feed-forward "
    "length): load this model from a Hugging Face folder instead",
}


def gguf_cut_short(location: str, gguf: str, err: Exception, part: str = "header") -> str:
    """One line for a GGUF file that ends early (a copy or download cut short) inside `part`: its header (struct.error
    before) or its tensor data (one of numpy's `_TENSOR_VIEW_PAST_THE_END` errors before)."""
    return f"cannot load the GGUF file {gguf} in {location}: it ends inside its {part} (cut short?): {one_line(err)}"


# numpy's errors when gguf's reader views a tensor past the end of the file: a cut that leaves a tensor's data short
# by whole elements, or by a part of one (the reader views the bytes as uint8 first)
_TENSOR_VIEW_PAST_THE_END = ("cannot reshape array of size", "When changing to a larger dtype")


def gguf_refusal(location: str, gguf: str, err: Exception) -> str:
    """One line for a GGUF file that transformers could not load: its words, and what rmt can take when the file's
    architecture is none of that, or why a llama file failed when transformers misread it by its name."""
    if any(sign in str(err) for sign in _TENSOR_VIEW_PAST_THE_END):
        return gguf_cut_short(location, gguf, err, part="tensor data")
    message = f"cannot load the GGUF file {gguf} in {location}: {one_line(err)}"
    fields = gguf_fields(Path(location) / gguf, ("general.architecture", "general.name"))
    architecture, name = fields.get("general.architecture"), fields.get("general.name")
    if architecture is None:  # not a GGUF file it could read either: transformers' words say so
        return message
    if architecture not in GGUF_ARCHITECTURES:
        return f"{message} ({gguf_architecture_refusal(architecture)})"
    if architecture == "llama" and name == "mistral":
        return (
            f"{message} (transformers reads a llama file named exactly 'mistral' as Mistral, which it cannot load from "
            "GGUF: rename the model, e.g. gguf-new-metadata --general-name 'Mistral 7B' IN.gguf OUT.gguf)"
        )
    return message


def gguf_architecture_refusal(architecture: str) -> str:
    """Why a GGUF file of `architecture` (none of GGUF_ARCHITECTURES) is not taken, and what to do instead."""
    return (
        f"rmt's memory models take GGUF files of architecture {', '.join(GGUF_ARCHITECTURES)}, Mistral's included as "
        f"llama, and this one is {architecture!r}: load the model from a Hugging Face folder instead"
    )


def gguf_fields(path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The string values of these metadata keys of a GGUF file (those it has); none of a file gguf cannot read."""
    try:
        from gguf import GGUFReader
    except ImportError:  # transformers' own error then says to install it
        return {}
    try:
        fields = GGUFReader(path).fields
        return {key: bytes(fields[key].parts[fields[key].data[0]]).decode() for key in keys if key in fields}
    except (OSError, ValueError, LookupError):  # empty, truncated or not GGUF (or a name that is no UTF-8 text)
        return {}


def check_gguf_shapes(location: str, gguf: str, model: PreTrainedModel, info: dict) -> None:
    """Refuse a model whose weights have other shapes than the GGUF file's tensors: transformers misread the file's
    config, and would have started those weights at random."""
    found = loading_problems(info, ["mismatched_keys"])
    if found:
        misread = _GGUF_MISREADS.get(model.config.model_type)
        raise InputError(
            f"cannot load the GGUF file {gguf} in {location}: the {type(model).__name__} that transformers builds "
            f"from its metadata does not fit its tensors ({found})" + (f"; {misread}" if misread else "")
        )


@contextmanager
def gguf_bar_follows_transformers() -> Iterator[None]:
    """transformers draws its GGUF conversion bar with tqdm itself, past its own progress-bar switch
    (`transformers.utils.logging.disable_progress_bar`, which `--no-progress` turns off): while a GGUF file loads,
    that bar follows the switch too."""
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_loading

    bar = gguf_loading.tqdm
    gguf_loading.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_loading.tqdm = bar


def forget_gguf_origin(model: PreTrainedModel) -> None:
    """transformers dequantizes a GGUF file into plain floating-point weights but keeps a GGUF "quantizer" on the
    model, which makes save_pretrained refuse it. The weights are ordinary tensors: drop the marker so the model (and
    every checkpoint of a memory model around it) saves as a standard safetensors folder."""
    if any(not isinstance(p, torch.nn.Parameter) or not p.is_floating_point() for p in model.parameters()):
        return  # something really is quantized: leave it alone
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
