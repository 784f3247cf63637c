"""Document memory as a value (`rmt.memory.memory_file`): the saved memory answers like the document read again;
a model of another configuration or with other weights is refused; `rmt generate` reads a document once, saves its
memory and answers from the file; the diagonal engine follows its model's weights."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, strengthen_memory, tiny_decoder, tiny_model_folder
from torch.utils import _pytree as pytree

from rmt import ARMTForCausalLM, RMTConfig, RMTForCausalLM
from rmt.build import pretrained_backbone, pretrained_tokenizer
from rmt.cli import main
from rmt.errors import InputError
from rmt.inference import DiagonalARMT
from rmt.memory import memory_file
from rmt.memory.memory_file import load_memory, read_memory, save_memory


def armt(memory: int = 2) -> ARMTForCausalLM:
    config = RMTConfig(memory_kind="armt", num_memory_tokens=memory, segment_size=5, d_mem=8)
    return strengthen_memory(ARMTForCausalLM(tiny_decoder("llama"), config)).eval()


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_saved_memory_answers_like_the_document(tmp_path, kind):
    # Llama, whose head is not tied to its embeddings: an untrained tied GPT-2 repeats its last token, memory or not.
    rmt = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)).eval()
    model = armt() if kind == "armt" else rmt
    document = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))  # 4 whole segments
    question = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(1))
    stream = model.stream()
    stream.feed(document)
    path = save_memory(model, stream.memory_state, tmp_path / "doc.memory", tokens=20, document="doc.txt")
    state, metadata = read_memory(model, path)
    assert metadata == {"tokens": 20, "document": "doc.txt"}
    from_file = model.generate(
        question, memory_state=state, max_new_tokens=6, output_scores=True, return_dict_in_generate=True
    )
    read_again = model.generate(
        torch.cat([document, question], dim=1), max_new_tokens=6, output_scores=True, return_dict_in_generate=True
    )
    # The document ends on a segment boundary: the same input, the same tokens and scores.
    assert torch.equal(from_file.sequences, read_again.sequences[:, 20:])
    torch.testing.assert_close(torch.stack(from_file.scores, dim=1), torch.stack(read_again.scores, dim=1))
    fresh = model.generate(question, max_new_tokens=6, output_scores=True, return_dict_in_generate=True)
    assert not torch.allclose(
        torch.stack(from_file.scores, dim=1), torch.stack(fresh.scores, dim=1), atol=1e-3
    )  # the loaded memory changes the answer


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_one_documents_memory_answers_a_batch_of_questions(tmp_path, kind):
    """A memory of one sample is given to every row of a batch (it was refused: "holds 1 samples but the batch has
    3"): each padded question answers as it does alone, in generate, a stream and forward."""
    torch.manual_seed(0)
    rmt = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)).eval()
    model = armt() if kind == "armt" else rmt
    document = torch.randint(0, VOCAB, (1, 23), generator=torch.Generator().manual_seed(2))
    stream = model.stream()
    stream.feed(document)
    state = load_memory(model, save_memory(model, stream.memory_state, tmp_path / "doc.memory"))
    questions = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(questions)
    mask[1, :2] = 0  # left-padded
    mask[2, 4:] = 0  # right-padded
    together = model.generate(questions, mask, memory_state=state, max_new_tokens=5)
    for row in range(3):
        alone = model.generate(questions[row : row + 1, mask[row].bool()], memory_state=state, max_new_tokens=5)
        assert torch.equal(together[row, 6:], alone[0, -5:])
    logits = model.stream(3, state).feed(questions[:, :4], logits="last")
    torch.testing.assert_close(logits, model(questions[:, :4], memory_state=state, logits="last").logits)
    for row in range(3):
        alone = model(questions[row : row + 1, :4], memory_state=state, logits="last").logits
        torch.testing.assert_close(logits[row], alone[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="memory_state holds 3 samples but the batch has 2"):
        model(questions[:2], memory_state=model.initial_state(3))
    # A state whose parts disagree (the first of one row) is no one-sample state: refused, not broadcast.
    leaves, spec = pytree.tree_flatten(model.initial_state(3))
    mixed = pytree.tree_unflatten([leaves[0][:1], *leaves[1:]], spec)
    if kind == "armt":  # RMT's state is one tensor; ARMT's has parts per layer that can disagree
        with pytest.raises(InputError, match=r"memory_state's parts hold different numbers of samples \(\[1, 3\]\)"):
            model(questions, memory_state=mixed)


def test_memory_of_another_model_is_refused(tmp_path):
    model = armt()
    path = save_memory(model, model.stream().memory_state, tmp_path / "a.memory")
    with pytest.raises(InputError, match="another configuration"):
        load_memory(armt(memory=3), path)
    retrained = armt()
    with torch.no_grad():
        retrained.w_k.add_(0.01)  # same configuration, other weights
    with pytest.raises(InputError, match="other weights"):
        load_memory(retrained, path)
    (tmp_path / "junk.memory").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a memory file"):
        load_memory(model, tmp_path / "junk.memory")
    with pytest.raises(InputError, match="was it made by another model"):
        save_memory(model, torch.zeros(1, 3, 4), tmp_path / "b.memory")


def test_memory_of_other_layers_is_refused_and_of_the_same_weights_in_bf16_loads(tmp_path):
    """Another fine-tuned checkpoint differs in its transformer layers, not in its memory parameters or embeddings:
    refused. The same weights cast to bf16: the memory loads, in the bf16 model's own state dtypes."""
    model = armt()
    stream = model.stream()
    stream.feed(torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2)))
    path = save_memory(model, stream.memory_state, tmp_path / "a.memory")
    other_layers = armt()
    with torch.no_grad():
        other_layers.backbone.model.layers[1].mlp.down_proj.weight.mul_(1.1)
    with pytest.raises(InputError, match="other weights"):
        load_memory(other_layers, path)
    in_bf16 = armt().to(torch.bfloat16)
    state = load_memory(in_bf16, path)
    for leaf, own in zip(pytree.tree_leaves(state), pytree.tree_leaves(in_bf16.initial_state(1)), strict=True):
        assert leaf.dtype == own.dtype


