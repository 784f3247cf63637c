"""One flat training loop for memory models on Hugging Face Accelerate.

    history = train(model, source, TrainConfig(steps=1000), "runs/copy")

AdamW with a learning rate per parameter group (memory vs backbone), warmup then cosine decay, gradient clipping,
gradient accumulation, mixed precision (bf16 autocast, fp16 with a gradient scaler), a curriculum over the number of
segments (advanced by step or on held-out accuracy), early stopping on a plateau, periodic evaluation, a tqdm progress
bar, metrics to `metrics.jsonl` (TensorBoard optional), checkpoints written atomically every N steps, exact resume, a
time limit (`max_time`) and worker processes that build the next batches (`data_workers`, `rmt.data.prefetch`).

Gradients come from `model.forward_backward`, which backpropagates segment by segment (with a finite BPTT depth, memory
that does not grow with the number of segments), so one step calls backward several times. With several processes
(`torchrun`, `accelerate launch`) the model is prepared by Accelerate (DDP: every process starts from the main
process's weights), each process computes its share of the global batch without gradient synchronisation, and the
gradients are then averaged in one bucketed all-reduce that every process makes with the same tensors (zeros for
parameters that got no gradient on that process; none where no process gave one, as in one process): one
synchronisation per optimizer step, whatever the number of backward calls.
Held-out evaluation is shared out (each process scores every n-th batch; `rmt.train.evaluation`); logging and the
final model are the main process's, the others wait at a barrier.

Why a run repeats: the global random generators (dropout masks of a pretrained backbone) are seeded with the config's
seed when training starts, and the batches come from the source's own generators.

Why resume is exact: the batch at step s is a pure function of (seed, s) (`rmt.data.sources`), and a checkpoint holds
the model, the optimizer, the schedule, the scaler, every process's RNG state and the trainer's own state (curriculum
stage, early-stopping record). A run stopped at step k and resumed gives the losses of the run that never stopped
(tests check it, with one and with two processes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, reduce, set_seed
from tqdm.auto import tqdm

from rmt.backbones.lora import add_lora, merge_lora
from rmt.build import memory_model
from rmt.config import RMTConfig
from rmt.data.batch import Batch
from rmt.data.prefetch import PrefetchingSource
from rmt.data.sources import Source, TaskSource
from rmt.data.tasks import Task
from rmt.errors import InputError
from rmt.files import atomic_directory, recover_directory, write_atomic, write_json_atomic
from rmt.memory.pretrained import save_memory_model
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.segments import SegmentPlan, loss_terms
from rmt.train import fsdp
from rmt.train.checkpoint import (
    CHECKPOINT_DIR,
    TRAINER_STATE,
    SaveExtras,
    checkpoint_exists,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from rmt.train.config import TrainConfig
from rmt.train.evaluation import evaluate
from rmt.train.gradients import average_gradients
from rmt.train.optim import build_optimizer, task_head_ids, trainable_parameters
from rmt.train.schedules import stage_at

METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"
BEST_DIR = "best"  # TrainConfig.save_best's model
BEST_RECORD = "best.json"
TENSORBOARD_DIR = "tensorboard"
_PLATEAU_DELTA = 0.005


@dataclass
class TrainerState:
    """What the loop itself carries from step to step and saves in checkpoints."""

    stage: int = 0  # index into TrainConfig.curriculum
    # plateau_evals: the best held-out score (`held_out_metric`) at the final number of segments (None: none yet)
    # and which score that is (a resume that scores otherwise starts the count anew)
    plateau_best: float | None = None
    plateau_of: str = ""
    evals_without_gain: int = 0
    final_stage_from: int = 0  # steps done when the curriculum's last stage began (plateau_min_steps counts from it)
    stopped_early: bool = False
    elapsed_s: float = 0.0  # training time up to the last checkpoint, so a resumed log's elapsed_s carries on
    # Training losses since the last logged record: saved, so the first record after a resume is the mean the
    # uninterrupted run logs.
    running_loss: float = 0.0
    running_count: int = 0
    data: str = ""  # the run's description of its data: a resume on other data is refused
    # sha256 of the files the data is read from, by what names them (`rmt train`: --data, --validation-data,
    # --haystack): a resume from files of the same names with other contents is refused
    data_contents: dict[str, str] = field(default_factory=dict)
    stop_reason: str = ""  # why it stopped early: "ceiling" (a held-out score of 1.0) or "plateau"
    # save_best: the step whose model OUTPUT/best holds (0: none yet), its held-out score, and which score that is
    # (metric and segments: a resume that changes them starts a new best)
    best_step: int = 0
    best_score: float | None = None
    best_of: str = ""


def migrated_trainer_state(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's TrainerState fields under today's names: `best_accuracy` (before held-out losses could
    plateau; -1.0 meant none yet) is `plateau_best`."""
    saved = dict(saved)
    if "best_accuracy" in saved:
        old_best = saved.pop("best_accuracy")
        saved.setdefault("plateau_best", None if old_best == -1.0 else old_best)
    return saved


def default_accelerator(config: TrainConfig, cpu: bool | None = None) -> Accelerator:
    """An Accelerator on the GPU when there is one (else the CPU; `cpu=True` forces it) with the config's mixed
    precision. Accelerate keeps one state per process: a single process that trained in another precision before
    (two `train` calls in a notebook) gets it reset; a distributed one is refused, as Accelerate refuses it."""
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    settings = {"cpu": cpu, "mixed_precision": config.mixed_precision}
    try:
        return Accelerator(**settings)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        if PartialState().num_processes > 1:
            raise InputError(
                f"these processes trained in another mixed precision before: Accelerate cannot change it to "
                f"{config.mixed_precision!r} within them; start them again"
            ) from err
        AcceleratorState._reset_state()
        return Accelerator(**settings)


