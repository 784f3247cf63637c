"""LoRA adapters (`TrainConfig.trainable="lora"`, `rmt.backbones.lora`): only the adapters, the memory and a new
task head train; merged weights give the adapted model's outputs and gradients; every saved model is a plain one
(loads without peft, runs in the diagonal engine); resume is exact; bad settings are refused in one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import background_text, strengthen_memory, tiny_decoder, tiny_encoder, tiny_model_folder
from transformers import AutoModelForCausalLM

from rmt.backbones.lora import add_lora, default_lora_targets, has_lora_layers, merge_lora, merged_state_dict
from rmt.build import memory_model, random_backbone
from rmt.cli import main
from rmt.config import RMTConfig
from rmt.data.babilong import answer_labels
from rmt.data.tasks import CopyTask
from rmt.errors import InputError
from rmt.inference.diagonal import DiagonalARMT
from rmt.memory.pretrained import load_memory_model
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train.loop import TaskSource, TrainConfig, train
from rmt.train.optim import build_optimizer


def copy_model(family: str = "llama", memory: str = "rmt", seed: int = 0) -> tuple[RecurrentMemoryModel, TaskSource]:
    task = CopyTask(length=6)
    backbone = random_backbone(family, task.vocab_size, num_layers=2, hidden_size=32, max_positions=64, seed=seed)
    config = RMTConfig(num_memory_tokens=4, segment_size=task.segment_size_for(3), memory_kind=memory)
    return memory_model(backbone, config), TaskSource(task, seed=0)


def lora_config(**changes) -> TrainConfig:
    settings = dict(steps=4, batch_size=4, eval_every=4, eval_batches=1, eval_batch_size=4, log_every=1)
    settings.update(checkpoint_every=2, learning_rate=1e-2, trainable="lora", lora_rank=4, progress=False)
    return TrainConfig(**{**settings, **changes})


def randomise_adapters(model: torch.nn.Module) -> None:
    """peft starts lora_B at zero (no update); draw it so that a merge that drops the update shows."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_training_changes_only_adapted_layers_and_the_memory_and_saves_a_plain_model(tmp_path, family):
    model, source = copy_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, source, lora_config(), tmp_path)

    assert not has_lora_layers(model)  # merged when training ended: the model's own layers and names
    after = model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    adapted = {f"backbone.{name}.weight" for name in default_lora_targets(model.backbone)}
    assert changed == adapted | {"memory"}  # not the embeddings, norms, biases or the LM head

    saved = load_memory_model(tmp_path / "checkpoint" / "model")  # written mid-run, adapters merged
    inputs = source.eval_batch(0, 2).model_inputs()
    with torch.no_grad():
        assert torch.allclose(saved(**inputs).logits, model(**inputs).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])  # GPT-2's Conv1D stores its weight transposed
def test_merged_weights_give_the_adapted_model_outputs_and_gradients(family):
    """The fast path (adapters merged into the weights) against peft's adapter layers computing x W + s x A B."""
    model, source = copy_model(family)
    add_lora(model.backbone, rank=4, alpha=8)
    randomise_adapters(model)
    reference, _ = copy_model(family)
    reference.load_state_dict(merged_state_dict(model))
    inputs = source.eval_batch(0, 2).model_inputs()

    def run(m: RecurrentMemoryModel) -> tuple[torch.Tensor, torch.Tensor]:
        m.zero_grad()
        out = m(**inputs)
        out.loss.backward()
        return out.logits.detach(), m.memory.grad.clone()

    adapted_logits, adapted_grad = run(model)
    merged_logits, merged_grad = run(reference)
    assert torch.allclose(adapted_logits, merged_logits, atol=1e-5)
    assert torch.allclose(adapted_grad, merged_grad, rtol=1e-3, atol=1e-4)  # the same sums in another order
    plain, _ = copy_model(family)
    with torch.no_grad():
        assert (plain(**inputs).logits - adapted_logits).abs().max() > 0.1  # the update is really there

    assert merge_lora(model) == len(default_lora_targets(plain.backbone))
    assert not has_lora_layers(model)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, adapted_logits, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # two adapters: on purpose here
