"""`TrainConfig`: the optimisation and bookkeeping settings of one training run.

Each field's documentation is its `rmt train --help` text: the command's training flags are generated from this
dataclass (`rmt.cli.options`), so the library and the command line never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from rmt.errors import InputError
from rmt.train.schedules import check_curriculum

MixedPrecision = Literal["no", "bf16", "fp16"]
Trainable = Literal["all", "memory", "lora"]
LRSchedule = Literal["cosine", "linear", "constant"]
HeldOutMetric = Literal["accuracy", "exact_match"]
DecayedParameters = Literal["all", "matrices"]


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": " ".join(text.split()), **extra}


def parse_names(text: str) -> list[str]:
    """'q_proj, v_proj' -> ['q_proj', 'v_proj']."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError(f"expected comma-separated module names such as q_proj,v_proj, got {text!r}")
    return names


def parse_curriculum(text: str) -> list[tuple[int, int]]:
    """'0:1,500:2,1000:4' -> [(0, 1), (500, 2), (1000, 4)]."""
    try:
        return [(int(a), int(b)) for a, b in (item.split(":") for item in text.split(","))]
    except ValueError as err:
        raise InputError(f"curriculum must look like 0:1,500:2,1000:4 (STEP:SEGMENTS,...), got {text!r}") from err


