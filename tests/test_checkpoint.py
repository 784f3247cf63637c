"""save_pretrained / from_pretrained: identical outputs after a round trip; missing or corrupt checkpoints give
clear errors; a failed save never damages the checkpoint already on disk."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, tiny_decoder, tiny_encoder, word_tokenizer

import rmt.memory.pretrained as pretrained
from rmt import RecurrentMemoryModel, RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.errors import InputError


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # move off the initial values so the round trip is not vacuous
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_decoder_round_trip_is_identical(tmp_path, family):
    config = RMTConfig(num_memory_tokens=3, segment_size=5, write_init="learned", memory_write_scale="token_embeddings")
    model = trained_like(RMTForCausalLM(tiny_decoder(family), config))
    ids = torch.randint(0, 64, (2, 13))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RecurrentMemoryModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, RMTForCausalLM)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "backbone",
        "memory.safetensors",
        "rmt_config.json",
    ]


def test_encoder_round_trip_is_identical(tmp_path):
    config = RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=6)
    model = trained_like(RMTForSequenceClassification(tiny_encoder(), config))
    ids = torch.randint(5, 100, (2, 15))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RMTForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*does not exist"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "rmt_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing memory.safetensors, backbone"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "half")


def test_corrupt_checkpoint_errors_and_is_left_untouched(tmp_path):
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "memory.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    before = weights.read_bytes()
    with pytest.raises(ValueError, match="corrupt checkpoint: cannot read .*memory.safetensors"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "ckpt")
    assert weights.read_bytes() == before

    model.save_pretrained(tmp_path / "other")
    saved = json.loads((tmp_path / "other" / "rmt_config.json").read_text())
    (tmp_path / "other" / "rmt_config.json").write_text(json.dumps({**saved, "num_memory_tokens": 5}))
    with pytest.raises(ValueError, match="memory has shape \\(3, 32\\).*expected \\(5, 32\\)"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "other")
    from safetensors.torch import save_file

    model.save_pretrained(tmp_path / "whole")  # memory of whole numbers: load_state_dict would cast them
    save_file({"memory": torch.zeros(3, 32, dtype=torch.int64)}, tmp_path / "whole" / "memory.safetensors")
    with pytest.raises(InputError, match="corrupt checkpoint: memory holds torch.int64 values"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "whole")
    del saved["segment_size"]  # a default (128) would load a model of other segments
    (tmp_path / "other" / "rmt_config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="rmt_config.json lacks segment_size: every saved rmt_config.json has"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "other")
    del saved["xl_cache_tokens"]  # a field added after the first format: older files lack it and still load
    (tmp_path / "other" / "rmt_config.json").write_text(json.dumps({**saved, "segment_size": 5}))
    assert RecurrentMemoryModel.from_pretrained(tmp_path / "other").config.xl_cache_tokens == 0

    model.save_pretrained(tmp_path / "third")
    (tmp_path / "third" / "backbone" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="corrupt checkpoint: cannot load the backbone"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "third")


def test_a_checkpoint_with_a_backbone_file_or_an_unknown_family_is_one_error(tmp_path):
    """Raw NotADirectoryError and transformers' ValueError ("Unrecognized configuration class") before."""
    import json
    import shutil

    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(tmp_path / "ckpt")
    shutil.copytree(tmp_path / "ckpt", tmp_path / "family")
    shutil.rmtree(tmp_path / "ckpt" / "backbone")
    (tmp_path / "ckpt" / "backbone").write_text("not a folder")
    with pytest.raises(InputError, match="corrupt checkpoint: .*backbone is a file"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "family" / "backbone" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": "t5"}))
    with pytest.raises(InputError, match="its family 't5' has no causal LM in this transformers"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "family")


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"num_attention_heads": 5, "num_key_value_heads": 5}, "config.json: .*not a multiple of the number of"),
        ({"num_hidden_layers": "two"}, "config.json: .*'num_hidden_layers' expected int"),
        ({"rope_parameters": {"rope_type": "nonsense", "rope_theta": 1}}, "config.json describes: no 'nonsense' known"),
    ],
)
def test_a_backbone_config_with_values_its_family_refuses_is_a_corrupt_checkpoint(tmp_path, edit, message):
    """Raw StrictDataclassError or KeyError of transformers before, not naming the file."""
    RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)).save_pretrained(tmp_path)
    config_file = tmp_path / "backbone" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **edit}))
    with pytest.raises(InputError, match=f"corrupt checkpoint: .*{message}"):
        RecurrentMemoryModel.from_pretrained(tmp_path)