@pytest.mark.parametrize("case", ["own-name", "two-adapters", "merged-by-peft"])
def test_merging_keeps_every_update_the_adapted_model_applies(case):
    """merge_lora gives the adapted model's outputs whatever peft holds: an adapter of the user's own name (it was
    dropped: only "default" was merged), two adapters both active, or an update peft's own merge() already put into
    the base weight (it was added a second time)."""
    from peft import LoraConfig, inject_adapter_in_model

    model, source = copy_model("llama")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    if case == "own-name":
        inject_adapter_in_model(config, model.backbone, adapter_name="mine")
    else:
        add_lora(model.backbone, rank=4, targets=["q_proj", "v_proj"])
    if case == "two-adapters":
        inject_adapter_in_model(config, model.backbone, adapter_name="second")
        for _, layer in model.backbone.named_modules():
            if hasattr(layer, "lora_A"):
                layer.set_adapter(["default", "second"])
    randomise_adapters(model)
    inputs = source.eval_batch(0, 2).model_inputs()
    with torch.no_grad():
        adapted = model(**inputs).logits
        if case == "merged-by-peft":
            for layer in model.backbone.modules():
                if hasattr(layer, "lora_A"):
                    layer.merge()
            assert torch.allclose(model(**inputs).logits, adapted, atol=1e-5)
        merge_lora(model)
        assert not has_lora_layers(model)
        assert torch.allclose(model(**inputs).logits, adapted, atol=1e-5)


def test_adapters_go_on_the_backbone_and_never_on_a_head_tied_to_the_embeddings():
    """Given the memory model, the adapters reached the backbone's LM head (tied to the token embeddings in GPT-2:
    merging changed the embeddings too, logits off by 4.4); a tied head is never a default target; a target string
    is a comma-separated list (it was split into characters), an empty list names nothing."""
    from rmt.memory.armt import ARMTForCausalLM

    backbone = tiny_decoder("gpt2")
    model = ARMTForCausalLM(backbone, RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=5, d_mem=8))
    with pytest.raises(InputError, match="pass model.backbone, not the memory model"):
        add_lora(model)
    head = backbone.get_output_embeddings()
    assert head.weight is backbone.get_input_embeddings().weight
    assert not any(backbone.get_submodule(name) is head for name in default_lora_targets(backbone))
    llama = tiny_decoder("llama")
    assert add_lora(llama, targets="q_proj, v_proj") == 2 * llama.config.num_hidden_layers
    with pytest.raises(InputError, match="the LoRA targets are empty"):
        add_lora(tiny_decoder("llama"), targets=[])