def test_damaged_memory_file_header_is_refused(tmp_path):
    import json
    import struct

    model = armt()
    raw = save_memory(model, model.stream().memory_state, tmp_path / "a.memory").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    for field in ("structure", "metadata"):
        damaged = json.loads(json.dumps(header))
        damaged["__metadata__"][field] = "{"
        text = json.dumps(damaged).encode()
        text += b" " * (-len(text) % 8)
        (tmp_path / "bad.memory").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
        with pytest.raises(InputError, match="not a memory file \\(damaged header"):
            load_memory(model, tmp_path / "bad.memory")


def test_a_folder_and_metadata_that_is_not_json_are_refused(tmp_path):
    model = armt()
    with pytest.raises(InputError, match="is a folder, not a memory file"):
        load_memory(model, tmp_path)
    with pytest.raises(InputError, match="metadata must be JSON values"):
        save_memory(model, model.stream().memory_state, tmp_path / "a.memory", document=tmp_path)
    assert not (tmp_path / "a.memory").exists()  # nothing written


def _save_as_format(monkeypatch, format_name: str, config_fingerprint, weights_fingerprint, *args) -> Path:
    """save_memory(*args) writing a file of an earlier format, with that format's fingerprints."""
    with monkeypatch.context() as patch:
        patch.setattr(memory_file, "FORMAT", format_name)
        patch.setattr(memory_file, "config_fingerprint", config_fingerprint)
        patch.setattr(memory_file, "weights_fingerprint", weights_fingerprint)
        return save_memory(*args)


@pytest.mark.parametrize("written_as", ["rmt-memory-1", "rmt-memory-2"])
def test_memory_files_of_earlier_formats_still_load(tmp_path, monkeypatch, written_as):
    """rmt-memory-1 files carry the first weights fingerprint (memory parameters and first token embeddings),
    rmt-memory-2 files one of sampled elements; both the configuration fingerprint of the backbone's shape."""
    model = armt()
    weights = {
        "rmt-memory-1": memory_file._first_format_weights_fingerprint,
        "rmt-memory-2": memory_file.sampled_weights_fingerprint,
    }[written_as]
    state = model.stream().memory_state
    path = _save_as_format(
        monkeypatch, written_as, memory_file._shape_config_fingerprint, weights, model, state, tmp_path / "old.memory"
    )
    load_memory(model, path)
    retrained = armt()
    with torch.no_grad():
        retrained.w_k.add_(0.01)
    with pytest.raises(InputError, match="other weights"):
        load_memory(retrained, path)
    with pytest.raises(InputError, match="another configuration"):
        load_memory(armt(memory=3), path)