def test_loading_options_keep_their_own_errors_and_dtypes_are_taken_by_name(tmp_path):
    """A bad device_map or attention implementation was reported as "its family has no causal LM"; torch_dtype="bf16"
    was refused where dtype="bf16" loads, and transformers' default dtype="auto" was refused."""
    model = RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="device_map as a string") as raised:
        RecurrentMemoryModel.from_pretrained(tmp_path, device_map="gpu7")
    assert not isinstance(raised.value, InputError)
    with pytest.raises(ValueError, match='attn_implementation="flash_attention_9"` is not supported'):
        RecurrentMemoryModel.from_pretrained(tmp_path, attn_implementation="flash_attention_9")
    assert RecurrentMemoryModel.from_pretrained(tmp_path, torch_dtype="bf16").backbone.dtype == torch.bfloat16
    assert RecurrentMemoryModel.from_pretrained(tmp_path, dtype="auto").backbone.dtype == torch.float32
    with pytest.raises(InputError, match="give dtype or torch_dtype, not both"):
        RecurrentMemoryModel.from_pretrained(tmp_path, dtype="bf16", torch_dtype="bf16")
    # Keyword arguments that set config values reach the config (not the model's constructor, a TypeError).
    assert RecurrentMemoryModel.from_pretrained(tmp_path, use_cache=False).backbone.config.use_cache is False
    with pytest.raises(InputError, match="cannot load the backbone from .*'n_layer' expected int"):
        RecurrentMemoryModel.from_pretrained(tmp_path, n_layer="two")


def test_a_classifier_of_one_label_is_refused():
    """num_labels=1 is Hugging Face's regression: a softmax over one class has loss 0 and trains nothing."""
    backbone = tiny_encoder()
    backbone.config.num_labels = 1
    with pytest.raises(InputError, match="the classifier has 1 label"):
        RMTForSequenceClassification(backbone, RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=8))


def test_backbone_weights_missing_or_of_another_shape_are_a_corrupt_checkpoint(tmp_path):
    """transformers initialises a weight the files lack at random and only reports it, and raises a bare RuntimeError
    for one whose shape the config does not give; both are refused as a damaged checkpoint, in one line."""
    import json

    from safetensors.torch import load_file, save_file

    model = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=2, segment_size=4))
    model.save_pretrained(tmp_path / "missing")
    weights = tmp_path / "missing" / "backbone" / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(name for name in tensors if name.endswith("down_proj.weight"))[-1]
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"corrupt checkpoint: .*missing keys: {dropped}"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "missing")

    model.save_pretrained(tmp_path / "shape")
    config_file = tmp_path / "shape" / "backbone" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "intermediate_size": 48}))
    with pytest.raises(ValueError, match=r"corrupt checkpoint: .*mismatched keys: .*in the files, .*by the config"):
        RecurrentMemoryModel.from_pretrained(tmp_path / "shape")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = trained_like(RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5)))
    model.save_pretrained(tmp_path / "ckpt")
    ids = torch.randint(0, 64, (1, 10))
    expected = model(ids).logits

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pretrained, "save_file", crash)
    with torch.no_grad():
        model.memory.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "ckpt")
    loaded = RecurrentMemoryModel.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(ids).logits, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind


