"""`MemoryTrainer`: Hugging Face's `transformers.Trainer` for rmt memory models (RMT and ARMT, decoder and encoder).

A memory model is a torch module, not a `PreTrainedModel`, so the plain Trainer saves its checkpoints as a bare state
dict (`model.safetensors`), which `from_pretrained` cannot read, and fails at the first save where the backbone ties
its input and output embeddings (SmolLM2, GPT-2: safetensors refuses shared tensors). `MemoryTrainer` writes every
checkpoint, `save_model` and the best model in rmt's own layout (`save_pretrained`: backbone/, memory.safetensors,
rmt_config.json, the tokenizer in backbone/), and reads them back for `resume_from_checkpoint` and
`load_best_model_at_end`. rmt's collators (`rmt.data.collate.QACollator`, `TextCollator`) serve as its
`data_collator` and see every field of a record (the Trainer's removal of the columns the model does not take is
skipped for them); data that would train the wrong thing is refused at construction (`_check_data`). Everything
else (optimizer, schedule, data order, random states, logging) is the Trainer's own, so a resumed run continues as
the Trainer resumes any model.

    from transformers import TrainingArguments
    from rmt.train import MemoryTrainer

    trainer = MemoryTrainer(model=model, args=TrainingArguments("runs/qa1", max_steps=1000, save_steps=100),
                            train_dataset=dataset, data_collator=collator, processing_class=tokenizer)
    trainer.train()  # runs/qa1/checkpoint-100/ ...: each one loads with RMTForCausalLM.from_pretrained
    trainer.train(resume_from_checkpoint=True)  # after an interruption: on from the last checkpoint

Each training step runs the model's `forward_backward`, as `rmt train` does: the gradients of `model(**batch).loss`
and its backward pass (scaled alike for gradient accumulation), with memory that stays flat as segments are added
at a finite `bptt_depth`. Where the loss is not the model's own (a subclass's `compute_loss`, `compute_loss_func`, a
label smoother) or with `torch_compile`, the Trainer's own step runs, and memory grows with the segments. One process
or DDP (`torchrun`, `accelerate launch`). Refused: FSDP and DeepSpeed (`rmt train --fsdp` shards a memory
model), a backbone with LoRA adapters (its checkpoints are written merged, which a resume cannot load into the
adapters: `rmt train --trainable lora`), `push_to_hub` (upload with `model.push_to_hub` after training) and, for
decoders, `label_smoothing_factor` (the Trainer would not shift the labels). A resume from a checkpoint written with
`save_only_model` starts a new optimizer, as the Trainer does for any model."""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.memory import clear_device_cache
from datasets import Dataset
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerBase, ProcessorMixin, Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import align_special_tokens

from rmt.backbones.lora import has_lora_layers
from rmt.data.batch import Batch
from rmt.data.collate import QA_FIELDS, TEXT_FIELDS, QACollator, TextCollator, check_tokenizer
from rmt.errors import InputError
from rmt.memory.pretrained import BACKBONE_DIR, load_memory_model, save_memory_model, transformers_progress_bars
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train.gradients import average_gradients
from rmt.train.optim import trainable_parameters

# Why neither push_to_hub (argument or method) is taken: the Trainer's uploads name its own files
NO_PUSH = (
    "MemoryTrainer does not push to the Hub while training: its push_to_hub would upload the Trainer's file names, "
    "not an rmt checkpoint; upload the trained model with model.push_to_hub(repo_id, tokenizer=tokenizer), which "
    "rmt's from_pretrained reads"
)
# Outputs of a memory model that are not predictions: the Trainer's evaluation would gather them over every batch
NOT_PREDICTIONS = ["memory_state", "segment_outputs"]
# The batch keys that forward_backward takes: its arguments, less those that say how to run it
FORWARD_BACKWARD_INPUTS = set(inspect.signature(RecurrentMemoryModel.forward_backward).parameters) - {
    "self",
    "backward",
    "recompute",
}