def test_memory_files_from_before_a_config_field_was_added_still_load():
    """The config fingerprint of a model with default settings is the one rmt wrote before `memory_write_scale`
    existed (computed with that version), so memory files saved then still load; the new setting changes it."""
    from rmt.build import random_backbone

    def model(**extra) -> RMTForCausalLM:
        backbone = random_backbone("llama", 64, 2, 32, 4, 128, seed=0)
        return RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=3, segment_size=5, **extra))

    before = "e4fa90ac959db30502e727b81d7211faabc85ac522750051f36193e528fe4d8a"
    assert memory_file._shape_config_fingerprint(model(), training_fields=True) == before
    changed = model(memory_write_scale="token_embeddings")
    assert memory_file._shape_config_fingerprint(changed, training_fields=True) != before


def test_memory_loads_into_the_model_trained_otherwise_and_older_files_still_load(tmp_path, monkeypatch):
    """BPTT depth and loss aggregation say how a model trains, not what it computes: a memory file loads whatever
    they are now (it was refused as "another configuration"). Files written when the fingerprint covered them load
    into a model with the same values."""
    import dataclasses

    model = armt()
    path = save_memory(model, model.stream().memory_state, tmp_path / "a.memory")
    trained_otherwise = dataclasses.replace(model.config, bptt_depth=1, loss_aggregation="segments")
    monkeypatch.setattr(model, "config", trained_otherwise)
    load_memory(model, path)
    monkeypatch.undo()

    with_training_fields = functools.partial(memory_file._shape_config_fingerprint, training_fields=True)
    weights = memory_file.sampled_weights_fingerprint
    state = model.stream().memory_state
    older = _save_as_format(
        monkeypatch, "rmt-memory-2", with_training_fields, weights, model, state, tmp_path / "older.memory"
    )
    load_memory(model, older)
    with pytest.raises(InputError, match="another configuration"):
        load_memory(armt(memory=3), older)


def test_memory_of_a_backbone_configured_otherwise_is_refused_and_of_a_saved_copy_loads(tmp_path):
    """The configuration fingerprint covers every backbone field that changes what it computes (a norm's epsilon,
    the rotary base: the same shapes and weights, another memory), not the ones that change nothing (names, token
    ids, output flags): the model saved and loaded again, or asked for attentions, still reads the file."""
    model = armt()
    path = save_memory(model, model.stream().memory_state, tmp_path / "a.memory")
    for field, value in (("rms_norm_eps", 0.5), ("rope_theta", 100.0)):
        other = armt()
        setattr(other.backbone.config, field, value)
        with pytest.raises(InputError, match="another configuration"):
            load_memory(other, path)
    model.save_pretrained(tmp_path / "model")
    load_memory(ARMTForCausalLM.from_pretrained(tmp_path / "model"), path)
    model.backbone.config.output_hidden_states = True
    model.backbone.config.pad_token_id = 3
    load_memory(model, path)


def test_memory_of_weights_that_differ_in_any_element_is_refused_and_of_merged_adapters_loads(tmp_path):
    """Every element counts (a fine-tuned copy that changed a few embedding rows is another model); a model with LoRA
    adapters and the same model with them merged are one model."""
    from rmt.backbones.lora import add_lora, merge_lora

    model = armt()
    path = save_memory(model, model.stream().memory_state, tmp_path / "a.memory")
    other = armt()
    with torch.no_grad():
        other.backbone.get_input_embeddings().weight[7, 5] += 0.5  # one element, far from any sampled one
    with pytest.raises(InputError, match="other weights"):
        load_memory(other, path)
    adapted = armt()
    add_lora(adapted.backbone, rank=2)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)  # a trained adapter
    stream = adapted.stream()
    stream.feed(torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2)))
    adapted_path = save_memory(adapted, stream.memory_state, tmp_path / "adapted.memory")
    with pytest.raises(InputError, match="other weights"):
        load_memory(model, adapted_path)
    merge_lora(adapted)
    load_memory(adapted, adapted_path)