def test_save_keeps_other_files_in_the_folder(tmp_path):
    """Like Hugging Face's save_pretrained: a tokenizer or notes saved into the folder survive (re)saving a model."""
    folder = tmp_path / "ckpt"
    (folder / "notes").mkdir(parents=True)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "notes" / "run.txt").write_text("lr 1e-4")
    model = trained_like(RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5)))
    model.save_pretrained(folder)
    with torch.no_grad():
        model.memory.add_(1.0)
    model.save_pretrained(folder)  # over a checkpoint: its own files replaced, the others kept
    assert sorted(p.name for p in folder.iterdir()) == [
        "backbone",
        "memory.safetensors",
        "notes",
        "rmt_config.json",
        "tokenizer.json",
    ]
    assert (folder / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (folder / "notes" / "run.txt").read_text() == "lr 1e-4"
    ids = torch.randint(0, 64, (1, 10))
    torch.testing.assert_close(RecurrentMemoryModel.from_pretrained(folder)(ids).logits, model.eval()(ids).logits)


def test_save_keeps_a_tokenizer_in_the_backbone_folder_but_not_old_weight_shards(tmp_path):
    """`rmt train` saves the tokenizer into backbone/: saving the model again keeps it. Weight files of the old
    version that the new one does not write (a sharded save before an unsharded one) are dropped."""
    folder = tmp_path / "ckpt"
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(folder)
    (folder / "backbone" / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "backbone" / "model-00001-of-00002.safetensors").write_text("stale shard")
    (folder / "backbone" / "model.safetensors.index.json").write_text("{}")
    model.save_pretrained(folder)
    assert sorted(p.name for p in (folder / "backbone").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (folder / "backbone" / "tokenizer.json").read_text() == '{"version": "1.0"}'


def test_the_trainers_model_save_swaps_weights_and_tokenizer_in_together(tmp_path):
    """`rmt train` writes the tokenizer next to the weights: a crash while writing it leaves the model folder as it
    was (the new weights were swapped in first, next to the old tokenizer), and a save that ends writes both."""
    from accelerate import Accelerator

    from rmt.train.config import TrainConfig
    from rmt.train.loop import save_model

    folder = tmp_path / "model"
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(folder)
    (folder / "backbone" / "tokenizer.json").write_text("old")
    weights = (folder / "memory.safetensors").read_bytes()

    def crash_in_tokenizer(into):
        (into / "backbone" / "tokenizer.json").write_text("half")
        raise OSError("disk full")

    trained_like(model)
    accelerator, config = Accelerator(cpu=True), TrainConfig(progress=False)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, folder, accelerator, config, crash_in_tokenizer)
    assert (folder / "memory.safetensors").read_bytes() == weights
    assert (folder / "backbone" / "tokenizer.json").read_text() == "old"
    save_model(
        model, folder, accelerator, config, lambda into: (into / "backbone" / "tokenizer.json").write_text("new")
    )
    assert (folder / "memory.safetensors").read_bytes() != weights
    assert (folder / "backbone" / "tokenizer.json").read_text() == "new"


def test_save_through_a_symbolic_link_writes_where_it_points(tmp_path):
    """Saving to a link (`latest -> run-2`) updates the folder it points to and keeps the link."""
    (tmp_path / "run-2").mkdir()
    (tmp_path / "latest").symlink_to("run-2")
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(tmp_path / "latest")
    model.save_pretrained(tmp_path / "latest")
    assert (tmp_path / "latest").is_symlink() and (tmp_path / "run-2" / "memory.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run-2"]


def test_save_to_a_file_is_refused(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        model.save_pretrained(target)
    assert target.read_text() == "keep me"


def test_loaded_model_is_in_eval_mode(tmp_path):
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=3, segment_size=5)).save_pretrained(tmp_path / "c")
    loaded = RecurrentMemoryModel.from_pretrained(tmp_path / "c")
    assert not any(module.training for module in loaded.modules())


def test_wrong_class_is_refused(tmp_path):
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=1, segment_size=5)).save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="holds an RMTForCausalLM model, not an RMTForSequenceClassification one"):
        RMTForSequenceClassification.from_pretrained(tmp_path / "c")


def test_config_fields_given_to_from_pretrained_change_the_saved_config(tmp_path):
    """As Hugging Face's config overrides: `segment_size=` went to the backbone's constructor (a TypeError)."""
    model = trained_like(RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)))
    model.save_pretrained(tmp_path)
    loaded = RMTForCausalLM.from_pretrained(tmp_path, segment_size=7, bptt_depth=1, use_cache=False)
    assert (loaded.config.segment_size, loaded.config.bptt_depth) == (7, 1)
    assert loaded.backbone.config.use_cache is False  # the rest still reaches the backbone
    same_weights = RMTForCausalLM(model.backbone, RMTConfig(num_memory_tokens=3, segment_size=7, bptt_depth=1))
    same_weights.load_state_dict(model.state_dict())
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(ids).logits, same_weights.eval()(ids).logits, rtol=0, atol=0)
    assert RMTForCausalLM.from_pretrained(tmp_path, num_memory_tokens=3).config.num_memory_tokens == 3  # unchanged
    with pytest.raises(InputError, match="saved with num_memory_tokens=3, write_init='memory', which decide its"):
        RMTForCausalLM.from_pretrained(tmp_path, num_memory_tokens=4, write_init="learned")
    with pytest.raises(InputError, match="saved with read_memory_only=False, which decide"):  # its write weights
        RMTForCausalLM.from_pretrained(tmp_path, read_memory_only=True)
    with pytest.raises(InputError, match="segment_size"):
        RMTForCausalLM.from_pretrained(tmp_path, segment_size=0)


def test_save_pretrained_takes_hugging_faces_serialization_options(tmp_path):
    model = trained_like(RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)))
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded" / "backbone").glob("model-*.safetensors"))
    assert len(shards) > 1
    loaded = RMTForCausalLM.from_pretrained(tmp_path / "sharded")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(InputError, match="safetensors only"):
        model.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


def test_a_flat_state_dict_from_hugging_face_tooling_is_named_with_the_way_to_save(tmp_path):
    """Trainer.save_model and Accelerator.save_model write one model.safetensors of the whole wrapper."""
    from safetensors.torch import save_file

    model = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"flat state dict, as Trainer.save_model .*\(model\).save_pretrained"):
        RMTForCausalLM.from_pretrained(tmp_path)