def test_optimizer_groups_hold_the_adapters_and_the_encoders_new_head():
    """Encoder: the backbone is frozen but for its adapters (backbone group, learning_rate) and its classification
    head (memory group, memory_learning_rate); the default targets leave the head to train whole."""
    model = memory_model(tiny_encoder(), RMTConfig(num_memory_tokens=2, segment_size=16, mode="encoder"))
    targets = default_lora_targets(model.backbone)
    assert targets and not any(t.startswith("classifier") for t in targets)
    add_lora(model.backbone, rank=2)
    optimizer, _ = build_optimizer(model, lora_config(memory_learning_rate=1e-3))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    assert groups["backbone"] and all(".lora_" in n for n in groups["backbone"])
    assert {"backbone.classifier.weight", "backbone.classifier.bias", "memory"} <= groups["memory"]
    assert not any(".lora_" in n for n in groups["memory"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == groups["backbone"] | groups["memory"]


@pytest.mark.parametrize("trainable", ["memory", "lora", "all"])
def test_parameter_summary_counts_an_encoders_new_head_apart_from_the_memory(trainable):
    from rmt.train.loop import _parameter_summary

    model = memory_model(tiny_encoder(), RMTConfig(num_memory_tokens=2, segment_size=16, mode="encoder"))
    if trainable == "lora":
        add_lora(model.backbone, rank=2)
    optimizer, _ = build_optimizer(model, lora_config(trainable=trainable))
    head = sum(p.numel() for p in model.backbone.classifier.parameters())
    line = _parameter_summary(model, optimizer, trainable)
    assert f"memory {model.memory.numel():,}, task head {head:,}" in line, line
    assert ("backbone" in line) == (trainable != "memory")


def test_armt_trains_with_adapters_and_the_diagonal_engine_needs_them_merged(tmp_path):
    model, source = copy_model("llama", memory="armt")
    strengthen_memory(model)
    projections = model.w_q.detach().clone()
    train(model, source, lora_config(), tmp_path)
    assert not torch.equal(model.w_q, projections)  # the associative memory's own parameters train too

    ids = source.eval_batch(0, 2).model_inputs()["input_ids"]
    with torch.no_grad():
        sequential = model(input_ids=ids).logits[:, -1]
        assert torch.allclose(DiagonalARMT(model, group_size=None)(ids).logits, sequential, atol=1e-4)
        add_lora(model.backbone, rank=2)
        with pytest.raises(InputError, match="LoRA adapters, which grouped cells would ignore"):
            DiagonalARMT(model, group_size=None)(ids)


def test_resume_with_adapters_continues_exactly_and_other_settings_are_refused(tmp_path):
    config = lora_config(steps=6, checkpoint_every=3, eval_every=6)
    model, source = copy_model()
    straight = train(model, source, config, tmp_path / "straight")

    model, source = copy_model()
    train(model, source, lora_config(steps=3, checkpoint_every=3, eval_every=6), tmp_path / "resumed")
    model, source = copy_model()
    resumed = train(model, source, config, tmp_path / "resumed", resume=True)
    assert [r["loss"] for r in resumed if "loss" in r] == [r["loss"] for r in straight if "loss" in r]

    for other in (TrainConfig(**{**config.__dict__, "trainable": "all"}), lora_config(steps=6, lora_rank=2)):
        model, source = copy_model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(InputError, match="cannot resume from .* it trained other parameters"):
            train(model, source, other, tmp_path / "resumed", resume=True)
        assert not has_lora_layers(model)  # a refused call leaves the model as it was
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_lora_settings_are_refused(monkeypatch):
    for changes, message in [
        ({"lora_rank": 0}, "lora_rank must be an integer > 0"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in"),
        ({"lora_alpha": 0.0}, "lora_alpha must be > 0"),
        ({"fsdp": True}, "fsdp and trainable='lora' cannot be combined"),
    ]:
        with pytest.raises(InputError, match=message):
            lora_config(**changes)
    with pytest.raises(InputError, match="cannot add LoRA adapters to nowhere_proj"):
        add_lora(tiny_decoder("llama"), targets=["nowhere_proj"])
    with pytest.raises(InputError, match="no LoRA adapter on the output head 'lm_head'"):
        add_lora(tiny_decoder("llama"), targets=["q_proj", "lm_head"])
    # peft adapts an embedding with lora_embedding_A/B, which the merge did not see: its update was dropped.
    with pytest.raises(InputError, match="'model.embed_tokens' is a Embedding: leave it out"):
        add_lora(tiny_decoder("llama"), targets=["embed_tokens", "q_proj"])
    from peft import LoraConfig, inject_adapter_in_model  # such adapters added by peft itself: never merged silently

    adapted = inject_adapter_in_model(LoraConfig(r=2, target_modules=["embed_tokens"]), tiny_decoder("llama"))
    with pytest.raises(InputError, match="adapter on an embedding layer cannot be merged"):
        merged_state_dict(adapted)
    backbone = tiny_decoder("llama")
    add_lora(backbone)
    with pytest.raises(InputError, match="already has LoRA adapters"):
        add_lora(backbone)
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(InputError, match=r'LoRA needs the peft package: pip install "rmt\[lora\]"'):
        add_lora(tiny_decoder("llama"))


def test_cli_trains_adapters_on_a_model_folder_then_evaluates(tmp_path, capsys):
    folder = tiny_model_folder(tmp_path / "llama", "llama")
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(400))
    output = tmp_path / "run"
    args = ["train", "--model", str(folder), "--data", "babilong:qa1", "--haystack", str(haystack)]
    args += ["--segment-size", "48", "--memory-tokens", "2", "--steps", "2", "--batch-size", "2", "--eval-every", "2"]
    args += ["--eval-batches", "1", "--eval-batch-size", "2", "--trainable", "lora", "--lora-rank", "2"]
    args += ["--lora-targets", "q_proj, v_proj", "--output", str(output), "--no-progress"]
    assert main(args) == 0
    adapters = 2 * 2 * (2 * 32 + 2 * 32)  # two layers, q_proj and v_proj (32 -> 32 on this model), A and B of rank 2
    assert f"backbone LoRA adapters {adapters:,}" in capsys.readouterr().err  # the run says what it trains
    trained = load_memory_model(output / "model").backbone.state_dict()
    base = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, base[k])}
    assert changed == {f"model.layers.{i}.self_attn.{p}.weight" for i in (0, 1) for p in ("q_proj", "v_proj")}
    assert json.loads((output / "checkpoint" / "trainer_state.json").read_text())["train_config"]["lora_rank"] == 2
    capsys.readouterr()
    evaluation = ["eval", str(output / "model"), "--data", "babilong:qa1", "--lengths", "100", "--samples", "2"]
    assert main([*evaluation, "--haystack", str(haystack), "--no-progress"]) == 0
    assert "| qa1 | memory |" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # argparse's exit, with the parser's message
        main([*args[:-3], "--lora-targets", ",", "--output", str(tmp_path / "bad"), "--no-progress"])
    assert "--lora-targets: expected comma-separated module names such as q_proj,v_proj" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_encoder_head_classes_come_through_lora_training(tmp_path):
    """BERT with a classification head for qa1's rooms: after LoRA training the saved model keeps its classes."""
    folder = tiny_model_folder(tmp_path / "bert", "bert", answer_labels("qa1"))
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(400))
    args = ["train", "--model", str(folder), "--data", "babilong:qa1", "--haystack", str(haystack)]
    args += ["--segment-size", "32", "--memory-tokens", "2", "--steps", "2", "--batch-size", "2", "--eval-every", "2"]
    args += ["--eval-batches", "1", "--eval-batch-size", "2", "--trainable", "lora", "--output", str(tmp_path / "run")]
    assert main([*args, "--no-progress"]) == 0
    saved = load_memory_model(tmp_path / "run" / "model")
    assert list(saved.backbone.config.id2label.values()) == answer_labels("qa1")
    assert not has_lora_layers(saved)


