"""One flat training loop for memory models on Hugging Face Accelerate.

AdamW, linear warmup + cosine decay, gradient clipping, curriculum over the number of segments, periodic
evaluation, a tqdm progress bar, metrics to `metrics.jsonl` (TensorBoard optional), checkpoints written
atomically every N steps, and exact resume.

Why resume is exact: the batch at step s is a pure function of (seed, s), the learning rate and the curriculum
are pure functions of s, and a checkpoint holds the model, the optimizer state and the torch RNG state. So on
CPU a run stopped at step k and resumed gives the same losses as the run that never stopped (a test checks it).

Gradients come from `model.forward_backward`, which backpropagates segment by segment (memory that does not
grow with the number of segments). With several processes the gradients are averaged across them explicitly
(`accelerator.reduce`) instead of through a DDP wrapper, because the loss is backpropagated in pieces.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rmt.build import memory_model
from rmt.config import RMTConfig
from rmt.data.tasks import Task, TaskBatch, answer_accuracy
from rmt.errors import InputError
from rmt.files import atomic_directory
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.train.schedules import curriculum_segments, learning_rate_factor

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
EVAL_SEED_BASE = 1_000_000_007  # evaluation batches use seeds far from training ones


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of one training run."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_factor: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 4
    eval_batch_size: int = 64
    log_every: int = 10
    checkpoint_every: int = 500
    seed: int = 0
    curriculum: list[tuple[int, int]] | None = field(
        default=None, metadata={"doc": "[(first_step, num_segments), ...]; None: the task's own length"}
    )
    recompute: bool = field(
        default=False, metadata={"doc": "recompute segment activations in backward (less memory, ~1/3 more compute)"}
    )
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "eval_every", "eval_batches", "eval_batch_size", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise InputError(f"TrainConfig.checkpoint_every must be >= 0 (0: never), got {self.checkpoint_every}")
        if self.learning_rate <= 0:
            raise InputError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.curriculum is not None:
            self.curriculum = [tuple(stage) for stage in self.curriculum]
            curriculum_segments(0, self.curriculum)  # validates the stages


TaskFactory = Callable[[int], Task]  # number of segments -> task whose samples span that many segments


class TaskSource:
    """Training and evaluation batches of a task, as pure functions of (seed, step).

    `task` is a fixed Task, or a factory num_segments -> Task used with a curriculum."""

    def __init__(self, task: Task | TaskFactory, seed: int = 0) -> None:
        self._task = task
        self.seed = seed

    def task(self, num_segments: int | None = None) -> Task:
        if isinstance(self._task, Task):
            return self._task
        if num_segments is None:
            raise InputError("this task is built per number of segments: pass num_segments")
        return self._task(num_segments)

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> TaskBatch:
        return self.task(num_segments).batch(batch_size, seed=self.seed * 1_000_003 + step)

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> TaskBatch:
        return self.task(num_segments).batch(batch_size, seed=EVAL_SEED_BASE + index)


@torch.no_grad()
def evaluate(
    model: RecurrentMemoryModel,
    source: TaskSource,
    batches: int,
    batch_size: int,
    num_segments: int | None = None,
) -> dict[str, float]:
    """Loss, per-token answer accuracy and full-answer exact match on held-out batches."""
    was_training = model.training
    model.eval()
    loss = accuracy = exact = 0.0
    for index in range(batches):
        batch = source.eval_batch(index, batch_size, num_segments)
        out = model(**_to_device(batch, model.device))
        token_acc, exact_match = answer_accuracy(out.logits, batch.labels.to(out.logits.device))
        loss += float(out.loss)
        accuracy += token_acc
        exact += exact_match
    model.train(was_training)
    return {"loss": loss / batches, "accuracy": accuracy / batches, "exact_match": exact / batches}


def _to_device(batch: TaskBatch, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
        "labels": batch.labels.to(device),
    }


def train(
    model: RecurrentMemoryModel,
    source: TaskSource,
    config: TrainConfig,
    output_dir: str | os.PathLike,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    description: str = "train",
) -> list[dict[str, Any]]:
    """Train `model` on `source` for `config.steps` steps; returns the logged records (also in metrics.jsonl).

    With `resume=True` and a checkpoint in `output_dir/checkpoint`, training continues from it."""
    output_dir = Path(output_dir)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    model.to(accelerator.device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    optimizer = accelerator.prepare(optimizer)

    start_step = 0
    metrics_path = output_dir / METRICS_FILE
    if resume and (output_dir / CHECKPOINT_DIR).exists():
        start_step = _load_checkpoint(output_dir / CHECKPOINT_DIR, model, optimizer)
        if main:
            _truncate_metrics(metrics_path, start_step)
    elif main and metrics_path.exists():
        metrics_path.unlink()  # a fresh run starts a fresh log
    history = _read_metrics(metrics_path) if main else []

    writer = _tensorboard_writer(output_dir) if (config.tensorboard and main) else None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc=description,
        disable=not (config.progress and main),
        dynamic_ncols=True,
    )
    started = time.time()
    running_loss, running_count = 0.0, 0
    for step in bar:
        num_segments = curriculum_segments(step, config.curriculum) if config.curriculum else None
        factor = learning_rate_factor(step, config.steps, config.warmup_steps, config.min_lr_factor)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * factor

        # Each process takes its own slice of the global batch.
        batch = source.train_batch(step, config.batch_size * accelerator.num_processes, num_segments)
        shard = slice(
            accelerator.process_index * config.batch_size, (accelerator.process_index + 1) * config.batch_size
        )
        inputs = {k: v[shard] for k, v in _to_device(batch, accelerator.device).items()}
        out = model.forward_backward(**inputs, backward=accelerator.backward, recompute=config.recompute)
        if accelerator.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        grad_norm = float(accelerator.clip_grad_norm_(params, config.grad_clip)) if config.grad_clip > 0 else 0.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        running_loss += float(out.loss)
        running_count += 1
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = {
                "step": done,
                "loss": running_loss / running_count,
                "lr": config.learning_rate * factor,
                "grad_norm": grad_norm,
                "segments": num_segments,
                "elapsed_s": round(time.time() - started, 2),
            }
            running_loss, running_count = 0.0, 0
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if main:
                _log(metrics_path, history, writer, record)
        if done % config.eval_every == 0 or done == config.steps:
            scores = evaluate(model, source, config.eval_batches, config.eval_batch_size, num_segments)
            record = {"step": done, **{f"eval_{k}": v for k, v in scores.items()}, "segments": num_segments}
            bar.set_postfix(loss=f"{float(out.loss):.3f}", acc=f"{scores['accuracy']:.3f}")
            if main:
                _log(metrics_path, history, writer, record)
        if main and config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
            save_checkpoint(output_dir / CHECKPOINT_DIR, model, optimizer, done, config)
    bar.close()
    if writer is not None:
        writer.close()
    return history


def one_window(backbone: torch.nn.Module, task: Task) -> RecurrentMemoryModel:
    """`backbone` without memory, in one segment as long as `task`'s samples: the plain in-context model, for
    training (`train_in_context`) and for measuring what a backbone does with every token in its window."""
    return memory_model(backbone, RMTConfig(num_memory_tokens=0, segment_size=task.sequence_length))


def train_in_context(
    backbone: torch.nn.Module,
    task: Task,
    config: TrainConfig,
    output_dir: str | os.PathLike,
    description: str = "in-context",
) -> list[dict[str, Any]]:
    """Train a bare decoder `backbone` on `task` with every sample in one attention window (no memory, one segment):
    a warm-up that gives a small random backbone an in-context skill (e.g. key-value binding, through multi-query
    associative retrieval) before a memory model learns to carry it across segments. The backbone is updated in
    place; returns the logged records, as `train` does."""
    return train(one_window(backbone, task), TaskSource(task, seed=config.seed), config, output_dir, description)


def save_checkpoint(
    path: Path, model: RecurrentMemoryModel, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig
) -> None:
    """Write model, optimizer, RNG state and step to `path` atomically (temp folder, then swap)."""
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp / "model")
        torch.save(
            {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
            tmp / "trainer.pt",
        )
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "train_config": asdict(config)}, indent=2))


def _load_checkpoint(path: Path, model: RecurrentMemoryModel, optimizer: torch.optim.Optimizer) -> int:
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        trainer = torch.load(path / "trainer.pt", weights_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot resume: checkpoint {path} is incomplete or corrupt: {err}") from err
    loaded = type(model).from_pretrained(path / "model")
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(trainer["optimizer"])
    torch.set_rng_state(trainer["torch_rng"])
    return int(state["step"])


def _log(path: Path, history: list[dict[str, Any]], writer: Any, record: dict[str, Any]) -> None:
    history.append(record)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["step"])


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (they will be logged again)."""
    kept = [r for r in _read_metrics(path) if r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def _tensorboard_writer(output_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))