def train(
    model: RecurrentMemoryModel,
    source: Source,
    config: TrainConfig,
    output_dir: str | os.PathLike,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    description: str = "train",
    save_extras: SaveExtras | None = None,
    overwrite: bool = False,
    data_contents: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Train `model` on `source` for `config.steps` steps; returns the logged records (also in metrics.jsonl):
    every `log_every` steps the mean training loss over those steps, `lr` (the backbone's rate at the last of them;
    the memory's with trainable="memory"), `grad_norm` (the last step's, before clipping) and `segments`; every
    `eval_every` steps the held-out scores (`eval_loss`, `eval_accuracy`, ...).

    resume=True continues from `output_dir/checkpoint` (an error if there is none). A fresh run into a folder that
    holds an earlier run (`run_entries`: its metrics, checkpoint, model, best model or TensorBoard logs) is refused
    unless overwrite=True, which removes that run first (its checkpoint would be replaced and its best model and logs
    mixed with the new run's). Nothing in `output_dir` is created or removed before
    start-up succeeded (the optimizer built, a checkpoint to resume loaded, TensorBoard found), and a run that fails
    before it writes a file removes the folders it made. `description` names
    the run's data: it labels the progress bar and is saved with each checkpoint, and a resume with another
    description is refused (`rmt train` passes the task and its size, the data file's name or the BABILong task, with
    each data flag off its default; a resume from Python passes the description the run started with).
    `data_contents` (what names a file: its sha256, e.g. `rmt.files.file_sha256`) is saved with each checkpoint too,
    and a resume whose files of those names hold other contents is refused (`rmt train` passes --data,
    --validation-data and --haystack: the names alone let a file be moved, not replaced).
    `save_extras(folder)` writes files that belong with the model into checkpoints (e.g. the tokenizer). The model is
    trained in place. With trainable="lora" its backbone gets LoRA adapters first (drawn from `config.seed`), which
    are merged into the backbone's weights when training ends, or stops on an error: the model comes back with its
    own layers and names, and every parameter's requires_grad as it was. save_best also keeps the best-evaluated
    model in `output_dir/best`."""
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: resume continues the run that overwrite removes")
    if not isinstance(config, TrainConfig):
        hint = ": build one from it, TrainConfig(**settings)" if isinstance(config, dict) else ""
        raise InputError(f"train takes a TrainConfig, got a {type(config).__name__}{hint}")
    if not isinstance(source, Source):
        hint = ": wrap it, TaskSource(task)" if isinstance(source, Task) else ""
        raise InputError(f"train takes a data source (rmt.data.sources.Source), got a {type(source).__name__}{hint}")
    if source.metric != "accuracy" and config.curriculum_accuracy is not None:  # language modelling: loss only
        raise InputError(
            f"curriculum_accuracy acts on held-out accuracy, which this data does not have (it is scored by its "
            f"{source.metric}): it would never act"
        )
    if config.curriculum and not source.follows_num_segments:
        raise InputError(
            f"a curriculum changes the number of segments of generated samples, and this {type(source).__name__} "
            "gives samples of one length (a fixed task or a data file): it would log stages that never happen; "
            "drop the curriculum, or pass TaskSource a factory num_segments -> task"
        )
    # Every process looks before any writes: the main process writes only after the model is prepared, which
    # waits for all of them.
    earlier = run_entries(output_dir)
    if earlier and not (resume or overwrite):
        raise InputError(
            f"{output_dir} already holds a run ({', '.join(earlier)}): pass resume=True to continue it, "
            "overwrite=True to replace it, or another output_dir"
        )
    data = PrefetchingSource(source, config.data_workers) if config.data_workers else source
    run = {
        "config": config,
        "output_dir": Path(output_dir),
        "resume": resume,
        "accelerator": accelerator,
        "description": description,
        "save_extras": save_extras,
        "overwrite": overwrite,
        "data_contents": dict(data_contents or {}),
    }
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    created = _folders_to_create(Path(output_dir))
    try:
        if config.trainable != "lora":
            return _train(model, data, **run)
        with torch.random.fork_rng(devices=[]):  # the adapters' draw depends on the seed alone
            torch.manual_seed(config.seed)
            add_lora(model.backbone, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
        try:
            return _train(model, data, **run)
        finally:
            merge_lora(model)
    except BaseException:
        _remove_empty(created)  # a run that failed before it wrote anything leaves no empty folders behind
        raise
    finally:
        for param, flag in requires_grad:  # `trainable` froze parts of the model for this run only
            param.requires_grad_(flag)
        if isinstance(data, PrefetchingSource):
            data.close()


def _folders_to_create(path: Path) -> list[Path]:
    """The folders of `path` that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first) that is an empty folder, up to the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # holds files (or was never made): kept, and so are the folders above it
            return


def _train(
    model: RecurrentMemoryModel,
    source: Source,
    config: TrainConfig,
    output_dir: Path,
    resume: bool,
    accelerator: Accelerator | None,
    description: str,
    save_extras: SaveExtras | None,
    overwrite: bool,
    data_contents: dict[str, str],
) -> list[dict[str, Any]]:
    """`train` on a model whose LoRA adapters, if the config asks for them, are already in place."""
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output {output_dir} exists and is not a folder")
    summary_writer = tensorboard_writer_class() if config.tensorboard else None
    accelerator = accelerator or default_accelerator(config)
    _check_accelerator(accelerator, config)
    main = accelerator.is_main_process
    if main:
        _armt_depth_zero_note(model)
    prepared, optimizer, scheduler, sharded = _prepare(model, accelerator, config)
    params = trainable_parameters(model)
    if main:
        _start_notes(model, optimizer, config)

    # Before a resume, which then restores the checkpoint's generator states in place of these. Each process its own
    # seed (seed + its index): with one seed for all, every process drew the same dropout masks for its part of the
    # batch. Batches do not come from these generators (sources are pure in the seed and step).
    set_seed(config.seed, device_specific=True)
    state = TrainerState(data=description, data_contents=data_contents)
    start_step = 0
    best_after = None  # a resume's OUTPUT/best from a step past its checkpoint
    metrics_path = output_dir / METRICS_FILE
    if resume:
        start_step, state, best_after = _resume(
            model, source, config, output_dir, accelerator, description, data_contents, scheduler, sharded
        )
    else:
        _build_first_batches(source, config, accelerator.num_processes)
    # Start-up succeeded: from here on the output folder changes.
    if main:
        _prepare_output(output_dir, resume, overwrite, start_step, state, best_after)
    history = _read_metrics(metrics_path) if main else []
    writer = None
    if summary_writer is not None and main:
        # On a resume, events logged after the checkpoint are dropped as metrics.jsonl's records are.
        writer = summary_writer(
            log_dir=str(output_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if resume else None
        )

    model.train()
    optimizer.zero_grad(set_to_none=True)  # gradients the caller left (a forward_backward of their own) are not ours
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc=description,
        disable=not (config.progress and main),
        dynamic_ncols=True,
    )
    started = time.time() - state.elapsed_s
    shown_loss = None  # the progress bar's: the last logged mean training loss
    deadline = None if config.max_time is None else time.time() + config.max_time
    for step in bar:
        if state.stopped_early:
            break
        num_segments = _stage_segments(config, state, step)
        loss = _train_step(model, prepared, source, config, accelerator, step, num_segments)
        # Clipping at infinity leaves the gradients as they are and still measures their norm for the log.
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        if config.fsdp:
            grad_norm = fsdp.clip_gradients(params, max_norm)
        else:
            grad_norm = float(accelerator.clip_grad_norm_(params, max_norm))
        lr = scheduler.get_last_lr()[-1]  # the rate this step used (the scheduler then moves to the next one)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips a step with inf/nan gradients
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.running_loss += loss
        state.running_count += 1
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = {
                "step": done,
                "loss": state.running_loss / state.running_count,
                "lr": lr,
                "grad_norm": grad_norm,
                "segments": num_segments,
                "elapsed_s": round(time.time() - started, 2),
            }
            state.running_loss, state.running_count = 0.0, 0
            shown_loss = record["loss"]
            bar.set_postfix(loss=f"{shown_loss:.3f}")
            if main:
                _log(metrics_path, history, writer, record)
        if done % config.eval_every == 0 or done == config.steps:
            # Sharded layers gather their weights in every process: each runs every batch. Otherwise each process
            # scores its share of the batches and all get the totals.
            processes = None if config.fsdp else accelerator
            with accelerator.autocast():  # held-out scores in the precision the run trains in
                scores = evaluate(
                    model, source, config.eval_batches, config.eval_batch_size, num_segments, processes, config.progress
                )
            if main:
                record = {"step": done, **{f"eval_{k}": v for k, v in scores.items()}, "segments": num_segments}
                bar.set_postfix(
                    loss=f"{loss if shown_loss is None else shown_loss:.3f}",
                    **({"acc": f"{scores['accuracy']:.3f}"} if "accuracy" in scores else {}),
                )
                _log(metrics_path, history, writer, record)
            state = _after_eval(config, state, done, scores, accelerator, source.metric)
            if config.save_best and state.best_step == done:
                _save_best(model, output_dir, accelerator, config, state, source.metric, num_segments, save_extras)
            if state.stopped_early and main:
                _log(metrics_path, history, writer, {"step": done, "stopped": state.stop_reason})
                reason = _plateau_reason(config, state, source.metric)
                print(f"stopped early at step {done}: {reason}", file=sys.stderr)
        periodic = config.checkpoint_every and done % config.checkpoint_every == 0
        out_of_time = done < config.steps and _out_of_time(deadline, accelerator)
        if periodic or done == config.steps or state.stopped_early or out_of_time:
            state.elapsed_s = time.time() - started
            save_checkpoint(
                output_dir / CHECKPOINT_DIR, accelerator, model, done, config, asdict(state), save_extras, sharded
            )
        if out_of_time:
            if main:
                _log(metrics_path, history, writer, {"step": done, "stopped": "max_time"})
                print(f"stopped at step {done}: the time limit of {config.max_time:g} s is up", file=sys.stderr)
            break
    bar.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return history


def _check_accelerator(accelerator: Accelerator, config: TrainConfig) -> None:
    """Refuse an Accelerator that would train otherwise than `config` says."""
    if accelerator.mixed_precision != config.mixed_precision:  # checkpoints record the config's: they must agree
        raise InputError(
            f"the Accelerator runs mixed precision {accelerator.mixed_precision!r} but the config asks for "
            f"{config.mixed_precision!r}: pass an Accelerator(mixed_precision={config.mixed_precision!r}), or none"
        )
    if accelerator.mixed_precision == "fp16" and not accelerator.native_amp:
        raise InputError(
            "fp16 mixed precision needs a GPU: Accelerate neither autocasts to fp16 nor scales gradients on the CPU, "
            "so the run would train in fp32; use bf16 on the CPU"
        )
    if accelerator.gradient_accumulation_steps > 1:  # accelerator.backward would divide every gradient by it
        raise InputError(
            f"the Accelerator accumulates gradients over {accelerator.gradient_accumulation_steps} steps itself: pass "
            "one without gradient_accumulation_steps and set TrainConfig.grad_accumulation instead"
        )


def _prepare(model: RecurrentMemoryModel, accelerator: Accelerator, config: TrainConfig) -> tuple[Any, Any, Any, Any]:
    """(the model as the training step runs it, optimizer, scheduler, and for FSDP (optimizer, scheduler), else
    None): the model on the accelerator's device, its layers sharded (FSDP2, no DDP wrapper: rmt.train.fsdp) or
    wrapped for DDP by Accelerate."""
    model.to(accelerator.device)
    if config.fsdp:
        fsdp.shard_layers(model, accelerator)
        optimizer, scheduler = build_optimizer(model, config, foreach=False)
        optimizer = accelerator.prepare(optimizer)
        return model, optimizer, scheduler, (optimizer, scheduler)
    optimizer, scheduler = build_optimizer(model, config)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    # prepare() wraps the model's own forward in autocast for good, which would leave a bf16 run's model computing in
    # bf16 after training; the trainer autocasts where it runs the model instead.
    accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    accelerator.register_for_checkpointing(scheduler)
    return prepared, optimizer, scheduler, None


def _start_notes(model: RecurrentMemoryModel, optimizer: Any, config: TrainConfig) -> None:
    """What trains, and notes on settings that do less than they seem to (main process)."""
    print(_parameter_summary(model, optimizer, config.trainable), file=sys.stderr, flush=True)
    late = [start for start, _ in config.curriculum or [] if start >= config.steps]
    if late:
        early = (
            ""
            if config.curriculum_accuracy is None
            else f", or if held-out accuracy reaches {config.curriculum_accuracy:g} soon enough to start them early"
        )
        print(
            f"note: the curriculum's stage(s) from step {late[0]} lie past the run's {config.steps} steps: they "
            f"train only if a resume adds steps{early} (held-out scores at the final number of segments wait for "
            "them)",
            file=sys.stderr,
        )
    if config.warmup_steps >= config.steps:
        print(
            f"note: the warmup ({config.warmup_steps} steps) is not shorter than the run ({config.steps} steps): "
            "the learning rate never reaches its peak",
            file=sys.stderr,
        )


def _armt_depth_zero_note(model: RecurrentMemoryModel) -> None:
    """Say that ARMT at BPTT depth 0 trains no write, and that an untrained one's memory stays empty. Read before the
    model is prepared (sharded weights would need every process to look)."""
    if model.config.memory_kind != "armt" or model.config.bptt_depth != 0:
        return
    # Every write lies outside the gradient window at depth 0; an untrained ARMT's value projection is zero, so what
    # it writes stays zero and its reads add nothing: the memory can never start to learn.
    empty = not bool(model.w_v.detach().any())
    print(
        "note: ARMT at BPTT depth 0 (bptt_depth=0): no loss reaches the memory's writes, so its key, value and gate "
        "projections (w_k, w_v, w_b) get no gradient"
        + (
            "; its value projection is still zero, so the memory stays empty and adds nothing to what the rest of "
            "the model learns (a depth of 1 or more, or -1 for all, trains the memory)"
            if empty
            else ""
        ),
        file=sys.stderr,
    )


def _resume(
    model: RecurrentMemoryModel,
    source: Source,
    config: TrainConfig,
    output_dir: Path,
    accelerator: Accelerator,
    description: str,
    data_contents: dict[str, str],
    scheduler: Any,
    sharded: Any,
) -> tuple[int, TrainerState, int | None]:
    """(the checkpoint's step, its trainer state, the step of a best model saved past it or None): every check of
    the checkpoint against this run first, then the checkpoint restored into the model, optimizer and schedule."""
    main = accelerator.is_main_process
    record = read_checkpoint(output_dir / CHECKPOINT_DIR, accelerator, model, config)
    start_step = record["step"]
    saved = migrated_trainer_state(record.get("trainer", {}))
    known = {f.name for f in fields(TrainerState)}
    state = TrainerState(**{k: v for k, v in saved.items() if k in known})
    _check_resume(record, state, config, description, output_dir / CHECKPOINT_DIR, main, source.metric)
    _check_same_contents(state, data_contents, output_dir / CHECKPOINT_DIR)
    best_after = _best_after_checkpoint(output_dir, start_step, accelerator)
    if best_after is not None:
        # The checkpoint's best model was replaced by one of the steps this run goes through again: the best is
        # chosen anew from here. A run as long as the first saves that step's model again (its score beat the old
        # best, and so every score in between); a shorter one never reaches it.
        state.best_step, state.best_score, state.best_of = 0, None, ""
    restore_checkpoint(output_dir / CHECKPOINT_DIR, accelerator, model, sharded)  # only once every check passed
    if record.get("train_config", {}).get("steps", config.steps) != config.steps:
        _rate_of_this_schedule(scheduler)
    return start_step, state, best_after


def _prepare_output(
    output_dir: Path, resume: bool, overwrite: bool, start_step: int, state: TrainerState, best_after: int | None
) -> None:
    """The output folder made ready once start-up succeeded (main process): a resume's records past its checkpoint
    removed, an overwritten run removed, the folder created."""
    if resume:
        _truncate_metrics(output_dir / METRICS_FILE, start_step, keep_stop=state.stopped_early)
        if best_after is not None:
            remove_run(output_dir, [BEST_DIR])
            print(
                f"note: {output_dir / BEST_DIR} held the model of step {best_after}, past the checkpoint's step "
                f"{start_step} (the run stopped in between): removed; the best model is chosen again from step "
                f"{start_step + 1} on",
                file=sys.stderr,
            )
    elif overwrite:
        remove_run(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the output folder {output_dir}: {err.strerror}") from None


def _build_first_batches(source: Source, config: TrainConfig, processes: int) -> None:
    """Build the first training batch and the first held-out batch once before a new run clears its output folder:
    data that cannot be batched (a record without a needed field, a sample that cannot be built, an empty stream)
    is refused while an earlier run there is still whole. Sources are pure in the step, so this changes no batch."""
    raw = source.source if isinstance(source, PrefetchingSource) else source
    segments = config.curriculum[0][1] if config.curriculum else None
    raw.train_batch(0, config.batch_size * config.grad_accumulation * processes, segments)
    raw.eval_batch(0, config.eval_batch_size, segments)


def save_model(
    model: RecurrentMemoryModel,
    path: str | os.PathLike,
    accelerator: Accelerator,
    config: TrainConfig,
    save_extras: SaveExtras | None = None,
    replace_whole: bool = False,
) -> None:
    """`save_pretrained` of a trained model and `save_extras(folder)`, from the main process; with FSDP every process
    takes part in gathering the weights, so every process must call it. The weights and extras are swapped in at once
    (a crash leaves the previous folder as it was); replace_whole=True replaces the whole folder, otherwise other
    files already in `path` are kept."""
    weights = fsdp.full_weights(model) if config.fsdp else None
    if accelerator.is_main_process:
        with atomic_directory(path) if replace_whole else nullcontext(Path(path)) as folder:
            save_memory_model(model, folder, state_dict=weights, progress=config.progress, extras=save_extras)
    accelerator.wait_for_everyone()


def _train_step(
    model: RecurrentMemoryModel,
    prepared: torch.nn.Module,
    source: Source,
    config: TrainConfig,
    accelerator: Accelerator,
    step: int,
    num_segments: int | None,
) -> float:
    """Accumulate the gradients of one optimizer step into `.grad` (averaged over processes); returns the mean loss.

    The global batch of this step is batch_size x grad_accumulation x processes samples; micro-batch m of process p
    takes its own slice, so the result does not depend on how the global batch is split (up to summation order).
    Each micro-batch's loss is a mean over its own targets, so it counts with its share of the global batch's targets
    (`_micro_batch_weights`): answers of different lengths weigh what they would in one batch. A micro-batch without
    a target weighs nothing and is skipped."""
    procs, accum = accelerator.num_processes, config.grad_accumulation
    batch = source.train_batch(step, config.batch_size * procs * accum, num_segments)
    size = config.batch_size
    slices = [slice(first, first + size) for first in range(0, batch.input_ids.shape[0], size)]
    # Every process builds the whole global batch, so each knows every micro-batch's weight without communicating.
    plans = _micro_batch_plans(model, batch, slices, config.fsdp)
    shares = _micro_batch_weights(model, batch, slices, plans)
    if config.fsdp:
        _check_same_calls(model, plans, procs, step)
    total = 0.0
    with accelerator.no_sync(prepared):
        for micro in range(accum):
            index = micro * procs + accelerator.process_index
            if shares[index] == 0:
                continue
            part = batch.rows(slices[index]).to(accelerator.device)
            # The gradients are averaged over processes at the end: scaled by procs, a share adds up to itself.
            scale = shares[index] * procs
            with accelerator.autocast():
                out = model.forward_backward(
                    **part.model_inputs(),
                    backward=lambda loss, scale=scale: accelerator.backward(loss * scale),
                    recompute=config.recompute,
                )
            total += float(out.loss) * scale
    if procs > 1:  # sharded parameters' gradients are already reduce-scattered by FSDP
        replicated = [p for p in trainable_parameters(model) if not fsdp.is_sharded(p)]
        average_gradients(replicated)
        total = float(reduce(torch.tensor(total, device=accelerator.device), reduction="mean"))
    return total


def _micro_batch_plans(
    model: RecurrentMemoryModel, batch: Batch, slices: list[slice], fsdp_calls: bool
) -> list[SegmentPlan] | None:
    """The plan `forward` makes of each micro-batch (one with no target included: it weighs nothing), where a causal
    LM's weights or FSDP's call check (`fsdp_calls`) need it; None for a single micro-batch (no accumulation, one
    process) and for a classifier's, which weigh by their sample counts."""
    if len(slices) == 1 or not (model.token_logits or fsdp_calls):
        return None
    plans = []
    for rows in slices:
        part = batch.rows(rows)
        plans.append(model.plan(part.input_ids, part.attention_mask, part.labels, require_targets=False))
    return plans


def _micro_batch_weights(
    model: RecurrentMemoryModel, batch: Batch, slices: list[slice], plans: list[SegmentPlan] | None
) -> list[float]:
    """Each micro-batch's share of the global batch's loss: the number of terms its loss is the mean of over the
    total (samples for a classifier; for a causal LM `loss_terms` of its plan: targets, or (sample, segment) pairs
    with loss_aggregation="segments"). A global batch without a target keeps equal shares, so that `forward` refuses
    it as it refuses one batch without a target."""
    if len(slices) == 1:
        return [1.0]
    if model.token_logits:
        counts = [float(loss_terms(model.config, plan.weights)) for plan in plans]
    else:
        counts = [float(batch.rows(rows).input_ids.shape[0]) for rows in slices]
    total = sum(counts)
    return [count / total for count in counts] if total else [1 / len(slices)] * len(slices)


def _check_same_calls(model: RecurrentMemoryModel, plans: list[SegmentPlan] | None, procs: int, step: int) -> None:
    """Refuse a step in which the processes' micro-batches would make different layer calls (`call_schedule`): with
    sharded layers each call gathers the weights from every process, so they would wait on each other forever.
    Every process decides alike (each holds the whole global batch), so all of them raise together."""
    if plans is None:
        return
    for first in range(0, len(plans), procs):
        together = plans[first : first + procs]
        calls = [model.call_schedule(plan) for plan in together]
        if any(c != calls[0] for c in calls[1:]):
            segments = ", ".join(f"process {p}: {int(plan.num_segments.max())}" for p, plan in enumerate(together))
            raise InputError(
                f"fsdp: at step {step + 1} the processes' samples differ in layout (segments per micro-batch: "
                f"{segments}; or targets in other segments), so their sharded layers would wait on each other "
                "forever (every layer call gathers its weights from all processes); fsdp trains on samples of one "
                "layout (a synthetic task, text cut to one length): train this data without --fsdp"
            )


def _out_of_time(deadline: float | None, accelerator: Accelerator) -> bool:
    """Whether the time limit is up, as the main process sees it (every process stops at the same step)."""
    if deadline is None:
        return False
    up = [time.time() >= deadline]
    if accelerator.num_processes > 1:
        up = broadcast_object_list(up)
    return bool(up[0])


def _check_resume(
    record: dict[str, Any],
    state: TrainerState,
    config: TrainConfig,
    description: str,
    path: Path,
    main: bool,
    data_metric: str,
) -> None:
    """Refuse a resume on other data, behind its checkpoint or with other curriculum stages up to the one it is in;
    say what a changed step count does to the schedule and what changed held-out batches do to the comparisons, and
    whether a run that stopped early trains on under this run's plateau and curriculum (which `state` then records)."""
    if state.data and state.data != description:
        raise InputError(f"cannot resume from {path}: it trained on {state.data!r}, this run reads {description!r}")
    state.data = description
    step = record["step"]
    if step > config.steps:
        raise InputError(f"cannot resume from {path}: it is at step {step}, past this run's {config.steps} steps")
    saved = record.get("train_config", {})
    _check_curriculum(saved, state, config, path, step)
    changed_eval = [
        key
        for key in ("eval_batches", "eval_batch_size")
        if saved.get(key, getattr(config, key)) != getattr(config, key)
    ]
    if changed_eval and main:
        print(
            f"note: {' and '.join(changed_eval)} changed, so the held-out scores from step {step + 1} on come from "
            "other samples than the earlier ones that the curriculum, the plateau stop and save_best compare them with",
            file=sys.stderr,
        )
    saved_steps = saved.get("steps", config.steps)
    if saved_steps != config.steps and config.lr_schedule != "constant" and main:
        print(
            f"note: the {config.lr_schedule} learning-rate schedule now runs over {config.steps} steps instead of "
            f"{saved_steps}, so the rate changes at step {step + 1} (a new run from the checkpoint's model, with its "
            "own schedule, avoids the jump)",
            file=sys.stderr,
        )
    if state.stopped_early:
        state.stopped_early = _plateaued(config, state, step)
        if not state.stopped_early:
            state.stop_reason = ""
        remedy = "without plateau_evals" if state.stop_reason == "ceiling" else "with a larger plateau_evals, or none,"
        if main:
            print(
                f"the run stopped early at step {step}: "
                + (
                    f"{_plateau_reason(config, state, data_metric)}; nothing to train (a resume {remedy} trains on)"
                    if state.stopped_early
                    else "training on, as this run's plateau setting allows"
                ),
                file=sys.stderr,
            )


def _check_same_contents(state: TrainerState, data_contents: dict[str, str], path: Path) -> None:
    """Refuse a resume whose data files have the names the checkpoint recorded but other contents; then add this
    run's to the record (a checkpoint from before contents were recorded, or a file named for the first time, is not
    checked; a resume that names no files, as from Python without data_contents, keeps the record)."""
    changed = [name for name, digest in data_contents.items() if state.data_contents.get(name, digest) != digest]
    if changed:
        raise InputError(
            f"cannot resume from {path}: {'; '.join(changed)}: not the contents it trained on (the same names, other "
            "bytes): resume with the files it read, or start a new run"
        )
    state.data_contents = {**state.data_contents, **data_contents}


def _rate_of_this_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Put the rate this run's schedule gives at the checkpoint's step into the optimizer: the restored optimizer
    holds the rate of the schedule the checkpoint ran under, which another step count changes, and the first step
    after the resume would take it (a linear schedule's last one is 0: a lost step)."""
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": deliberate here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.last_epoch -= 1
        scheduler.step()


def _check_curriculum(saved: dict[str, Any], state: TrainerState, config: TrainConfig, path: Path, step: int) -> None:
    """A resume keeps the curriculum's stages up to the one the checkpoint is in (its state counts them); later
    stages may change: added, moved or dropped. A stage that became the last one counts as begun at the resume."""
    if "curriculum" not in saved:  # a checkpoint from before the setting was recorded
        return
    before = [tuple(stage) for stage in saved["curriculum"] or []]
    now = list(config.curriculum or [])
    if now[: state.stage + 1] != before[: state.stage + 1]:
        raise InputError(
            f"cannot resume from {path}: it is in stage {state.stage + 1} of the curriculum {_stages(before)}, and "
            f"this run's curriculum {_stages(now)} changes the stages up to it; keep them (later stages may change), "
            "or start a new run from its model"
        )
    if before and state.stage == len(now) - 1 < len(before) - 1:
        state.final_stage_from = step


def _stages(curriculum: list[tuple[int, int]]) -> str:
    return ",".join(f"{first}:{segments}" for first, segments in curriculum) if curriculum else "(none)"


def _plateaued(config: TrainConfig, state: TrainerState, step: int) -> bool:
    """Whether a run that stopped early at `step` stays stopped under `config`: it is in the curriculum's last stage
    (a resume may add stages), trained plateau_min_steps at the final number of segments, and its held-out score had
    reached 1.0 or has not improved for plateau_evals evaluations."""
    if config.curriculum and state.stage < len(config.curriculum) - 1:
        return False
    if config.plateau_evals is None or step - state.final_stage_from < config.plateau_min_steps:
        return False
    return state.stop_reason == "ceiling" or state.evals_without_gain >= config.plateau_evals


def _plateau_reason(config: TrainConfig, state: TrainerState, data_metric: str = "accuracy") -> str:
    metric = held_out_metric(config, data_metric)[0]
    if state.stop_reason == "ceiling":
        return f"held-out {metric} reached 1.0"
    count = state.evals_without_gain
    return f"held-out {metric} has not improved for {count} evaluation{'s' if count != 1 else ''}"


def _stage_segments(config: TrainConfig, state: TrainerState, step: int) -> int | None:
    """Number of segments of this step's batch under the curriculum (None: the data's own length). A stage's start
    step is where it begins at the latest; with curriculum_accuracy it may begin earlier (state.stage)."""
    if not config.curriculum:
        return None
    by_step = stage_at(step, config.curriculum)
    if by_step > state.stage:
        _enter_stage(config, state, by_step, step)
    return config.curriculum[state.stage][1]


def _enter_stage(config: TrainConfig, state: TrainerState, stage: int, step: int) -> None:
    """Move the curriculum on to `stage` after `step` steps, noting where its last stage began (plateau_min_steps);
    the plateau count starts afresh there."""
    state.stage = stage
    state.plateau_best, state.evals_without_gain = None, 0
    if stage == len(config.curriculum) - 1:
        state.final_stage_from = step


def _after_eval(
    config: TrainConfig,
    state: TrainerState,
    step: int,
    scores: dict[str, float] | None,
    accelerator: Accelerator,
    data_metric: str = "accuracy",
) -> TrainerState:
    """Curriculum advance, early stopping and save_best's choice, on the held-out score `held_out_metric` names for
    data scored by `data_metric` (the source's), decided by the main process and shared with the others."""
    last_stage = not config.curriculum or state.stage == len(config.curriculum) - 1
    if scores is not None:
        metric, higher = held_out_metric(config, data_metric)
        value = scores[metric]

        def beats(best: float, margin: float = 0.0) -> bool:
            return value > best + margin if higher else value < best - margin

        of = f"{metric} at {config.curriculum[-1][1] if config.curriculum else 'all'} segments"
        if config.save_best and last_stage:
            unbeaten = state.best_score is None or state.best_of != of
            if math.isfinite(value) and (unbeaten or beats(state.best_score)):
                state.best_step, state.best_score, state.best_of = step, value, of
        if config.curriculum_accuracy is not None and not last_stage and value >= config.curriculum_accuracy:
            _enter_stage(config, state, state.stage + 1, step)
        elif last_stage and config.plateau_evals is not None:
            if state.plateau_of not in ("", of):  # ("": a checkpoint from before this was recorded)
                state.plateau_best, state.evals_without_gain = None, 0
            state.plateau_of = of
            if math.isfinite(value) and (state.plateau_best is None or beats(state.plateau_best, _PLATEAU_DELTA)):
                state.plateau_best, state.evals_without_gain = value, 0
            else:
                state.evals_without_gain += 1
            ceiling = higher and value >= 1.0
            trained_long_enough = step - state.final_stage_from >= config.plateau_min_steps
            state.stopped_early = trained_long_enough and (ceiling or state.evals_without_gain >= config.plateau_evals)
            if state.stopped_early:
                state.stop_reason = "ceiling" if ceiling else "plateau"
    if accelerator.num_processes > 1:
        shared = broadcast_object_list([asdict(state)])
        state = TrainerState(**shared[0])
    return state


def _best_after_checkpoint(output_dir: Path, step: int, accelerator: Accelerator) -> int | None:
    """The step of the model in OUTPUT/best when it is later than the checkpoint's `step` (the run stopped between
    saving it and its next checkpoint), else None. Every process reads it before the main process may remove it."""
    if accelerator.is_main_process:
        recover_directory(output_dir / BEST_DIR)  # a best model a crash left set aside is the one to look at
    accelerator.wait_for_everyone()
    try:
        saved = int(json.loads((output_dir / BEST_DIR / BEST_RECORD).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or not readable: nothing to compare
        saved = None
    accelerator.wait_for_everyone()
    return saved if saved is not None and saved > step else None


def held_out_metric(config: TrainConfig, data_metric: str) -> tuple[str, bool]:
    """The held-out score that the curriculum, the plateau stop and save_best read, and whether higher is better:
    curriculum_metric for data with answers (`Source.metric` "accuracy"), the loss for language modelling."""
    return (config.curriculum_metric, True) if data_metric == "accuracy" else ("loss", False)


def _save_best(
    model: RecurrentMemoryModel,
    output_dir: Path,
    accelerator: Accelerator,
    config: TrainConfig,
    state: TrainerState,
    data_metric: str,
    num_segments: int | None,
    save_extras: SaveExtras | None,
) -> None:
    """Replace OUTPUT/best with the model as it is now, whose evaluation is the best so far, its extra files and its
    record, swapped in together (a crash leaves the previous best whole)."""

    def extras_and_record(folder: Path) -> None:
        if save_extras is not None:
            save_extras(folder)
        record = {
            "step": state.best_step,
            "metric": held_out_metric(config, data_metric)[0],
            "score": state.best_score,
            "segments": num_segments,
        }
        write_json_atomic(folder / BEST_RECORD, record)

    save_model(model, output_dir / BEST_DIR, accelerator, config, extras_and_record, replace_whole=True)


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
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train a bare decoder `backbone` on `task` with every sample in one attention window (no memory, one segment):
    a warm-up that gives a small random backbone an in-context skill (e.g. key-value binding, through multi-query
    associative retrieval) before a memory model learns to carry it across segments. The backbone is updated in
    place; returns the logged records, as `train` does (`overwrite` as there)."""
    source = TaskSource(task, seed=config.seed)
    return train(one_window(backbone, task), source, config, output_dir, description=description, overwrite=overwrite)


def _parameter_summary(model: RecurrentMemoryModel, optimizer: torch.optim.Optimizer, trainable: str) -> str:
    """One line: how many parameters train, of how many, by optimizer group (memory / backbone), a classifier's task
    head (in the memory group) counted apart."""
    total = sum(p.numel() for p in model.parameters())
    labels = {"backbone": "backbone LoRA adapters" if trainable == "lora" else "backbone"}
    head = task_head_ids(model)
    groups: dict[str, int] = {}
    for group in optimizer.param_groups:  # a name may have two groups (decayed or not): counted together
        for param in group["params"]:
            label = "task head" if id(param) in head else labels.get(group["name"], group["name"])
            groups[label] = groups.get(label, 0) + param.numel()
    training = sum(groups.values())
    by_group = ", ".join(f"{name} {count:,}" for name, count in groups.items())
    return f"training {training:,} of {total:,} parameters ({100 * training / max(total, 1):.2f}%): {by_group}"


def _log(path: Path, history: list[dict[str, Any]], writer: Any, record: dict[str, Any]) -> None:
    history.append(record)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["step"])


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log. A last line cut off by a crash or a full disk is left out (it was being logged
    after the last checkpoint, so a resume logs it again); a damaged line before the last is an InputError."""
    if not path.exists():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if index == len(lines) - 1:  # the last record, cut off by a crash
                break
            raise InputError(f"{path} line {number} is not a JSON record: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise InputError(f'{path} line {number} is not a training log record (no integer "step")')
        records.append(record)
    return records


def _truncate_metrics(path: Path, step: int, keep_stop: bool = False) -> None:
    """Drop records logged after the checkpoint we resume from (they will be logged again), and the record of why
    the run stopped there (a time limit, a plateau) unless it is still stopped (`keep_stop`): it trains on."""
    kept = [r for r in _read_metrics(path) if r["step"] <= step and (keep_stop or "stopped" not in r)]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def tensorboard_writer_class(setting: str = "TensorBoard logging (TrainConfig.tensorboard)") -> Any:
    """TensorBoard's SummaryWriter class; an InputError naming `setting` when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise InputError(f"{setting} needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter


def checkpoint_step(output_dir: str | os.PathLike) -> int | None:
    """The step of the checkpoint in `output_dir`, or None where none can be read (a resume names what is wrong)."""
    try:
        record = json.loads((Path(output_dir) / CHECKPOINT_DIR / TRAINER_STATE).read_text())
        return int(record["step"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def run_entries(output_dir: str | os.PathLike) -> list[str]:
    """The names of what a training run wrote that lie in `output_dir`: metrics.jsonl, checkpoint/ (also one that a
    crash left set aside), model/, best/ and tensorboard/. Empty when the folder holds no run."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        name
        for name in (METRICS_FILE, CHECKPOINT_DIR, MODEL_DIR, BEST_DIR, TENSORBOARD_DIR)
        if (output_dir / name).exists()
    ]
    if CHECKPOINT_DIR not in found and checkpoint_exists(output_dir):
        found.insert(1, CHECKPOINT_DIR)
    return found


def remove_run(output_dir: str | os.PathLike, folders: Iterable[str] | None = None) -> None:
    """Remove the run in `output_dir` (`run_entries`), or only its `folders` (e.g. [BEST_DIR]); other files stay. Each
    folder is first renamed to a name that `rmt.files.recover_directory` clears, so a crash half-way leaves no
    half-removed checkpoint that --resume would try to read."""
    output_dir = Path(output_dir)
    whole = folders is None
    for name in (CHECKPOINT_DIR, MODEL_DIR, BEST_DIR, TENSORBOARD_DIR) if whole else folders:
        path = output_dir / name
        recover_directory(path)  # a folder set aside by a crashed save is part of the run too
        if path.is_dir():
            doomed = path.with_name(f".{name}.tmp-{os.getpid()}-removed")
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
            shutil.rmtree(doomed)
        elif path.exists():
            path.unlink()
    if whole:
        (output_dir / METRICS_FILE).unlink(missing_ok=True)
