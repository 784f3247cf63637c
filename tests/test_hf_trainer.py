"""`MemoryTrainer`: Hugging Face's Trainer writing and reading rmt memory model folders (checkpoints, save_model,
the best model), resuming as an uninterrupted run, and refusing what it cannot save and resume."""

from __future__ import annotations

import weakref

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from rmt import ARMTForCausalLM, RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.errors import InputError
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train import MemoryTrainer
from tests.conftest import tiny_decoder, tiny_encoder

LENGTH = 40  # tokens per sample: 3 segments of 16


def _model(kind: str, seed: int = 0) -> RecurrentMemoryModel:
    """A tiny memory model of `kind` whose memory weights start from `seed` (the backbone is always the same)."""
    backbone = tiny_encoder() if kind == "encoder" else tiny_decoder("gpt2")  # GPT-2 ties its embeddings
    torch.manual_seed(seed)
    if kind == "encoder":
        return RMTForSequenceClassification(backbone, RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=14))
    if kind == "armt":
        return ARMTForCausalLM(backbone, RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=16, d_mem=8))
    return RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=2, segment_size=16, bptt_depth=2))


def _data(kind: str, samples: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(samples):
        ids = torch.randint(5, 60, (LENGTH,), generator=generator)  # the tiny vocabularies hold 64 ids
        label = torch.randint(0, 3, (), generator=generator) if kind == "encoder" else ids.clone()
        records.append({"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": label})
    return records


def _arguments(folder, **overrides) -> TrainingArguments:
    settings = {
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "save_steps": 2,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(output_dir=str(folder), **settings)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)


def test_the_plain_trainer_cannot_save_a_memory_model_over_tied_embeddings(tmp_path):
    """Why MemoryTrainer exists: the Trainer saves a module that is not a PreTrainedModel as a bare state dict, which
    safetensors refuses where the backbone ties its embeddings (and from_pretrained could not read)."""
    trainer = Trainer(model=_model("rmt"), args=_arguments(tmp_path / "run"), train_dataset=_data("rmt"))
    with pytest.raises(RuntimeError, match="share memory"):
        trainer.train()


@pytest.mark.parametrize("kind", ["rmt", "armt", "encoder"])
def test_checkpoints_are_memory_model_folders_and_a_resume_continues_as_an_uninterrupted_run(kind, tmp_path, capfd):
    straight = MemoryTrainer(model=_model(kind), args=_arguments(tmp_path / "straight"), train_dataset=_data(kind))
    straight.train()
    trained = _weights(straight.model)
    final = RecurrentMemoryModel.from_pretrained(tmp_path / "straight" / "checkpoint-4")
    assert type(final) is type(straight.model) and final.config == straight.model.config
    _assert_same_weights(_weights(final), trained)
    halfway = _weights(RecurrentMemoryModel.from_pretrained(tmp_path / "straight" / "checkpoint-2"))
    assert any(not torch.equal(halfway[name], trained[name]) for name in trained)
    # Resumed into a model whose memory starts elsewhere: the checkpoint's weights, optimizer, schedule, data order
    # and random state make it the uninterrupted run.
    resumed = MemoryTrainer(
        model=_model(kind, seed=1), args=_arguments(tmp_path / "resumed"), train_dataset=_data(kind)
    )
    capfd.readouterr()
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-2"))
    _assert_same_weights(_weights(resumed.model), trained)
    assert "Loading weights" not in capfd.readouterr().err  # disable_tqdm hides transformers' bar too


def test_save_model_writes_the_tokenizer_where_rmt_reads_it(tmp_path):
    from rmt.build import pretrained_tokenizer
    from tests.conftest import tiny_model_folder

    folder = tiny_model_folder(tmp_path / "backbone")
    tokenizer = pretrained_tokenizer(folder)
    model = RMTForCausalLM(
        tiny_decoder("gpt2", vocab_size=len(tokenizer)), RMTConfig(num_memory_tokens=2, segment_size=16)
    )
    trainer = MemoryTrainer(model=model, args=_arguments(tmp_path / "run"), processing_class=tokenizer)
    trainer.save_model(str(tmp_path / "saved"))
    assert pretrained_tokenizer(tmp_path / "saved").get_vocab() == tokenizer.get_vocab()
    _assert_same_weights(_weights(RMTForCausalLM.from_pretrained(tmp_path / "saved")), _weights(model))
    assert (tmp_path / "saved" / "training_args.bin").is_file()


@pytest.mark.parametrize("kind", ["qa", "text"])
def test_rmt_collators_feed_the_trainer_from_a_dataset_of_records(kind, tmp_path):
    """A datasets.Dataset of question-answer (or text) records with rmt's collator: the Trainer would drop the
    record fields, which the model's forward does not take, and could not pass a Batch to the model."""
    from datasets import Dataset

    from rmt.build import pretrained_tokenizer
    from rmt.data.collate import QACollator, TextCollator
    from tests.conftest import tiny_model_folder

    tokenizer = pretrained_tokenizer(tiny_model_folder(tmp_path / "backbone"))
    backbone = tiny_decoder("gpt2", vocab_size=len(tokenizer))
    model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=2, segment_size=8))
    story = "Mary went to the kitchen. John went to the garden. Mary went to the office."
    if kind == "qa":
        records = [{"input": story, "question": "Where is Mary?", "target": "office"}] * 8
        collator = QACollator(tokenizer, "decoder")
    else:
        records = [{"text": story}] * 8
        collator = TextCollator(tokenizer)
    arguments = _arguments(tmp_path / "run", max_steps=2, save_steps=2)
    trainer = MemoryTrainer(
        model=model, args=arguments, train_dataset=Dataset.from_list(records), data_collator=collator
    )
    before = _weights(model)
    result = trainer.train()
    assert result.training_loss > 0 and any(not torch.equal(before[n], v) for n, v in _weights(model).items())
    # The collator's tokenizer is saved with the checkpoint, as the plain Trainer saves it.
    assert pretrained_tokenizer(tmp_path / "run" / "checkpoint-2").get_vocab() == tokenizer.get_vocab()


