"""The GGUF path on a tiny GGUF file written here (tests/helpers/tiny_gguf.py), without the real SmolLM2 file that
only the slow suite reads: rmt's loader takes the file itself and the folder that holds it, and gets the weights of
the random Llama the file was written from (its logits, to float rounding) and a tokenizer that encodes and decodes;
then `rmt train --model FILE.gguf --data FILE.jsonl` and `rmt eval OUTPUT/model` run as a user would run them, and
the saved model is a plain safetensors folder that loads without the GGUF file."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import gguf  # the dev extra installs it: without it these tests fail rather than skip
import pytest
import torch
from helpers.tiny_gguf import BOS_ID, EOS_ID, ROPE_THETA, VOCAB_SIZE, tiny_llama, write_tiny_gguf

from rmt.build import backbone_model_type, pretrained_backbone, pretrained_tokenizer, resolve_model
from rmt.cli import main

TEXT = "Mary went to the kitchen. Where is Mary? In the kitchen, ünï."


@pytest.fixture(scope="module")
def source():
    """The random Llama the tiny file is written from."""
    return tiny_llama()


def gguf_folder(directory: Path, model) -> Path:
    """`directory` holding the tiny GGUF file of `model` and nothing else. Returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_tiny_gguf(directory / "tiny.gguf", model)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, source):
    return gguf_folder(tmp_path_factory.mktemp("gguf") / "tiny", source)


def test_the_tiny_file_is_laid_out_as_llama_cpp_writes_one(gguf_file, source):
    """Tied embeddings (no output.weight), fp32 tensors, and query/key rows stored in llama.cpp's order, which
    transformers must undo: the logits test below would not notice a loader that skipped that otherwise."""
    tensors = {t.name: t for t in gguf.GGUFReader(gguf_file).tensors}
    assert "output.weight" not in tensors and len(tensors) == 2 + 9 * source.config.num_hidden_layers
    assert {t.tensor_type for t in tensors.values()} == {gguf.GGMLQuantizationType.F32}
    attention = source.model.layers[0].self_attn
    for name, weight in (("attn_q", attention.q_proj.weight), ("attn_k", attention.k_proj.weight)):
        stored = torch.from_numpy(tensors[f"blk.0.{name}.weight"].data.copy())
        assert stored.shape == weight.shape and not torch.equal(stored, weight.detach())
        assert torch.equal(stored.sort(dim=0).values, weight.detach().sort(dim=0).values)  # the same rows, reordered
    stored = torch.from_numpy(tensors["blk.0.attn_v.weight"].data.copy())
    assert torch.equal(stored, attention.v_proj.weight.detach())


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("given", ["file", "folder"])
def test_rmt_loads_the_gguf_file_and_the_folder_holding_it(gguf_file, source, given, tmp_path):
    path = gguf_file if given == "file" else gguf_file.parent
    assert resolve_model(path) == (str(gguf_file.parent), "tiny.gguf")
    assert backbone_model_type(path) is None  # transformers reads the family from the file

    backbone = pretrained_backbone(path).eval()
    config = backbone.config
    assert config.model_type == "llama" and config.vocab_size == VOCAB_SIZE and config.tie_word_embeddings
    assert config.num_key_value_heads == 2 and config.rope_parameters["rope_theta"] == ROPE_THETA
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    ids = torch.randint(0, VOCAB_SIZE, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(source, ids)
    torch.testing.assert_close(logits(backbone, ids), expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.5  # wide enough weights that a misread tensor could not hide in rounding

    # Dequantized floats, not a quantized model: the GGUF marker is gone, so it saves as a plain HF folder.
    assert backbone.hf_quantizer is None and not backbone.is_quantized
    assert not hasattr(config, "quantization_config")
    backbone.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(logits(again, ids), expected, rtol=0, atol=1e-5)

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
    written = gguf_folder(tmp_path / "gguf", source)
    output = tmp_path / "run"
    model = str(written if given == "file" else written.parent)
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

    shutil.rmtree(written.parent)  # evaluated without the file it was trained from
    args = ["eval", str(output / "model"), "--data", str(qa_file), "--batches", "2", "--batch-size", "2"]
    assert main([*args, "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert {"loss", "accuracy", "exact_match"} <= set(evaluated) and math.isfinite(evaluated["loss"])

    from rmt.memory.recurrent import RecurrentMemoryModel

    reloaded = RecurrentMemoryModel.from_pretrained(output / "model")
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    tokenizer = pretrained_tokenizer(output / "model")
    assert tokenizer.decode(tokenizer(TEXT).input_ids) == TEXT and len(tokenizer) == VOCAB_SIZE
