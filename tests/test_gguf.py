"""The GGUF path on tiny GGUF files written here (tests/helpers/tiny_gguf.py), without the real files (SmolLM2's
ships in a package that only the slow suite reads): for each decoder family rmt wraps that users have as GGUF (Llama,
Mistral, Qwen2, GPT-2), rmt's loader takes the file itself and the folder that holds it, and gets the weights of the
random model the file was written from (its logits, to float rounding) and a tokenizer that encodes and decodes, and
RMT and ARMT wrap it; then `rmt train --model FILE.gguf --data FILE.jsonl` and `rmt eval OUTPUT/model` run as a user
would run them, and the saved model is a plain safetensors folder that loads without the GGUF file."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import gguf  # the dev extra installs it: without it these tests fail rather than skip
import pytest
import torch
from helpers.tiny_gguf import BOS_ID, EOS_ID, GPT2_POSITIONS, ROPE_THETA, VOCAB_SIZE, tiny_model, write_tiny_gguf
from transformers import PreTrainedModel

from rmt import RMTConfig
from rmt.build import backbone_model_type, memory_model, pretrained_backbone, pretrained_tokenizer, resolve_model
from rmt.cli import main
from rmt.errors import InputError

TEXT = "Mary went to the kitchen. Where is Mary? In the kitchen, ünï."
FAMILIES = ["llama", "mistral", "qwen2", "gpt2"]
# the family transformers loads each file as: llama.cpp writes Mistral as the llama architecture
LOADED_AS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}
ROTARY = ("llama", "mistral", "qwen2")


def gguf_folder(directory: Path, model: PreTrainedModel, **options) -> Path:
    """`directory` holding the tiny GGUF file of `model` and nothing else. Returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_tiny_gguf(directory / "tiny.gguf", model, **options)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, tuple[PreTrainedModel, Path]]:
    """family -> (the random model, the tiny GGUF file written from it), once for the module."""
    out = {}
    for family in FAMILIES:
        source = tiny_model(family)
        out[family] = source, gguf_folder(tmp_path_factory.mktemp(family) / "tiny", source)
    return out


@pytest.fixture(scope="module")
def source(written) -> PreTrainedModel:
    """The random Llama the llama file is written from (the family the command-line tests run on)."""
    return written["llama"][0]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def token_ids(batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_file_is_laid_out_as_llama_cpp_writes_its_family(written, family):
    """llama.cpp's architecture and tensor names (from gguf-py's own tables), tied embeddings (no output.weight), fp32
    tensors, and each family's stored layout, which transformers must undo: the logits test below would not notice
    a loader that skipped it otherwise (llama's query/key rows permuted; Qwen2's as they are, with biases; GPT-2's
    Conv1D weights transposed)."""
    source, path = written[family]
    reader = gguf.GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    assert architecture == LOADED_AS[family]
    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    layers = source.config.num_hidden_layers
    names = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[arch] for b in range(layers)}
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert {name.rsplit(".", 1)[0] for name in tensors} <= names - {"output"}
    assert len(tensors) == len(source.state_dict()) - 1  # every weight but the tied head
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}

    def reordered(stored: torch.Tensor, weight: torch.Tensor) -> bool:  # the same rows in another order
        return not torch.equal(stored, weight) and torch.equal(stored.sort(0).values, weight.sort(0).values)

    if family == "gpt2":
        attention = source.transformer.h[0].attn
        assert torch.equal(tensors["blk.0.attn_qkv.weight"], attention.c_attn.weight.detach().T)
        assert torch.equal(tensors["blk.0.attn_qkv.bias"], attention.c_attn.bias.detach())
        assert tensors["position_embd.weight"].shape == (GPT2_POSITIONS, source.config.n_embd)
        return
    attention = source.model.layers[0].self_attn
    for name in ("q", "k", "v"):
        weight = getattr(attention, f"{name}_proj").weight.detach()
        stored = tensors[f"blk.0.attn_{name}.weight"]
        assert reordered(stored, weight) if family != "qwen2" and name != "v" else torch.equal(stored, weight)
        if family == "qwen2":
            assert torch.equal(tensors[f"blk.0.attn_{name}.bias"], getattr(attention, f"{name}_proj").bias.detach())