# Counts that must be > 0 (their type is checked with the other whole numbers in TrainConfig._check_types)
_POSITIVE_COUNTS = (
    "steps",
    "batch_size",
    "grad_accumulation",
    "eval_every",
    "eval_batches",
    "eval_batch_size",
    "log_every",
)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of one training run."""

    steps: int = field(default=1000, metadata=_doc("Optimizer steps to train for (> 0)."))
    batch_size: int = field(default=32, metadata=_doc("Samples per micro-batch on each process (> 0)."))
    grad_accumulation: int = field(
        default=1,
        metadata=_doc(
            "Micro-batches whose gradients are summed before each optimizer step (> 0): the global batch is "
            "batch_size x grad_accumulation x processes."
        ),
    )
    learning_rate: float = field(
        default=1e-3, metadata=_doc("Peak learning rate of the backbone (and of everything without its own rate).")
    )
    memory_learning_rate: float | None = field(
        default=None,
        metadata=_doc(
            "Peak learning rate of the parameters the memory wrapper adds (memory embeddings, ARMT projections) and "
            "of a newly initialised classification head; default: learning_rate."
        ),
    )
    weight_decay: float = field(default=0.01, metadata=_doc("AdamW weight decay."))
    decayed_parameters: DecayedParameters = field(
        default="all",
        metadata=_doc(
            "Which trainable parameters weight_decay applies to: 'all' (what every result of this project used), "
            "or 'matrices' (those of two or more dimensions: weights and embeddings, memory embeddings included, "
            "but not biases and normalisation gains, as Hugging Face's Trainer does)."
        ),
    )
    warmup_steps: int = field(
        default=100,
        metadata=_doc(
            "Linear learning-rate warmup steps (>= 0). As in transformers' schedules, the k-th step (from 0) trains "
            "at k / warmup_steps x the peak: the first at 0."
        ),
    )
    lr_schedule: LRSchedule = field(
        default="cosine",
        metadata=_doc(
            "After warmup: 'cosine' decay to min_lr_factor x the peak, 'linear' decay to 0, or 'constant' "
            "(transformers' schedules)."
        ),
    )
    min_lr_factor: float = field(
        default=0.1,
        metadata=_doc(
            "Cosine schedule: the learning rate the decay reaches at the end of the run, / the peak (0..1); as in "
            "transformers' schedules the last step trains a little above it."
        ),
    )
    grad_clip: float = field(
        default=1.0,
        metadata=_doc("Clip the global gradient norm to this value (0: off; the norm is logged either way)."),
    )
    eval_every: int = field(default=200, metadata=_doc("Evaluate on held-out batches every N steps (> 0)."))
    eval_batches: int = field(default=4, metadata=_doc("Held-out batches per evaluation (> 0)."))
    eval_batch_size: int = field(
        default=64,
        metadata=_doc(
            "Samples per held-out batch (> 0). A generated task draws each held-out batch from its own seed, so "
            "held-out scores are comparable only between runs with the same held-out batch size and number of batches."
        ),
    )
    log_every: int = field(default=10, metadata=_doc("Write the running training loss every N steps (> 0)."))
    checkpoint_every: int = field(default=500, metadata=_doc("Write a checkpoint every N steps (0: only at the end)."))
    seed: int = field(
        default=0,
        metadata=_doc(
            "Seed of dropout (plus each process's index) and of LoRA adapters' initialisation. rmt train also seeds "
            "the data order and a random model's weights with it; from Python the data order is the source's seed "
            "(TaskSource(task, seed=...))."
        ),
    )
    curriculum: list[tuple[int, int]] | None = field(
        default=None,
        metadata=_doc(
            "Curriculum over the number of segments, as STEP:SEGMENTS,... e.g. 0:1,500:2,1000:4 (train on 1 "
            "segment from step 0, 2 from step 500, 4 from step 1000); default: the data's own length.",
            parse=parse_curriculum,
        ),
    )
    curriculum_accuracy: float | None = field(
        default=None,
        metadata=_doc(
            "Advance the curriculum as soon as the held-out score (curriculum_metric) at the current number of "
            "segments reaches this value (0..1); a stage's STEP then only caps how long the stage before it may last."
        ),
    )
    curriculum_metric: HeldOutMetric = field(
        default="accuracy",
        metadata=_doc(
            "The held-out score that curriculum_accuracy, plateau_evals and save_best read on data with answers: "
            "'accuracy' = the share of answer tokens predicted right; 'exact_match' = the share of samples whose "
            "whole answer is right (stricter where answers span several tokens, as a decoder's generated answers "
            "do). Language-modelling data is scored by its held-out loss instead."
        ),
    )
    plateau_evals: int | None = field(
        default=None,
        metadata=_doc(
            "Stop early once the held-out score (curriculum_metric, or the loss on language-modelling data, at the "
            "final number of segments) has not improved by more than 0.005 over this many evaluations in a row, or "
            "(a score with answers) has reached 1.0 (default: train all steps)."
        ),
    )
    plateau_min_steps: int = field(
        default=0,
        metadata=_doc(
            "Train at least this many steps at the final number of segments before plateau_evals may stop the run: "
            "the first evaluations after the curriculum's last stage begins can reach 1.0 on a small held-out set "
            "by chance, or not yet have moved."
        ),
    )
    save_best: bool = field(
        default=False,
        metadata=_doc(
            "Also keep the model of the best held-out evaluation at the final number of segments in OUTPUT/best "
            "(scored by curriculum_metric, or by the held-out loss for language-modelling data; best.json there "
            "names the step and score), besides the last one (rmt train's OUTPUT/model; train() leaves it in "
            "OUTPUT/checkpoint/model). Each improvement writes a whole model."
        ),
    )
    recompute: bool = field(
        default=False,
        metadata=_doc(
            "Recompute each segment's activations during the backward pass, for one extra forward pass: only the "
            "segments' inputs are kept, so peak memory is flat in the number of segments with a finite BPTT depth "
            "(through all segments, the default, it still grows, more slowly than without)."
        ),
    )
    mixed_precision: MixedPrecision = field(
        default="no",
        metadata=_doc(
            "Autocast the forward pass to 'bf16' or 'fp16' (with a gradient scaler; GPU only) through Accelerate; "
            "weights, optimizer and memory states stay fp32."
        ),
    )
    trainable: Trainable = field(
        default="all",
        metadata=_doc(
            "Which parameters train: 'all'; 'memory' (only what the memory wrapper adds, plus a newly initialised "
            "classification head; the pretrained backbone is frozen); or 'lora' (as 'memory', plus LoRA adapters on "
            "the backbone's linear layers, trained at learning_rate and merged into its weights in every saved "
            "model; needs peft)."
        ),
    )
    lora_rank: int = field(default=8, metadata=_doc("LoRA: rank of each adapter (> 0)."))
    lora_alpha: float = field(default=16.0, metadata=_doc("LoRA: the update is scaled by alpha / rank (> 0)."))
    lora_dropout: float = field(default=0.0, metadata=_doc("LoRA: dropout on the adapters' input (0 <= p < 1)."))
    lora_targets: list[str] | None = field(
        default=None,
        metadata=_doc(
            "LoRA: the layers that get adapters, as module names or their endings, e.g. q_proj,v_proj (default: "
            "every linear layer of the backbone except its output head).",
            parse=parse_names,
        ),
    )
    fsdp: bool = field(
        default=False,
        metadata=_doc(
            "Shard the backbone's transformer layers over the processes (PyTorch FSDP2) instead of keeping a full "
            "copy on each: for backbones that do not fit one device. Needs several processes (torchrun), whose "
            "samples make the same layer calls (one layout: a synthetic task, text cut to one length); samples whose "
            "segment counts differ between processes are refused."
        ),
    )
    data_workers: int = field(
        default=0,
        metadata=_doc(
            "Processes that build the next training batches while the model trains on this one (0: build each "
            "batch when it is needed). Generated data (BABILong, synthetic tasks) costs CPU time per sample; on a "
            "GPU, a few workers keep it from waiting. The batches are the same either way."
        ),
    )
    max_time: float | None = field(
        default=None,
        metadata=_doc(
            "Stop after this many seconds of training in this run, as a job's time limit: a checkpoint (with its "
            "model) is saved, and --resume continues. The limit counts from when this process starts training, so a "
            "resumed run gets all of it again (default: no limit)."
        ),
    )
    tensorboard: bool = field(default=False, metadata=_doc("Also log to OUTPUT/tensorboard."))
    progress: bool = field(default=True, metadata=_doc("Show progress bars."))

    def __post_init__(self) -> None:
        self._check_types()
        for name in _POSITIVE_COUNTS:
            if getattr(self, name) <= 0:
                raise InputError(f"TrainConfig.{name} must be an integer > 0, got {getattr(self, name)!r}")
        if self.checkpoint_every < 0:
            raise InputError(
                f"TrainConfig.checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}"
            )
        if self.data_workers < 0:
            raise InputError(f"TrainConfig.data_workers must be an integer >= 0, got {self.data_workers!r}")
        if self.max_time is not None and not self.max_time > 0:
            raise InputError(f"TrainConfig.max_time must be > 0 seconds, got {self.max_time!r}")
        if self.warmup_steps < 0:
            raise InputError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("learning_rate", "memory_learning_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise InputError(f"TrainConfig.{name} must be a finite number > 0, got {value!r}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise InputError(f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise InputError(f"TrainConfig.min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
        if not self.grad_clip >= 0:  # also refuses NaN, which would turn clipping off without a word
            raise InputError(f"TrainConfig.grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"TrainConfig.seed must be an integer in [0, 2**32), got {self.seed!r}")
        choices = {
            "lr_schedule": get_args(LRSchedule),
            "mixed_precision": get_args(MixedPrecision),
            "trainable": get_args(Trainable),
            "curriculum_metric": get_args(HeldOutMetric),
            "decayed_parameters": get_args(DecayedParameters),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.trainable == "lora":
            if self.lora_rank <= 0:
                raise InputError(f"TrainConfig.lora_rank must be an integer > 0, got {self.lora_rank!r}")
            if not self.lora_alpha > 0:
                raise InputError(f"TrainConfig.lora_alpha must be > 0, got {self.lora_alpha!r}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise InputError(f"TrainConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
            if self.fsdp:
                raise InputError(
                    "TrainConfig: fsdp and trainable='lora' cannot be combined (sharding LoRA adapter layers is not "
                    "supported); train the adapters without fsdp"
                )
        if self.fsdp and self.mixed_precision == "fp16":
            raise InputError(
                "TrainConfig: fsdp and mixed_precision='fp16' cannot be combined (fp16's loss scaling is not undone "
                "on sharded gradients before clipping); use mixed_precision='bf16' with fsdp"
            )
        if self.curriculum is not None:
            check_curriculum(self.curriculum)
            self.curriculum = [tuple(stage) for stage in self.curriculum]
        if self.curriculum_accuracy is not None:
            if self.curriculum is None:
                raise InputError("TrainConfig.curriculum_accuracy needs a curriculum")
            if len(self.curriculum) < 2:
                raise InputError(
                    "TrainConfig.curriculum_accuracy moves a curriculum on to its next stage, and this curriculum has "
                    "one stage: give it more, or drop curriculum_accuracy"
                )
            if not 0.0 < self.curriculum_accuracy <= 1.0:
                raise InputError(f"TrainConfig.curriculum_accuracy must be in (0, 1], got {self.curriculum_accuracy}")
        if self.plateau_evals is not None and self.plateau_evals < 1:
            raise InputError(f"TrainConfig.plateau_evals must be >= 1, got {self.plateau_evals}")
        if self.plateau_min_steps < 0:
            raise InputError(f"TrainConfig.plateau_min_steps must be >= 0, got {self.plateau_min_steps}")
        if self.plateau_min_steps and self.plateau_evals is None:
            raise InputError("TrainConfig.plateau_min_steps needs plateau_evals")

    def _check_types(self) -> None:
        """Switches must be bools ("no" is true in Python: recompute="no" turned recompute on), counts whole numbers
        (checkpoint_every=1.5 checkpointed every third step), rates numbers (a string failed deep in the optimizer)."""
        switches = ("save_best", "recompute", "fsdp", "tensorboard", "progress")
        counts = (*_POSITIVE_COUNTS, "warmup_steps", "checkpoint_every", "plateau_min_steps", "lora_rank")
        counts += ("plateau_evals", "data_workers", "seed")
        numbers = ("learning_rate", "memory_learning_rate", "weight_decay", "min_lr_factor", "grad_clip")
        numbers += ("curriculum_accuracy", "lora_alpha", "lora_dropout", "max_time")
        for name in switches:
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name in counts:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"TrainConfig.{name} must be a whole number, got {value!r}")
        for name in numbers:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InputError(f"TrainConfig.{name} must be a number, got {value!r}")

    @property
    def memory_lr(self) -> float:
        return self.learning_rate if self.memory_learning_rate is None else self.memory_learning_rate