def test_generate_command_reads_once_and_answers_from_the_memory_file(tmp_path, capsys):
    folder = tiny_model_folder(tmp_path / "backbone", "llama")
    model = RMTForCausalLM(pretrained_backbone(str(folder)), RMTConfig(num_memory_tokens=2, segment_size=8))
    model.save_pretrained(tmp_path / "model")
    pretrained_tokenizer(str(folder)).save_pretrained(tmp_path / "model" / "backbone")  # 6 words x 30 = 180 tokens
    document = tmp_path / "doc.txt"
    document.write_text("Mary went to the kitchen . " * 30)
    memory = tmp_path / "doc.memory"
    args = ["generate", str(tmp_path / "model"), "--document", str(document), "--memory-file", str(memory)]
    assert main([*args, "--prompt", "Where is Mary ?", "--max-new-tokens", "3", "--chunk-tokens", "7"]) == 0
    first, err = capsys.readouterr()
    assert "read 180 tokens" in err and memory.exists() and "--chunk-tokens" not in err  # it read in chunks of 7
    assert len(first.splitlines()) == 1 and f"saved the document's memory to {memory}" in err  # stdout: the answer
    args = ["generate", str(tmp_path / "model"), "--memory-file", str(memory), "--prompt", "Where is Mary ?"]
    assert main([*args, "--max-new-tokens", "3", "--no-progress"]) == 0
    second, err = capsys.readouterr()
    assert "loaded the memory" in err and second == first
    assert "--chunk-tokens" not in err  # not given
    # The command that read the document, run again as it was: the memory is loaded, and --chunk-tokens noted.
    reread = ["generate", str(tmp_path / "model"), "--document", str(document), "--memory-file", str(memory)]
    assert main([*reread, "--chunk-tokens", "7", "--prompt", "Where is Mary ?", "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == first and "loaded the memory" in err
    assert f"note: --chunk-tokens has no effect: the document's memory is loaded from --memory-file {memory}" in err
    # The answer is the model's from the document's memory, which it reads: without it the answer differs.
    tokenizer = pretrained_tokenizer(str(tmp_path / "model"))
    prompt = tokenizer("Where is Mary ?", add_special_tokens=False, return_tensors="pt").input_ids
    ids = tokenizer(document.read_text(), add_special_tokens=False, return_tensors="pt").input_ids
    saved = RMTForCausalLM.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        state = saved(ids, logits="none").memory_state
    eos = [tokenizer.eos_token_id]
    answers = {
        name: tokenizer.decode(
            saved.generate(prompt, memory_state=memory_state, max_new_tokens=3, eos_token_id=eos)[0, -3:],
            skip_special_tokens=True,
        ).strip()
        for name, memory_state in (("document", state), ("none", None))
    }
    assert first.splitlines()[-1] == answers["document"] != answers["none"]
    assert main(["generate", str(tmp_path / "model"), "--memory-file", str(tmp_path / "none.memory")]) == 2
    sampled = [*args, "--max-new-tokens", "3", "--no-progress", "--do-sample", "--temperature", "3", "--top-k", "20"]
    assert main([*sampled, "--seed", "4"]) == 0
    draw = capsys.readouterr().out.splitlines()[-1]
    assert main([*sampled, "--seed", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == draw  # the same --seed samples the same answer
    assert main([*args, "--do-sample", "--top-p", "1.5", "--no-progress"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_diagonal_engine_follows_its_model_weights():
    model = armt()
    engine = DiagonalARMT(model, group_size=None)
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(2))
    before = engine(ids).logits
    with torch.no_grad():
        model.backbone.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # e.g. an optimizer step
        expected = model(ids, logits="last").logits
    after = engine(ids).logits
    assert float((after - before).abs().max()) > 1e-3  # the change reached the engine
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-4)
    assert not engine.refresh()  # nothing changed since: no restacking


def test_sampled_weights_fingerprint_of_a_tensor_past_two_to_the_24_elements_samples_its_last_element():
    """An LLM's embedding has more elements than float32 counts exactly: the sampled positions stay in range, and
    the last element is one of them."""
    size = 2**24 + 4  # its last index, 2**24 + 3, rounds up to 2**24 + 4 in float32

    def fingerprint(last: float) -> str:
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.zeros(size), requires_grad=False)
        module.weight.data[-1] = last
        return memory_file.sampled_weights_fingerprint(module)

    assert fingerprint(0.0) != fingerprint(1.0)


def _rewrite_header(path, change) -> None:
    """Rewrite a safetensors file's metadata with `change(metadata)`, its tensors' bytes as they were."""
    import json
    import struct

    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    change(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])


def _read_memory_of(model, tokens: int = 12):
    stream = model.stream()
    stream.feed(torch.randint(0, VOCAB, (1, tokens), generator=torch.Generator().manual_seed(3)))
    return stream.memory_state


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_a_flipped_data_byte_is_refused_as_corrupt_and_files_without_a_checksum_still_load(tmp_path, kind):
    """A bit flipped in the tensors' bytes loaded silently as another memory; the checksum in the header refuses it.
    A file written before the checksum existed (no key) still loads."""
    model = armt() if kind == "armt" else RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3)).eval()
    path = save_memory(model, _read_memory_of(model), tmp_path / "a.memory")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # a low bit of the last float's bytes: still a finite number
    damaged = tmp_path / "damaged.memory"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"damaged\.memory is corrupt: its tensors do not match the checksum"):
        load_memory(model, damaged)
    for file in (path, damaged):
        _rewrite_header(file, lambda metadata: metadata.pop("tensors_sha256"))
        load_memory(model, file)  # as before the checksum: a damaged one cannot be told