@pytest.mark.parametrize("given", ["file", "folder"])
@pytest.mark.parametrize("family", FAMILIES)
def test_rmt_loads_the_gguf_file_and_the_folder_holding_it(written, family, given, tmp_path):
    source, gguf_file = written[family]
    path = gguf_file if given == "file" else gguf_file.parent
    assert resolve_model(path) == (str(gguf_file.parent), "tiny.gguf")
    assert backbone_model_type(path) is None  # transformers reads the family from the file

    backbone = pretrained_backbone(path).eval()
    config = backbone.config
    assert config.model_type == LOADED_AS[family] and config.vocab_size == VOCAB_SIZE and config.tie_word_embeddings
    if family in ROTARY:
        assert config.num_key_value_heads == 2 and config.rope_parameters["rope_theta"] == ROPE_THETA
        assert config.max_position_embeddings == source.config.max_position_embeddings
    else:
        assert config.n_positions == GPT2_POSITIONS
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    ids = token_ids()
    expected = logits(source, ids)
    torch.testing.assert_close(logits(backbone, ids), expected, rtol=0, atol=1e-6)
    assert expected.std() > 0.5  # wide enough weights that a misread tensor could not hide in rounding

    # Dequantized floats, not a quantized model: the GGUF marker is gone, so it saves as a plain HF folder.
    assert backbone.hf_quantizer is None and not backbone.is_quantized
    assert not hasattr(config, "quantization_config")
    backbone.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(logits(again, ids), expected, rtol=0, atol=1e-6)

    half = pretrained_backbone(path, dtype="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}

    tokenizer = pretrained_tokenizer(path)
    assert len(tokenizer) == VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, EOS_ID)
    encoded = tokenizer(TEXT).input_ids
    assert all(0 <= i < VOCAB_SIZE for i in encoded) and len(encoded) < len(TEXT.encode())  # the merges apply
    assert tokenizer.convert_ids_to_tokens(tokenizer(" the").input_ids) == ["Ġthe"]
    assert tokenizer.decode(encoded) == TEXT
    assert tokenizer("<|im_end|>").input_ids == [EOS_ID]  # a control token stays whole


@pytest.mark.parametrize("family", FAMILIES)
def test_rmt_and_armt_wrap_a_backbone_loaded_from_gguf(written, family):
    """RMT and ARMT wrap every family (ARMT runs the backbone layer by layer: Llama, so a Mistral file loaded as
    Llama, Qwen2 with its q/k/v biases, GPT-2); the untrained ARMT (nothing written) gives the backbone's logits on
    each segment."""
    backbone = pretrained_backbone(written[family][1])
    ids = token_ids(length=20)  # three segments, the last one short
    rmt = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=8)).eval()
    assert logits(rmt, ids).shape == (2, 20, VOCAB_SIZE) and logits(rmt, ids).isfinite().all()
    armt = memory_model(backbone, RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=8, d_mem=4)).eval()
    expected = torch.cat([logits(backbone, ids[:, start : start + 8]) for start in (0, 8, 16)], dim=1)
    torch.testing.assert_close(logits(armt, ids), expected, rtol=1e-5, atol=1e-5)


def test_a_gpt2_file_of_other_than_1024_positions_is_refused_with_the_shapes(tmp_path):
    """transformers builds every GPT-2 it reads from GGUF with 1024 positions (it reads the file's context length into
    `n_ctx`, which GPT-2 does not use): a file of another context length does not fit. It raised a bare RuntimeError
    pointing at a table it had logged, a traceback from rmt; now one line with the shapes and the reason."""
    path = gguf_folder(tmp_path / "gpt2", tiny_model("gpt2", positions=512))
    shapes = r"transformer\.wpe\.weight \[512, 32\] in the files, \[1024, 32\] by the config"
    with pytest.raises(InputError, match=rf"tiny.gguf .*GPT2LMHeadModel .*does not fit its tensors .*{shapes}.*1024"):
        pretrained_backbone(path)


def test_a_llama_file_named_mistral_is_refused_saying_why_and_loads_renamed(tmp_path, source):
    """transformers reads a llama file whose general.name is exactly "mistral" as Mistral, then finds no tensor names
    for Mistral in gguf-py: a NotImplementedError (advising a newer gguf-py, which has none either), a traceback from
    rmt. Now one line saying why, whose renaming command loads the file as the Llama it is (a name that only contains
    "mistral" loads so from the start, as the tests above show)."""
    path = gguf_folder(tmp_path / "named", source, name="mistral")
    with pytest.raises(InputError, match="tiny.gguf .*named exactly 'mistral' as Mistral.*gguf-new-metadata"):
        pretrained_backbone(path)
    renamed = tmp_path / "renamed" / "tiny.gguf"
    renamed.parent.mkdir()
    command = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--general-name", "Mistral 7B"]
    subprocess.run([*command, str(path), str(renamed)], check=True, capture_output=True)
    backbone = pretrained_backbone(renamed).eval()
    assert backbone.config.model_type == "llama"
    torch.testing.assert_close(logits(backbone, token_ids()), logits(source, token_ids()), rtol=0, atol=1e-6)


def test_a_gguf_architecture_transformers_cannot_read_is_refused_naming_those_rmt_takes(tmp_path, qa_file, capsys):
    """GPT-NeoX, which the memory models wrap from a Hugging Face folder, transformers cannot read from GGUF: the
    backbone, its tokenizer and `rmt train` refuse the file in one line that names the architectures rmt takes
    (the tokenizer's refusal said the file had no tokenizer, as if from a synthetic task)."""
    path = tmp_path / "pythia.gguf"
    writer = gguf.GGUFWriter(path, "gptneox")  # transformers stops at the architecture: no tensors needed
    writer.add_name("tiny pythia")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = (
        r"cannot load the GGUF file pythia.gguf .*architecture gptneox is not supported.*rmt's memory models take "
        r"GGUF files of architecture gpt2, llama, qwen2, Mistral's included as llama, and this one is 'gptneox'"
    )
    for load in (pretrained_backbone, pretrained_tokenizer):
        with pytest.raises(InputError, match=expected):
            load(path)
    args = ["train", "--model", str(path), "--data", str(qa_file), *TRAIN, "--output", str(tmp_path / "run")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"rmt train: error: --model {path}: a GGUF file of architecture 'gptneox'; rmt's memory")
    assert error.count("\n") == 1