class MemoryTrainer(Trainer):
    """`transformers.Trainer` whose checkpoints, `save_model` and best model are rmt memory model folders (see the
    module docstring). Takes the Trainer's own arguments; `model` must be an rmt memory model."""

    def __init__(self, model: nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, RecurrentMemoryModel):
            kind = "no model (model_init and hyperparameter search are not supported)" if model is None else None
            raise InputError(
                f"MemoryTrainer trains rmt memory models (RMTForCausalLM, ARMTForCausalLM, "
                f"RMTForSequenceClassification), got {kind or f'a {type(model).__name__}'}: use transformers.Trainer "
                "for other models"
            )
        if has_lora_layers(model.backbone):
            raise InputError(
                "MemoryTrainer: the backbone has LoRA adapters, and its checkpoints would be written with them merged, "
                "which a resume cannot load back into the adapters: train LoRA with `rmt train --trainable lora` "
                "(or rmt.train.train with TrainConfig(trainable='lora'))"
            )
        arguments = kwargs.get("args", args[0] if args else None)
        if getattr(arguments, "label_smoothing_factor", 0) and model.token_logits:
            # The Trainer shifts the labels of label smoothing for the transformers causal LMs it knows by class name
            # alone: a memory model's would be scored against the tokens at their own places.
            raise InputError(
                "MemoryTrainer: label_smoothing_factor with a causal LM memory model is not supported (the Trainer "
                "would not shift its labels); leave it at 0"
            )
        # Before the Trainer starts, which creates the Hub repository. Its uploads copy its own file names out of
        # each checkpoint, which an rmt checkpoint does not have.
        if getattr(arguments, "push_to_hub", False):
            raise InputError(NO_PUSH)
        collator_given = kwargs.get("data_collator", args[1] if len(args) > 1 else None) is not None
        super().__init__(model, *args, **kwargs)
        self._tokenizer_aside = None  # the processing_class while train() runs (see train)
        if self.data_collator is not None:
            self.data_collator = _AsKeywords(self.data_collator)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            engine = "FSDP" if self.is_fsdp_enabled else "DeepSpeed"
            raise InputError(
                f"MemoryTrainer runs in one process or under DDP, not {engine}: `rmt train --fsdp` (or "
                "rmt.train.train with TrainConfig(fsdp=True)) shards a memory model"
            )
        self._check_data(collator_given)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's `train`. It first aligns the special tokens (pad, bos, eos) of a tokenizer given as
        `processing_class` with `model.config` and the generation config: here with the backbone's, which hold them
        (a memory model's config is an RMTConfig, which the Trainer's alignment cannot read). When training ends or
        fails, the DDP wrapper is let go (`_release_ddp_wrapper`)."""
        tokenizer = self.processing_class
        aside = isinstance(tokenizer, (PreTrainedTokenizerBase, ProcessorMixin))
        if aside:
            align_special_tokens(self._memory_model().backbone, tokenizer)
            self.processing_class, self._tokenizer_aside = None, tokenizer  # or the Trainer aligns with the RMTConfig
        try:
            return super().train(*args, **kwargs)
        finally:
            if aside:
                self.processing_class, self._tokenizer_aside = tokenizer, None
            self._release_ddp_wrapper()

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """The Trainer's step computed segment by segment: the model's `forward_backward`, with the loss scaled as the
        Trainer scales it (by its gradient accumulation), so the gradients are those of `model(**batch).loss` and its
        backward pass while memory stays flat at a finite `bptt_depth`. Under DDP it runs outside DDP's hooks (they
        expect one backward pass per forward; this runs one per segment) and averages the gradients over processes
        once, at the step's last micro-batch. The Trainer's own step runs where the loss is not the model's (a
        `compute_loss` of a subclass, `compute_loss_func`, a label smoother), with `torch_compile`, under
        DataParallel, or for inputs `forward_backward` does not take."""
        if not self._segment_by_segment(inputs):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps

        def backward(loss: torch.Tensor) -> None:
            self.accelerator.backward(loss * scale)

        memory_model = self._memory_model()
        # accelerate's autocast (bf16/fp16) wraps the prepared model's forward, which forward_backward does not call
        with self.accelerator.no_sync(model), self.accelerator.autocast(), self.compute_loss_context_manager():
            out = memory_model.forward_backward(**inputs, backward=backward)
        if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            average_gradients(trainable_parameters(memory_model))
        steps = self.args.torch_empty_cache_steps
        if steps is not None and self.state.global_step % steps == 0:
            clear_device_cache()
        return out.loss.detach() * scale

    def _segment_by_segment(self, inputs: dict[str, Any]) -> bool:
        """Whether `training_step` can run `forward_backward` (see there)."""
        return (
            type(self).compute_loss is Trainer.compute_loss
            and self.compute_loss_func is None
            and self.label_smoother is None
            and not self.args.torch_compile
            and self.args.n_gpu <= 1
            and set(inputs) <= FORWARD_BACKWARD_INPUTS
        )

    def _release_ddp_wrapper(self) -> None:
        """Drop the DDP wrapper once training is done or failed (a later `train` wraps the model again).

        Why: its C++ reducer holds the process group, and if it is the last holder, freeing it (at the script's end,
        with the GIL held) joins gloo's worker threads, one of which may still be freeing the last collective's
        tensors and wait for the GIL forever (two processes on one core: 3 of 3 runs hung at exit, and 3 of 14
        resumes with a barrier at the end of `train`; none of 36 runs with this). Freed here, while the process group is
        still registered, the reducer only lets go of it; the group is freed later through its own Python object,
        which releases the GIL first."""
        if isinstance(self.model_wrapped, DistributedDataParallel):
            self.model_wrapped = self.model  # the Trainer's only reference (accelerate keeps the module it wrapped)
            gc.collect()

    def push_to_hub(self, *args: Any, **kwargs: Any) -> str:
        raise InputError(NO_PUSH)

    def _rmt_collator(self) -> QACollator | TextCollator | None:
        collator = getattr(self.data_collator, "collator", None)
        return collator if isinstance(collator, (QACollator, TextCollator)) else None

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        """The Trainer drops the dataset columns that the model's forward does not take (remove_unused_columns):
        rmt's collators read records, so theirs see every field (and a missing one is named with what is there)."""
        if self._rmt_collator() is not None:
            return dataset
        return super()._remove_unused_columns(dataset, description)

    def _get_collator_with_removed_columns(self, data_collator: Any, description: str | None = None) -> Any:
        """The same for datasets that are not a `datasets.Dataset` (lists of records, streamed datasets)."""
        if self._rmt_collator() is not None:
            return data_collator
        return super()._get_collator_with_removed_columns(data_collator, description)

    def _check_data(self, collator_given: bool) -> None:
        """Refuse, before anything is trained or changed, what would train on wrong data: a tokenizer whose ids do
        not fit the backbone, a QACollator of the other mode or with other classes than the model's, and records
        of text with no collator to tokenize them."""
        model, collator = self._memory_model(), self._rmt_collator()
        vocabulary = model.backbone.get_input_embeddings().num_embeddings
        for tokenizer in (self.processing_class, getattr(collator, "tokenizer", None)):
            if isinstance(tokenizer, PreTrainedTokenizerBase):
                check_tokenizer(tokenizer, vocabulary)
        if isinstance(collator, QACollator):
            if collator.mode != model.config.mode:
                raise InputError(
                    f"MemoryTrainer: the QACollator is in {collator.mode} mode but the model is {model.config.mode} "
                    f"(RMTConfig.mode): build it as QACollator(tokenizer, {model.config.mode!r}"
                    + (", labels=[...])" if model.config.mode == "encoder" else ")")
                )
            if collator.mode == "encoder":
                _check_classes(collator.labels, model.backbone.config)
        if not collator_given:
            for name, dataset in (("train_dataset", self.train_dataset), ("eval_dataset", self.eval_dataset)):
                _check_tokenized(name, dataset)

    def _memory_model(self) -> RecurrentMemoryModel:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the model as `save_pretrained` does (atomically: an interrupted save leaves the folder as it was),
        the tokenizer into its backbone/ (where rmt eval and rmt generate read it) and the training arguments, as
        the Trainer does beside its weights."""
        if not self.args.should_save:
            return
        output = Path(output_dir if output_dir is not None else self.args.output_dir)
        tokenizer = self.processing_class if self.processing_class is not None else self._tokenizer_aside
        if tokenizer is None:
            tokenizer = getattr(self.data_collator, "tokenizer", None)

        def save_tokenizer(folder: Path) -> None:
            if tokenizer is not None:
                tokenizer.save_pretrained(folder / BACKBONE_DIR)

        model = self._memory_model()
        save_memory_model(model, output, state_dict=state_dict, progress=False, extras=save_tokenizer)
        torch.save(self.args, os.path.join(output, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self._load_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_weights(self.state.best_model_checkpoint)

    def _load_weights(self, folder: str | os.PathLike) -> None:
        """Put the weights of the rmt checkpoint `folder` into the model being trained. Its configuration stays the
        model's own; a checkpoint whose weights do not fit it (another memory size, backbone or kind) is refused."""
        model = self._memory_model()
        with transformers_progress_bars(not self.args.disable_tqdm):
            saved = load_memory_model(folder)
        mine, theirs = model.state_dict(), saved.state_dict()
        differing = sorted(set(mine) ^ set(theirs))
        differing += [name for name in mine if name in theirs and mine[name].shape != theirs[name].shape]
        if differing:
            raise InputError(
                f"{folder} holds another model than the one being trained (weights that differ in name or shape: "
                f"{', '.join(differing[:5])})"
            )
        model.load_state_dict(theirs)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The Trainer's, with the memory state and per-segment outputs left out of the predictions it gathers."""
        ignore_keys = NOT_PREDICTIONS if ignore_keys is None else [*ignore_keys, *NOT_PREDICTIONS]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def _check_classes(labels: list[str], config: Any) -> None:
    """Refuse a QACollator whose classes are not the encoder's: another count, or names other than its id2label
    (where the backbone names its classes; transformers' default names LABEL_0, LABEL_1, ... name nothing)."""
    if not config.id2label:
        return
    # Keys are class indices, as ints or, in a mapping read from JSON by hand, as strings: ordered as numbers.
    names = [str(name) for _, name in sorted((int(index), name) for index, name in config.id2label.items())]
    if len(labels) != len(names):
        raise InputError(
            f"MemoryTrainer: the QACollator has {len(labels)} classes {labels} but the model's classifier has "
            f"{len(names)} ({names}): give the collator the labels the backbone was built with"
        )
    named = any(name != f"LABEL_{index}" for index, name in enumerate(names))
    if named and [label.lower() for label in labels] != [name.lower() for name in names]:
        raise InputError(
            f"MemoryTrainer: the QACollator's classes {labels} are not the model's {names} (id2label) in that "
            "order: the model would learn and name the wrong answers; give the collator the backbone's labels"
        )