def test_a_checkpoints_backbone_and_a_plain_model_folder_are_named_as_what_they_are(tmp_path):
    """A folder one level too deep (a checkpoint's backbone/) and a plain Hugging Face model were both called a
    training library's flat state dict."""
    model = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5))
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"it is the backbone of the checkpoint .*model: give that folder\)$"):
        RMTForCausalLM.from_pretrained(tmp_path / "model" / "backbone")
    model.backbone.save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="it is a plain Hugging Face model, not an rmt checkpoint: give it"):
        RMTForCausalLM.from_pretrained(tmp_path / "plain")


def _cached_snapshot(cache_dir, repo_id: str, files_from) -> None:
    """Put the files of the folder `files_from` into a Hugging Face Hub cache at `cache_dir` as the Hub's download
    leaves them (refs/main naming a snapshot folder), so the real hub library reads them with local_files_only."""
    import shutil

    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit)


def test_push_to_hub_uploads_what_from_pretrained_loads_by_hub_id(tmp_path, monkeypatch):
    """No Hub is reachable in tests: the upload is recorded by a stand-in for HfApi, and the load reads the uploaded
    files through the real hub library from its cache (local_files_only), as after a download."""
    import shutil

    import huggingface_hub

    uploads = {}

    class RecordingApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads["created"] = (repo_id, private, exist_ok, self.token)

        def upload_folder(self, repo_id, folder_path, **options):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            uploads["options"] = options
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/1",
                commit_message="",
                commit_description="",
                oid="1",
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    model = trained_like(RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5)))
    tokenizer = word_tokenizer(tmp_path / "tokenizer")  # where rmt eval / rmt generate read a checkpoint's
    url = model.push_to_hub("someone/tiny-rmt", private=True, token="hf_x", commit_message="first", tokenizer=tokenizer)
    assert (tmp_path / "uploaded" / "backbone" / "tokenizer.json").is_file()
    assert url == "https://huggingface.co/someone/tiny-rmt/commit/1"
    assert uploads["created"] == ("someone/tiny-rmt", True, True, "hf_x")
    assert uploads["options"]["commit_message"] == "first"
    assert "backbone/*.safetensors" in uploads["options"]["delete_patterns"]  # an earlier upload's other shards go

    cache = tmp_path / "hub-cache"
    _cached_snapshot(cache, "someone/tiny-rmt", tmp_path / "uploaded")
    loaded = RMTForCausalLM.from_pretrained("someone/tiny-rmt", cache_dir=cache, local_files_only=True, bptt_depth=1)
    assert loaded.config.bptt_depth == 1  # overrides still apply
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)


def test_hub_ids_that_give_no_rmt_checkpoint_are_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    empty_cache = tmp_path / "empty-cache"
    with pytest.raises(FileNotFoundError, match="no checkpoint at someone/absent: it is no local folder, and as a Hug"):
        RMTForCausalLM.from_pretrained("someone/absent", cache_dir=empty_cache, local_files_only=True)
    with pytest.raises(InputError, match="not arguments of a hub download: mirror"):
        pretrained.hub_checkpoint_folder("someone/absent", mirror="x")

    def no_rmt_config(repo_id, filename, **hub):
        raise EntryNotFoundError(f"{filename} not in {repo_id}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_rmt_config)
    with pytest.raises(InputError, match="HuggingFaceTB/SmolLM2-135M is not an rmt checkpoint: it has no rmt_config"):
        RMTForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")


def test_local_paths_are_not_taken_for_hub_ids(tmp_path, monkeypatch):
    """A mistyped local path of two parts whose first part is a folder here stays a local path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint at runs/modle: the folder does not exist"):
        RMTForCausalLM.from_pretrained("runs/modle")
    assert pretrained._names_a_hub_checkpoint("someone/model")
    for local in ("runs/modle", "./a", "a/b/c", "/abs/b", "one", "bad name/x"):
        assert not pretrained._names_a_hub_checkpoint(local)
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=1, segment_size=5)).save_pretrained("saved")
    assert RMTForCausalLM.from_pretrained("saved", revision="v1").config.num_memory_tokens == 1  # ignored locally


def test_an_encoder_checkpoint_saved_with_read_memory_only_loads_without_it(tmp_path):
    """The flag is refused for encoders now (they wrote their memory all the same); checkpoints saved with it, which
    it never changed, still load, with a warning."""
    import warnings

    model = trained_like(
        RMTForSequenceClassification(tiny_encoder(), RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=6))
    )
    model.save_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "rmt_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "read_memory_only": True}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = RMTForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert any("read_memory_only=True is dropped: an encoder never honoured it" in str(w.message) for w in caught)
    ids = torch.randint(5, 100, (2, 15))
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)