def test_a_tokenizer_as_processing_class_is_aligned_with_the_backbone_and_saved(tmp_path):
    """The Trainer aligns a tokenizer's special tokens with `model.config.get_text_config()`, which an RMTConfig
    lacks: train() failed with AttributeError. They are aligned with the backbone's config, which holds them."""
    from rmt.build import pretrained_tokenizer
    from tests.conftest import tiny_model_folder

    tokenizer = pretrained_tokenizer(tiny_model_folder(tmp_path / "backbone"))
    model = RMTForCausalLM(
        tiny_decoder("gpt2", vocab_size=len(tokenizer)), RMTConfig(num_memory_tokens=2, segment_size=16)
    )
    assert model.backbone.config.pad_token_id != tokenizer.pad_token_id
    arguments = _arguments(tmp_path / "run", max_steps=2, save_steps=2)
    trainer = MemoryTrainer(model=model, args=arguments, train_dataset=_data("rmt"), processing_class=tokenizer)
    trainer.train()
    assert model.backbone.config.pad_token_id == tokenizer.pad_token_id
    assert trainer.processing_class is tokenizer
    assert pretrained_tokenizer(tmp_path / "run" / "checkpoint-2").get_vocab() == tokenizer.get_vocab()


def test_hugging_face_collators_get_the_columns_they_expect(tmp_path):
    """The record fields rmt's collators read are kept for those collators alone: a tokenized dataset that still
    holds its `text` column reached transformers' own collator with the strings in it."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    from rmt.build import pretrained_tokenizer
    from tests.conftest import tiny_model_folder

    tokenizer = pretrained_tokenizer(tiny_model_folder(tmp_path / "backbone"))
    texts = Dataset.from_list([{"text": "Mary went to the kitchen. John went to the garden."}] * 8)
    tokenized = texts.map(lambda record: tokenizer(record["text"]))  # keeps the text column
    model = RMTForCausalLM(
        tiny_decoder("gpt2", vocab_size=len(tokenizer)), RMTConfig(num_memory_tokens=2, segment_size=8)
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    arguments = _arguments(tmp_path / "run", max_steps=1, save_steps=1)
    MemoryTrainer(model=model, args=arguments, train_dataset=tokenized, data_collator=collator).train()


def test_the_best_model_is_loaded_at_the_end(tmp_path):
    """The best checkpoint is read back from its folder: here the worst loss counts as best (greater_is_better), so
    the best is an earlier checkpoint than the last."""
    arguments = _arguments(
        tmp_path / "run",
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,
    )
    data = _data("rmt")
    trainer = MemoryTrainer(model=_model("rmt"), args=arguments, train_dataset=data, eval_dataset=data[:8])
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = _weights(RMTForCausalLM.from_pretrained(trainer.state.best_model_checkpoint))
    _assert_same_weights(_weights(trainer.model), best)
    last = _weights(RMTForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-4"))
    assert any(not torch.equal(best[name], last[name]) for name in best)


def test_predictions_are_the_logits_alone(tmp_path):
    """The Trainer gathers every output but the loss over the evaluation: the memory state is not a prediction."""
    data = _data("rmt", samples=6)
    trainer = MemoryTrainer(model=_model("rmt"), args=_arguments(tmp_path / "run", per_device_eval_batch_size=4))
    predictions = trainer.predict(data)
    assert predictions.predictions.shape == (6, LENGTH, 64)
    assert predictions.metrics["test_loss"] > 0


def _gradients(trainer: Trainer, step, inputs: dict[str, torch.Tensor], accumulation: int) -> dict[str, torch.Tensor]:
    """The loss and gradients of one `step(trainer, model, inputs)` as the Trainer calls it within a step of
    `accumulation` micro-batches."""
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = accumulation
    trainer.model.zero_grad(set_to_none=True)
    loss = step(trainer, trainer.model_wrapped, dict(inputs))
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return {"loss": loss, **grads}


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("kind", ["rmt", "armt", "encoder"])
def test_a_step_runs_segment_by_segment_with_the_trainers_gradients(kind, bf16, tmp_path):
    """MemoryTrainer's step (forward_backward) gives the loss and gradients of the Trainer's own (model(**batch).loss,
    then backward), scaled alike for gradient accumulation, and in bf16 autocast with bf16=True as the model that
    accelerate prepares computes."""
    trainer = MemoryTrainer(model=_model(kind), args=_arguments(tmp_path, bf16=bf16), train_dataset=_data(kind))
    trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)  # what train() passes to each step
    inputs = {key: torch.stack([r[key] for r in _data(kind, samples=3)]) for key in ("input_ids", "labels")}
    ours = _gradients(trainer, MemoryTrainer.training_step, inputs, accumulation=2)
    theirs = _gradients(trainer, Trainer.training_step, inputs, accumulation=2)
    fp32 = _gradients(MemoryTrainer(model=_model(kind), args=_arguments(tmp_path)), Trainer.training_step, inputs, 2)
    assert (ours["loss"] != fp32["loss"]) == bf16  # bf16 computes otherwise
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)


class _SavedActivations:
    """The most bytes that autograd holds for backward passes at any one time inside the context."""

    def __init__(self) -> None:
        self.alive = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> _Holder:
        size = tensor.numel() * tensor.element_size()
        holder = _Holder(tensor)
        self.alive += size
        self.peak = max(self.peak, self.alive)
        weakref.finalize(holder, self._release, size)  # freed with the graph that saved it
        return holder

    def _release(self, size: int) -> None:
        self.alive -= size

    def __enter__(self) -> _SavedActivations:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda holder: holder.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class _Holder:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def test_a_steps_activations_do_not_grow_with_the_segments(tmp_path):
    """At a finite BPTT depth MemoryTrainer's step holds a few segments' activations however many segments a sample
    has; the Trainer's own step holds them all (the same measurement, to show that it can tell)."""
    peaks = {}
    for step in (MemoryTrainer.training_step, Trainer.training_step):
        for segments in (2, 8):
            model = RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=2, segment_size=16, bptt_depth=1))
            trainer = MemoryTrainer(model=model, args=_arguments(tmp_path), train_dataset=_data("rmt"))
            ids = torch.randint(5, 60, (2, 16 * segments), generator=torch.Generator().manual_seed(0))
            with _SavedActivations() as saved:
                _gradients(trainer, step, {"input_ids": ids, "labels": ids}, accumulation=1)
            peaks[step, segments] = saved.peak
    ours = peaks[MemoryTrainer.training_step, 8] / peaks[MemoryTrainer.training_step, 2]
    theirs = peaks[Trainer.training_step, 8] / peaks[Trainer.training_step, 2]
    assert ours < 1.2 and theirs > 3, (ours, theirs)  # measured: 1.0 and 3.9