def _check_tokenized(name: str, dataset: Any) -> None:
    """Refuse a dataset of text records (no input_ids) with no data_collator to tokenize them. A map-style dataset
    is judged by its first record as it comes out (a `datasets` transform may tokenize it then), a streamed one by
    its column names."""
    if isinstance(dataset, (Sequence, Dataset)) and len(dataset):
        first = dataset[0]
        columns = list(first) if isinstance(first, Mapping) else None
    else:
        columns = getattr(dataset, "column_names", None)
    if not columns or "input_ids" in columns:
        return
    if set(QA_FIELDS) <= set(columns):
        collator = "QACollator(tokenizer, mode)"
    elif set(TEXT_FIELDS) <= set(columns):
        collator = "TextCollator(tokenizer)"
    else:
        return
    raise InputError(
        f"MemoryTrainer: the {name} records hold text ({', '.join(sorted(columns))}) and no input_ids, and no "
        f"data_collator tokenizes them: pass data_collator=rmt.data.collate.{collator}"
    )


class _AsKeywords:
    """A data collator whose rmt `Batch` (what QACollator and TextCollator return) comes out as the dict of keyword
    arguments the Trainer passes to the model; other collators' batches pass through. Its other attributes are the
    collator's (the Trainer saves `data_collator.tokenizer` with the model)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, records: list[dict[str, Any]]) -> Any:
        batch = self.collator(records)
        return batch.model_inputs() if isinstance(batch, Batch) else batch

    def __getattr__(self, name: str) -> Any:
        if name == "collator":  # not set yet: a copy being unpickled (data loader workers that spawn)
            raise AttributeError(name)
        return getattr(self.collator, name)