def test_rmt_train_refuses_a_gguf_architecture_it_does_not_wrap_before_loading_it(tmp_path, qa_file, capsys):
    """Phi-3, which transformers reads from GGUF, loaded whole (minutes for a real model) before the memory model
    refused its family; the file's header says its architecture."""
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(path, "phi3")  # a header alone: loading the weights would fail, refusing must not
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    args = ["train", "--model", str(path), "--data", str(qa_file), *TRAIN, "--output", str(tmp_path / "run")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"--model {path}: a GGUF file of architecture 'phi3'; rmt's memory models take GGUF files of" in error
    assert error.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_gguf_file_cut_short_in_its_header_is_one_error_line(tmp_path, written, qa_file, capsys):
    """A copy or download cut short inside the header ended in struct.error from the gguf package, a traceback."""
    path = tmp_path / "cut.gguf"
    path.write_bytes(written["llama"][1].read_bytes()[:2000])
    for load in (pretrained_backbone, pretrained_tokenizer):
        with pytest.raises(InputError, match=r"cannot load the GGUF file cut.gguf .*: it ends inside its header"):
            load(path)
    args = ["train", "--model", str(path), "--data", str(qa_file), *TRAIN, "--output", str(tmp_path / "run")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "it ends inside its header (cut short?)" in error and error.count("\n") == 1


def test_a_gguf_file_cut_short_in_its_tensor_data_says_so(tmp_path, written):
    """Cut inside the weights, the file's header reads, and numpy's "cannot reshape array" was all the error said."""
    path = tmp_path / "cut.gguf"
    whole = written["llama"][1].read_bytes()
    for cut in (1000, 1, 3):  # whole elements missing (numpy cannot reshape), or a part of one (cannot view)
        path.write_bytes(whole[: len(whole) - cut])
        for load in (pretrained_backbone, pretrained_tokenizer):
            with pytest.raises(InputError, match=r"cut.gguf .*: it ends inside its tensor data \(cut short\?\): "):
                load(path)


def test_an_upper_case_suffix_is_a_gguf_file_too(tmp_path, source):
    written = gguf_folder(tmp_path / "upper", source)
    upper = written.rename(written.with_name("TINY.GGUF"))
    assert resolve_model(upper) == resolve_model(upper.parent) == (str(upper.parent), "TINY.GGUF")
    assert pretrained_backbone(upper).config.vocab_size == VOCAB_SIZE


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rooms = ["kitchen", "garden", "office", "hallway"]
    records = [
        {
            "input": f"Mary went to the {rooms[i % 4]}. John went to the {rooms[(i + 1) % 4]}.",
            "question": "Where is Mary?",
            "target": rooms[i % 4],
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


TRAIN = ["--segment-size", "16", "--memory-tokens", "2", "--steps", "2", "--batch-size", "2", "--eval-every", "2"]
TRAIN += ["--eval-batches", "1", "--eval-batch-size", "2", "--validation-samples", "4", "--no-progress"]


@pytest.mark.parametrize("given", ["file", "folder"])
def test_train_on_a_gguf_model_then_evaluate_without_it(tmp_path, source, qa_file, given, capsys):
    gguf_file = gguf_folder(tmp_path / "gguf", source)
    output = tmp_path / "run"
    model = str(gguf_file if given == "file" else gguf_file.parent)
    assert main(["train", "--model", model, "--data", str(qa_file), *TRAIN, "--output", str(output)]) == 0
    captured = capsys.readouterr()
    trained = json.loads(captured.out.split("model saved")[0])
    assert math.isfinite(trained["loss"])
    assert "Converting and de-quantizing GGUF tensors" not in captured.err  # --no-progress hides that bar too

    # The saved model is a plain safetensors folder: its backbone carries config, weights and tokenizer, and nothing
    # of the GGUF file (no quantization config, which would make transformers look for the file again).
    backbone = output / "model" / "backbone"
    assert (backbone / "model.safetensors").is_file() and (backbone / "tokenizer.json").is_file()
    assert not list((output / "model").rglob("*.gguf"))
    config = json.loads((backbone / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    shutil.rmtree(gguf_file.parent)  # evaluated without the file it was trained from
    args = ["eval", str(output / "model"), "--data", str(qa_file), "--batches", "2", "--batch-size", "2"]
    assert main([*args, "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert {"loss", "accuracy", "exact_match"} <= set(evaluated) and math.isfinite(evaluated["loss"])

    from rmt.memory.recurrent import RecurrentMemoryModel

    reloaded = RecurrentMemoryModel.from_pretrained(output / "model")
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    tokenizer = pretrained_tokenizer(output / "model")
    assert tokenizer.decode(tokenizer(TEXT).input_ids) == TEXT and len(tokenizer) == VOCAB_SIZE