def test_a_subclass_loss_runs_the_trainers_own_step(tmp_path):
    """Where the loss is not the model's (compute_loss of a subclass), the Trainer's step runs and uses it."""
    calls = []

    class Custom(MemoryTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            calls.append(len(inputs["input_ids"]))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Custom(model=_model("rmt"), args=_arguments(tmp_path, max_steps=1), train_dataset=_data("rmt"))
    trainer.train()
    assert calls == [4]


def test_gradient_checkpointing_trains_as_without_it(tmp_path):
    """TrainingArguments(gradient_checkpointing=True) reaches the backbone's layers (the Trainer passes every_n_layers
    and offload) and gives the weights of a run without it."""
    runs = {}
    for checkpointing in (False, True):
        arguments = _arguments(tmp_path / str(checkpointing), max_steps=2, gradient_checkpointing=checkpointing)
        trainer = MemoryTrainer(model=_model("rmt"), args=arguments, train_dataset=_data("rmt"))
        trainer.train()
        assert trainer.model.backbone.is_gradient_checkpointing == checkpointing
        runs[checkpointing] = _weights(trainer.model)
    for name, tensor in runs[True].items():
        torch.testing.assert_close(tensor, runs[False][name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_device_cache_is_cleared_every_torch_empty_cache_steps(tmp_path, monkeypatch):
    import rmt.train.hf_trainer as hf_trainer

    calls = []
    monkeypatch.setattr(hf_trainer, "clear_device_cache", lambda: calls.append(1))
    arguments = _arguments(tmp_path, max_steps=3, torch_empty_cache_steps=1)
    MemoryTrainer(model=_model("rmt"), args=arguments, train_dataset=_data("rmt")).train()
    assert len(calls) == 3


def test_the_ddp_wrapper_is_let_go_when_training_fails(tmp_path, monkeypatch):
    """A train() that raises leaves no DDP wrapper behind either (see MemoryTrainer._release_ddp_wrapper)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tests.test_distributed import _free_port

    wrappers = []

    def interrupted(self, *args, **kwargs):
        self.model_wrapped = DistributedDataParallel(self.model)
        wrappers.append(weakref.ref(self.model_wrapped))
        raise KeyboardInterrupt

    trainer = MemoryTrainer(model=_model("rmt"), args=_arguments(tmp_path), train_dataset=_data("rmt"))
    monkeypatch.setattr(Trainer, "train", interrupted)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
        assert trainer.model_wrapped is trainer.model and wrappers[0]() is None
    finally:
        dist.destroy_process_group()


def test_data_that_would_train_the_wrong_thing_is_refused_before_anything_changes(tmp_path):
    """A QACollator of the other mode or with other classes than the encoder's, a tokenizer whose ids do not fit the
    backbone, and text records with no collator: one line each, at construction (nothing trained or aligned)."""
    from conftest import word_tokenizer

    from rmt.data.collate import QACollator, TextCollator

    tokenizer = word_tokenizer(tmp_path / "tokenizer")
    rooms = ["bathroom", "bedroom", "kitchen"]

    def encoder(labels):
        backbone = tiny_encoder(num_labels=3)
        backbone.config.id2label = dict(enumerate(labels))  # 128 ids: the word tokenizer's 92 fit
        return RMTForSequenceClassification(backbone, RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=14))

    def refused(model, collator, match, **extra):
        with pytest.raises(InputError, match=match):
            MemoryTrainer(model=model, args=_arguments(tmp_path), data_collator=collator, **extra)

    refused(encoder(rooms), QACollator(tokenizer, "encoder", labels=rooms[::-1]), "are not the model's")
    refused(encoder(rooms), QACollator(tokenizer, "encoder", labels=[*rooms, "garden"]), "has 4 classes")
    refused(encoder(rooms), QACollator(tokenizer, "decoder"), "in decoder mode but the model is encoder")
    decoder = RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=2, segment_size=16))  # 64 ids
    refused(decoder, QACollator(tokenizer, "decoder"), "the tokenizer belongs to another model")
    refused(decoder, None, "the tokenizer belongs to another model", processing_class=tokenizer)
    records = [{"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}]
    refused(decoder, None, r"pass data_collator=rmt.data.collate.QACollator", train_dataset=records)
    refused(decoder, None, r"TextCollator\(tokenizer\)", eval_dataset=[{"text": "Mary went to the kitchen."}])
    # Accepted: the classes in the backbone's order (any case), and a backbone whose classes have no names. The
    # word tokenizer's 92 ids fill only 72% of the 128-row table, as another model's smaller tokenizer would: named.
    shouting = encoder([room.upper() for room in rooms])
    with pytest.warns(UserWarning, match="has 92 tokens but the model embeds 128: is it this model's tokenizer"):
        MemoryTrainer(model=shouting, args=_arguments(tmp_path), data_collator=QACollator(tokenizer, "encoder", rooms))
    unnamed = encoder(["LABEL_0", "LABEL_1", "LABEL_2"])
    with pytest.warns(UserWarning, match="is it this model's tokenizer"):
        MemoryTrainer(model=unnamed, args=_arguments(tmp_path), data_collator=QACollator(tokenizer, "encoder", rooms))
    fitting = RMTForCausalLM(tiny_decoder("gpt2", vocab_size=len(tokenizer)), decoder.config)
    text = [{"text": "Mary went to the kitchen."}]
    MemoryTrainer(model=fitting, args=_arguments(tmp_path), data_collator=TextCollator(tokenizer), train_dataset=text)
    # A dataset that tokenizes as it is read (a datasets transform) has a text column and gives input_ids.
    tokenized = Dataset.from_list(text).with_transform(lambda rows: {"input_ids": tokenizer(rows["text"])["input_ids"]})
    MemoryTrainer(model=fitting, args=_arguments(tmp_path, remove_unused_columns=False), train_dataset=tokenized)
    # Class indices as strings (an id2label read from JSON by hand) are ordered as numbers; no id2label: no names.
    many = [f"room{index}" for index in range(12)]
    backbone = tiny_encoder(num_labels=12)
    backbone.config.id2label = {str(index): name for index, name in enumerate(many)}
    eleven = RMTForSequenceClassification(backbone, RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=14))
    MemoryTrainer(model=eleven, args=_arguments(tmp_path), data_collator=QACollator(tokenizer, "encoder", many))
    backbone.config.id2label = None
    MemoryTrainer(model=eleven, args=_arguments(tmp_path), data_collator=QACollator(tokenizer, "encoder", many))


def test_babilong_samples_train_as_they_are_built_and_a_missing_field_names_the_records_own(tmp_path):
    """build_dataset's samples go to the Trainer as they are; a record without a needed field is named with the
    fields it has (the Trainer does not strip the fields it does not know first)."""
    from conftest import background_text, word_tokenizer

    from rmt.data.babilong import build_dataset
    from rmt.data.collate import QACollator
    from rmt.data.haystack import Haystack

    tokenizer = word_tokenizer(tmp_path / "tokenizer")
    model = RMTForCausalLM(
        tiny_decoder("gpt2", vocab_size=len(tokenizer)), RMTConfig(num_memory_tokens=2, segment_size=16)
    )
    samples = build_dataset("qa1", 60, 8, tokenizer, Haystack(background_text()), seed=1)
    arguments = _arguments(tmp_path / "run", max_steps=2, per_device_train_batch_size=2)
    trainer = MemoryTrainer(
        model=model, args=arguments, train_dataset=samples, data_collator=QACollator(tokenizer, "decoder")
    )
    assert trainer.train().training_loss > 0
    renamed = [{"context": s.input, "question": s.question, "answer": s.target} for s in samples]
    trainer = MemoryTrainer(
        model=model, args=arguments, train_dataset=renamed, data_collator=QACollator(tokenizer, "decoder")
    )
    with pytest.raises(InputError, match=r"lacks the field 'input': it has \['answer', 'context', 'question'\]"):
        trainer.train()
    QACollator(tokenizer, "decoder").check_records(samples)  # as rmt train checks records before training
    with pytest.raises(InputError, match="a record must be a dict of its fields, got a tuple"):
        QACollator(tokenizer, "decoder")([("Mary went to the kitchen.", "Where is Mary?", "kitchen")])


def test_what_it_cannot_save_and_resume_is_refused(tmp_path):
    from rmt.backbones.lora import add_lora

    arguments = _arguments(tmp_path / "run")
    with pytest.raises(InputError, match="MemoryTrainer trains rmt memory models .* got a GPT2LMHeadModel"):
        MemoryTrainer(model=tiny_decoder("gpt2"), args=arguments)
    with pytest.raises(InputError, match="does not push to the Hub while training"):
        MemoryTrainer(model=_model("rmt"), args=_arguments(tmp_path / "pushed", push_to_hub=True, hub_model_id="a/b"))
    trainer = MemoryTrainer(model=_model("rmt"), args=arguments)
    with pytest.raises(InputError, match="push_to_hub would upload the Trainer's file names"):
        trainer.push_to_hub()
    with pytest.raises(InputError, match="label_smoothing_factor with a causal LM memory model is not supported"):
        MemoryTrainer(model=_model("rmt"), args=_arguments(tmp_path / "smooth", label_smoothing_factor=0.1))
    MemoryTrainer(model=_model("encoder"), args=_arguments(tmp_path / "smooth", label_smoothing_factor=0.1))
    adapted = _model("rmt")
    add_lora(adapted.backbone)
    with pytest.raises(InputError, match="LoRA adapters"):
        MemoryTrainer(model=adapted, args=arguments)
    # A checkpoint of another model: refused by name before any weight is changed.
    MemoryTrainer(model=_model("rmt"), args=arguments, train_dataset=_data("rmt")).train()
    other = RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=3, segment_size=16))
    before = _weights(other)
    trainer = MemoryTrainer(model=other, args=_arguments(tmp_path / "other"), train_dataset=_data("rmt"))
    with pytest.raises(InputError, match="holds another model than the one being trained .*memory"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    _assert_same_weights(_weights(other), before)


def test_two_processes_train_as_one_with_the_same_global_batch_and_resume(tmp_path):
    """DDP (torchrun, gloo): both processes end with the weights of a one-process run of the same global batch, the
    checkpoint is written once and loads, and a two-process resume from it ends where the straight run did."""
    import os
    import subprocess
    from pathlib import Path

    from tests.helpers import hf_trainer_run
    from tests.test_distributed import TORCHRUN, _free_port

    if not TORCHRUN.exists():
        pytest.skip("torchrun is not installed next to this Python")
    helper = Path(hf_trainer_run.__file__)

    def launch(output, *extra):
        command = [str(TORCHRUN), "--nproc_per_node", "2", "--master-port", str(_free_port()), str(helper)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
        done = subprocess.run(
            [*command, str(output), "2", *extra], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return [torch.load(output / f"rank{rank}.pt") for rank in (0, 1)]

    one = MemoryTrainer(
        model=hf_trainer_run.build(),
        args=hf_trainer_run.arguments(tmp_path / "one", 4),
        train_dataset=hf_trainer_run.records(),
    )
    one.train()
    rank0, rank1 = launch(tmp_path / "two")
    _assert_same_weights(rank0, rank1)
    for name, tensor in one.model.state_dict().items():
        # Sums over two halves of the batch round otherwise than over one; Adam turns the attention keys' bias
        # gradient, zero but for rounding, into steps of its own (7e-6 here, the largest difference).
        torch.testing.assert_close(rank0[name], tensor, rtol=0, atol=1e-4)
    saved = RMTForCausalLM.from_pretrained(tmp_path / "two" / "checkpoint-4")
    _assert_same_weights(_weights(saved), rank0)
    resumed0, resumed1 = launch(tmp_path / "resumed", str(tmp_path / "two" / "checkpoint-2"))
    _assert_same_weights(resumed0, rank0)
    _assert_same_weights(resumed1, rank0)