def test_all_trains_the_whole_model_again_after_a_lora_run(tmp_path):
    """Adding adapters froze the backbone and merging them left it frozen; trainable="all" only ever cleared
    requires_grad, so a second run on the same model trained the memory alone (0 of 21 backbone tensors changed)."""
    model, source = copy_model("llama")
    train(model, source, lora_config(), tmp_path / "lora")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train(model, source, lora_config(trainable="all"), tmp_path / "all")
    after = model.backbone.state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in before if k.endswith("proj.weight"))
    build_optimizer(model, lora_config(trainable="memory"))
    assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("trainable", ["lora", "memory"])
def test_training_leaves_every_parameters_requires_grad_as_it_found_it(tmp_path, trainable):
    """A run that trains part of the model freezes the rest for itself only: afterwards the model trains whole in
    the user's own loop (after a LoRA run its merged backbone stayed frozen), and what the user froze stays frozen."""
    model, source = copy_model("llama")
    model.backbone.get_input_embeddings().weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    train(model, source, lora_config(trainable=trainable), tmp_path)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert sum(not flag for flag in flags.values()) == 1


@pytest.mark.parametrize("memory", ["rmt", "armt"])
def test_a_peft_model_as_backbone_is_refused_and_the_model_inside_it_trains(memory):
    """A PeftModel passes itself off as its base model, and the first forward failed with an AttributeError about
    `last_hidden_state` (RMT) or `layers` (ARMT). The model inside it keeps peft's adapters, which then train."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_decoder("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    armt = {"d_mem": 4} if memory == "armt" else {}  # an RMT given d_mem warns that it has no effect
    config = RMTConfig(num_memory_tokens=2, segment_size=6, memory_kind=memory, **armt)
    for wrapper in (peft_model, peft_model.base_model):
        with pytest.raises(InputError, match=f"the backbone is a peft {type(wrapper).__name__}: give the model inside"):
            memory_model(wrapper, config)
    model = memory_model(peft_model.get_base_model(), config)
    ids = torch.randint(0, 64, (2, 15), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    adapter_grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert adapter_grads and all(grad is not None and bool(grad.abs().sum() > 0) for grad in adapter_grads)