def test_memory_with_nan_or_inf_is_refused_on_save_and_on_load(tmp_path, monkeypatch):
    model = armt()
    state = _read_memory_of(model)
    for value in (float("nan"), float("inf")):
        bad = pytree.tree_map(lambda leaf: leaf.clone(), state)
        pytree.tree_leaves(bad)[0].view(-1)[5] = value
        with pytest.raises(InputError, match=r"the memory state holds NaN or inf values \(leaf 0\)"):
            save_memory(model, bad, tmp_path / "a.memory")
        assert not (tmp_path / "a.memory").exists()
        # A file that holds them, with a checksum that matches (written by a version that did not check them):
        monkeypatch.setattr(memory_file, "_non_finite_leaf", lambda leaves: None)
        path = save_memory(model, bad, tmp_path / "old.memory")
        monkeypatch.undo()
        with pytest.raises(InputError, match=r"old\.memory holds NaN or inf memory values \(leaf 0\)"):
            load_memory(model, path)


@pytest.mark.parametrize("state", ["abc", None, (), torch.tensor(1.0)])
def test_saving_something_that_is_no_memory_state_is_one_error(tmp_path, state):
    """A string (or None, an empty tuple, a tensor without a batch dimension) failed with an AttributeError or an
    IndexError from reading its first leaf's shape."""
    with pytest.raises(InputError, match="save_memory's state must be a memory state .* got a "):
        save_memory(armt(), state, tmp_path / "a.memory")
    assert not (tmp_path / "a.memory").exists()


def test_a_memory_state_of_another_structure_is_refused_naming_both():
    """The message counted leaves ("1 leaves, expected 1") where the structures differed but their counts did not."""
    torch.manual_seed(0)
    rmt = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=2, segment_size=4)).eval()
    armt_config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=4, d_mem=8)
    armt = ARMTForCausalLM(tiny_decoder("llama"), armt_config).eval()
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        armt_state = armt(ids).memory_state
        with pytest.raises(InputError, match=r"structure \(given: dict \{memory: tensor\}; this model's: tensor\)"):
            rmt(ids, memory_state={"memory": torch.zeros(1, 2, 32)})
        with pytest.raises(InputError, match=r"structure \(given: tuple of 2: .*; this model's: tensor\)"):
            rmt(ids, memory_state=armt_state)
