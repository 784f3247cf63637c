"""Reproduce the RMT paper's algorithmic-task comparisons on CPU: memory vs no memory vs Transformer-XL.

Run from the repository root:
    python -m benchmarks.reproduce --list                          # the grid, one cell per line
    python -m benchmarks.reproduce --cells copy:9:rmt,copy:9:trxl  # any cells (TASK:SEGMENTS:KIND)
    python -m benchmarks.reproduce --smoke                         # 2 tiny cells with few steps
    python -m benchmarks.reproduce --threads 1                     # the full grid
    python -m benchmarks.reproduce --report --output DIR           # rewrite DIR's table and plots, run nothing
    python -m benchmarks.reproduce --resume --output DIR           # finish a partly done grid in DIR

This file holds the grid and the cell runner; the table and plots are in `benchmarks/reproduce_report.py`, the
paper's numbers (with the citation) in `benchmarks/published/rmt_paper.json`.

A cell trains one model on one task cut into a number of segments, with `rmt.train.loop.train`, and evaluates it
on held-out samples. Model kinds, all the same `RMTForCausalLM` with a different `RMTConfig`:
    rmt              M memory tokens                    (num_memory_tokens=M)
    no_memory        each segment alone                 (num_memory_tokens=0)
    trxl             Transformer-XL, one-segment cache  (num_memory_tokens=0, xl_cache_tokens=T)
    memtrxl          memory tokens + that cache         (num_memory_tokens=M, xl_cache_tokens=T)
    memory_at_start  read slots only, no write slots    (read_memory_only=True): the paper's control
(T = one segment, as in the paper; --xl-cache-segments N makes it N segments.)
Tasks (rmt.data.tasks, the paper's formats): copy-24, reverse-24, associative retrieval (4 pairs; 4 filler tokens
in front for 5 segments, since 11 tokens cannot be cut into 5 equal segments), quadratic equations (step-by-step
solution, exact match), and detect-and-memorize for extrapolation: trained with a curriculum up to N segments,
evaluated at N, 2N, 4N, 8N (cell `detect_memorize:8:rmt`).

Associative retrieval needs a backbone that binds a value to its key, and this one did not learn that from the
one-query task alone in our attempts (no result file of those attempts is kept). So each of its cells first warms
the bare backbone up in context on multi-query retrieval (8 queries of the same pairs per sample, one window,
initial weight std 0.1), which learns binding after a plateau, and then trains the cell's model kind from it; every
kind starts from the same warm-up, and the table reports what it reached.

Metric (held-out answer accuracy, 512 samples): multi-token answers (copy, reverse, quadratic), longer than a
segment in most cells, are generated greedily through the memory from the prompt (`RMTForCausalLM.generate`), so an
early mistake costs the tokens after it and a model cannot copy from its own teacher-forced answer; single-token
answers (associative retrieval, detect-and-memorize) are the argmax at the answer position. Per-token accuracy
everywhere except quadratic (full-answer exact match). Teacher-forced numbers are in results.json as well, and
so is the generated accuracy by the segment each answer token sits in (a table of it in results.md), which shows how
far back a model reaches.

Sizes are CPU-sized, smaller than the paper's (both listed in the table): a Llama-architecture backbone (rotary
positions, so the Tr-XL cache positions run on without a bound) of 2 layers, width 64, 1000-1600 training steps of
batch 32 (associative retrieval: 4000-5000 steps of batch 128). Memory size = segment length and cache = one segment,
as in the paper's table. With 2 layers a one-segment Tr-XL cache reaches about 2 segments back (each layer's cached
keys already saw the cache before them), against 4 in the paper's 4-layer model, so our Tr-XL falls off at fewer
segments than the paper's.

Runtime: the Runtimes table of benchmarks/results/reproduce/results.md gives each cell's warm-up, training and
evaluation time on a shared 2-core CPU (--threads 1), and the total. To use several cores, run one process per core
into the same --output, each with its share of the cells (`--list` prints them): each adds its cells to
results.json under a file lock, re-reading the file first, so none overwrites another's.

Resuming: each cell writes a checkpoint every tenth of its steps. With --resume, the cells already in results.json
(with the same settings) are skipped, and a cell whose run was interrupted continues from its last checkpoint with
the losses of a run that never stopped. --init-backbone FOLDER starts each cell from the backbone of a saved model
with fresh memory parameters, for example a segmented cell from the single-window model; --init-model FOLDER starts
each cell from a whole saved model of its own kind, memory included, to train a finished cell further.

Output (in --output, default runs/reproduce): results.json (every cell run there so far: single-cell runs
accumulate, --fresh starts over), results.md (the table next to the published numbers, with runtimes), one PNG per
task (accuracy vs number of segments, one line per model kind, published numbers as hollow markers) and
extrapolation.png; per-cell training logs under cells/. The committed full-grid results are in
benchmarks/results/reproduce/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import reproduce_report
from benchmarks.common import results_lock, torch_threads
from benchmarks.reproduce_setup import KINDS, PAPER, BackbonePretraining, ExtrapolationSetup, TaskSetup, published
from rmt import RecurrentMemoryModel, RMTConfig, RMTForCausalLM
from rmt.build import memory_model, random_backbone
from rmt.data.tasks import IGNORE_INDEX, Task, make_task
from rmt.errors import InputError
from rmt.files import recover_directory
from rmt.train.checkpoint import CHECKPOINT_DIR, TRAINER_STATE, checkpoint_exists
from rmt.train.loop import TaskSource, TrainConfig, evaluate, one_window, train, train_in_context
from rmt.train.schedules import linear_curriculum


def _associative(segments: int) -> Task:
    # 4 pairs, 11 tokens, cut into 2 or 3 segments. 11 tokens cannot be cut into 5 equal segments, so 5 segments
    # get 4 filler tokens in front (15 tokens, size 3): the query and its answer then sit alone in the last segment.
    return make_task("associative_retrieval", num_pairs=4, lead_padding=4 if segments == 5 else 0)


def _multi_query(task: Task) -> Task:
    """The cell's retrieval task with 8 queries per sample: the warm-up that teaches the backbone key-value binding."""
    return make_task("associative_retrieval", num_pairs=task.num_pairs, num_queries=8)


def _no_memory_ceilings(name: str, segments: tuple[int, ...]) -> str:
    """What no memory can reach on copy or reverse of 24 at each number of segments: the answer tokens whose source
    lies in their own segment right, the others at chance (`answers_within_a_segment`)."""
    task = make_task(name, length=24)
    ceilings = [task.no_memory_ceiling(task.segment_size_for(n)) for n in segments]
    return (
        "no memory can reach at most "
        + " / ".join(f"{c:.2f}" for c in ceilings)
        + f" at {' / '.join(map(str, segments))} segments (those answer tokens whose source lies in their own segment "
        "right, chance for the rest)"
    )


TASKS: dict[str, TaskSetup] = {
    "copy": TaskSetup(
        title="copy-24",
        make=lambda s: make_task("copy", length=24),
        chance=0.1,
        metric="accuracy",
        cells=[(s, k) for s in (3, 6, 9) for k in ("rmt", "no_memory", "trxl")]
        + [(6, "memtrxl"), (6, "memory_at_start")],
        published=published("copy"),
        steps=1000,
        more_steps={9: 1600},
        paper_model=PAPER["models"]["copy"],
        note="memory-at-start control: at chance in the authors' runs; " + _no_memory_ceilings("copy", (3, 6, 9)),
    ),
    "reverse": TaskSetup(
        title="reverse-24",
        make=lambda s: make_task("reverse", length=24),
        chance=0.1,
        metric="accuracy",
        cells=[(s, k) for s in (2, 4, 6) for k in ("rmt", "no_memory", "trxl")],
        published=published("reverse"),
        steps=1000,
        paper_model=PAPER["models"]["reverse"],
        note="no memory scores above chance with short segments: next to START the reversed answer mirrors the "
        "source tokens just before it, inside the same segment; " + _no_memory_ceilings("reverse", (2, 4, 6)),
    ),
    "associative_retrieval": TaskSetup(
        title="associative retrieval",
        make=_associative,
        chance=0.1,
        metric="accuracy",
        # (1, no_memory): all 12 tokens in one window, the in-context ceiling of the backbone at this budget.
        cells=[(1, "no_memory")] + [(s, k) for s in (2, 3, 5) for k in ("rmt", "no_memory", "trxl")],
        published=published("associative_retrieval"),
        steps=4000,
        more_steps={5: 5000},
        batch_size=128,
        learning_rate=2e-3,
        init_std=0.1,
        pretraining=BackbonePretraining(
            make=_multi_query,
            steps=2000,
            learning_rate=1e-3,
            description="multi-query retrieval (the same pairs, 8 queries per sample) in one window",
        ),
        paper_model=PAPER["models"]["associative_retrieval"],
        note="5 segments: 4 filler tokens in front (15 tokens, segments of 3: _ _ _ | _ k v | k v k | v k v | ? k v), "
        "as 11 tokens cannot be cut into 5 equal segments; the query and its answer sit alone in the last segment "
        "(until the filler was a token of its own, it was PAD, which the attention mask dropped: those cells ran as "
        "4 segments). "
        "Trained on the one-query task alone, this backbone did not learn to bind a value to its key in our "
        "attempts, so every cell here starts from the same backbone warmed up in context (see Setup). "
        "1 segment (no memory, the whole sample in one window) is the in-context ceiling",
    ),
    "quadratic": TaskSetup(
        title="quadratic equations",
        make=lambda s: make_task("quadratic"),
        chance=0.0,
        metric="exact_match",
        cells=[(1, "no_memory"), (6, "rmt"), (6, "trxl")],
        published=published("quadratic"),
        steps=1500,
        layers=2,
        hidden=64,
        memory_tokens=lambda segment_size: 10,
        memory_note="10 tokens",
        paper_model=PAPER["models"]["quadratic"],
        note="full-answer exact match of the generated solution",
    ),
}
EXTRAPOLATION = ExtrapolationSetup()
SMOKE_CELLS = ["copy:3:rmt", "copy:3:no_memory"]
SMOKE_STEPS, SMOKE_EVAL_SAMPLES = 60, 64


@dataclass(frozen=True)
class Cell:
    task: str
    segments: int
    kind: str

    @property
    def key(self) -> str:
        return f"{self.task}:{self.segments}:{self.kind}"


def parse_cell(text: str) -> Cell:
    """'copy:6:rmt' -> Cell('copy', 6, 'rmt'); raises ValueError naming what is wrong."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"a cell is TASK:SEGMENTS:KIND (e.g. copy:6:rmt), got {text!r}")
    task, segments, kind = parts
    if task not in (*TASKS, "detect_memorize"):
        raise ValueError(f"unknown task {task!r} in {text!r}; tasks: {', '.join([*TASKS, 'detect_memorize'])}")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} in {text!r}; kinds: {', '.join(KINDS)}")
    try:
        number = int(segments)
    except ValueError as err:
        raise ValueError(f"SEGMENTS must be an integer in {text!r}") from err
    if number < 1:
        raise ValueError(f"SEGMENTS must be >= 1 in {text!r}")
    return Cell(task, number, kind)


def grid() -> list[Cell]:
    """Every cell of the full grid."""
    cells = [Cell(name, s, k) for name, setup in TASKS.items() for s, k in setup.cells]
    return cells + [Cell("detect_memorize", 8, "rmt")]


CACHE_KINDS = ("trxl", "memtrxl")  # the kinds with a Transformer-XL cache


def rmt_config(
    kind: str, segment_size: int, memory_tokens: int, xl_recompute: bool = False, xl_cache_segments: int = 1
) -> RMTConfig:
    """The RMTConfig of a model kind (`xl_cache_segments` segments of cache for the Tr-XL kinds, one in the paper;
    with `xl_recompute` the cache's keys/values are recomputed from cached layer inputs, the original
    Transformer-XL's gradients)."""
    memory = 0 if kind in ("no_memory", "trxl") else memory_tokens
    cache = segment_size * xl_cache_segments if kind in CACHE_KINDS else 0
    return RMTConfig(
        num_memory_tokens=memory,
        segment_size=segment_size,
        xl_cache_tokens=cache,
        xl_cache_recompute=xl_recompute and cache > 0,
        read_memory_only=kind == "memory_at_start",
    )


def build_model(
    setup: TaskSetup | ExtrapolationSetup, config: RMTConfig, vocab_size: int, seed: int, min_positions: int = 0
) -> RecurrentMemoryModel:
    """A random Llama-architecture backbone of the setup's size in the memory model that `config` asks for."""
    backbone = random_backbone(
        "llama",
        vocab_size=vocab_size,
        num_layers=setup.layers,
        hidden_size=setup.hidden,
        num_heads=setup.heads,
        max_positions=max(min_positions, config.segment_size + 2 * config.num_memory_tokens),
        seed=seed,
        init_std=getattr(setup, "init_std", None),
    )
    return memory_model(backbone, config)


def load_start_weights(model: RecurrentMemoryModel, folder: Path, whole_model: bool) -> dict[str, Any]:
    """Start `model` from a saved memory model (a cell's `checkpoint/model` folder): its backbone only, the memory
    parameters keeping their fresh initialization (--init-backbone), or the whole model, memory included, to train a
    cell further (--init-model; the saved model must be of the same kind, memory and segment size). Returns what the
    record says about the start: the folder and, when the folder sits in a trainer checkpoint, the steps it had
    trained."""
    option = "--init-model" if whole_model else "--init-backbone"
    source = RecurrentMemoryModel.from_pretrained(folder)
    if whole_model:
        saved_config, own_config = source.config.to_dict(), model.config.to_dict()
        differing = sorted(
            k for k in own_config.keys() | saved_config.keys() if own_config.get(k) != saved_config.get(k)
        )
        if differing:
            raise InputError(
                f"{option} {folder}: it is another kind of memory model than this cell's ({', '.join(differing)} "
                "differ); use --init-backbone to take its backbone only"
            )
    target, weights = (model, source.state_dict()) if whole_model else (model.backbone, source.backbone.state_dict())
    own = target.state_dict()
    mismatched = sorted(
        k for k in own.keys() | weights.keys() if k not in own or k not in weights or own[k].shape != weights[k].shape
    )
    if mismatched:
        raise InputError(
            f"{option} {folder}: its backbone does not match this cell's (layers, width, heads or vocabulary "
            f"differ; first mismatched tensor: {mismatched[0]})"
        )
    target.load_state_dict(weights)
    start: dict[str, Any] = {"folder": str(folder)}
    state_file = folder.parent / TRAINER_STATE
    if state_file.exists():
        start["steps"] = json.loads(state_file.read_text())["step"]
    return start


def pretrain_backbone(
    backbone: torch.nn.Module, task: Task, setup: TaskSetup, seed: int, output_dir: Path, progress: bool
) -> dict[str, Any]:
    """Run the setup's in-context warm-up on `backbone` (in place); returns its record, with the backbone's
    accuracy on the cell's own task with the whole sample in one window afterwards."""
    pretraining = setup.pretraining
    warmup_task = pretraining.make(task)
    started = time.time()
    warmup_setup = replace(setup, learning_rate=pretraining.learning_rate, batch_size=pretraining.batch_size)
    # constant learning rate, no weight decay: binding appears in a sudden jump after a plateau, which a decayed
    # learning rate delays
    train_config = replace(
        _train_config(warmup_setup, pretraining.steps, seed, progress), weight_decay=0.0, min_lr_factor=1.0
    )
    # a warm-up runs whole: one an interrupted run left is replaced
    train_in_context(backbone, warmup_task, train_config, output_dir, description="in-context warm-up", overwrite=True)
    seconds = time.time() - started
    batches, batch_size = max(1, setup.eval_samples // 256), min(256, setup.eval_samples)
    in_context = evaluate(one_window(backbone, task), TaskSource(task, seed=seed), batches, batch_size)
    return {
        "description": pretraining.description,
        "sequence_length": warmup_task.sequence_length,
        "steps": pretraining.steps,
        "batch_size": pretraining.batch_size,
        "learning_rate": pretraining.learning_rate,
        "seconds": round(seconds, 1),
        "in_context_accuracy": in_context["accuracy"],
    }


@torch.no_grad()
def generated_scores(model: RMTForCausalLM, task: Task, samples: int, batch_size: int) -> dict[str, Any]:
    """Per-token accuracy and exact match of answers generated greedily from the prompt (held-out samples), and the
    per-token accuracy of the answer tokens in each segment (`accuracy_by_segment`: segment number -> accuracy, for
    the segments that hold answer tokens): it shows how far back a model reaches, since later answer tokens of copy
    and reverse have their source further back."""
    hits = total = exact = count = 0
    segment_size = model.config.segment_size
    start, length = task.answer_start, task.answer_length
    segment_of_answer = torch.arange(start, start + length) // segment_size  # [answer_length], 0-based
    segment_hits = torch.zeros(int(segment_of_answer.max()) + 1, dtype=torch.long)
    segment_total = torch.zeros_like(segment_hits)
    for index in range((samples + batch_size - 1) // batch_size):
        rows = min(batch_size, samples - index * batch_size)
        batch = TaskSource(task).eval_batch(index, rows)
        # Answers have a fixed length: no early stop at a backbone's end-of-sequence token, which would shorten them.
        prompt = batch.input_ids[:, :start].to(model.device)
        out = model.generate(prompt, max_new_tokens=length, eos_token_id=None, return_dict_in_generate=False)
        generated = out[:, start:].cpu()  # [b, answer_length]
        target = batch.labels[:, start : start + length]
        scored = target != IGNORE_INDEX
        right = (generated == target) & scored
        hits += int(right.sum())
        total += int(scored.sum())
        exact += int((right | ~scored).all(dim=1).sum())
        count += rows
        segment_hits.index_add_(0, segment_of_answer, right.sum(dim=0))
        segment_total.index_add_(0, segment_of_answer, scored.sum(dim=0))
    by_segment = {
        str(number + 1): segment_hits[number].item() / segment_total[number].item()
        for number in range(len(segment_total))
        if segment_total[number] > 0
    }
    return {"accuracy": hits / total, "exact_match": exact / count, "accuracy_by_segment": by_segment}


def cell_folder(output_dir: Path, cell: Cell) -> Path:
    """Where a cell's training logs and checkpoint go (OUTPUT/cells/TASK-SEGMENTS-KIND; seeds in subfolders)."""
    return output_dir / "cells" / cell.key.replace(":", "-")


def _train_config(setup: TaskSetup | ExtrapolationSetup, steps: int, seed: int, progress: bool, curriculum=None):
    return TrainConfig(
        steps=steps,
        batch_size=setup.batch_size,
        learning_rate=setup.learning_rate,
        warmup_steps=min(setup.warmup_steps, max(1, steps // 5)),
        eval_every=max(1, steps // 5),
        eval_batches=1,
        eval_batch_size=min(128, setup.eval_samples),
        log_every=max(1, min(50, steps // 10)),
        checkpoint_every=max(1, steps // 10),  # what --resume continues from after a crash
        seed=seed,
        curriculum=curriculum,
        progress=progress,
    )


def cell_setup(cell: Cell, overrides: dict[str, Any]) -> tuple[TaskSetup | ExtrapolationSetup, int]:
    """The setup a cell runs with (the task's, with the non-None `overrides`) and its number of training steps.
    `pretraining_steps` sets the steps of the task's in-context warm-up (a task without one ignores it)."""
    base = EXTRAPOLATION if cell.task == "detect_memorize" else TASKS[cell.task]
    overrides = dict(overrides)
    pretraining_steps = overrides.pop("pretraining_steps", None)
    setup = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if pretraining_steps is not None and getattr(setup, "pretraining", None) is not None:
        setup = replace(setup, pretraining=replace(setup.pretraining, steps=pretraining_steps))
    if cell.task == "detect_memorize":
        return setup, setup.steps
    if overrides.get("steps") is not None:
        return setup, overrides["steps"]
    return setup, setup.more_steps.get(cell.segments, setup.steps)


def settings_differing(
    record: dict[str, Any],
    cell: Cell,
    overrides: dict[str, Any],
    init_backbone: Any,
    init_model: Any = None,
    xl_recompute: bool = False,
    xl_cache_segments: int = 1,
) -> list[str]:
    """The settings in which a recorded cell differs from the run `overrides` would make (--resume skips a recorded
    cell only when this is empty)."""
    setup, steps = cell_setup(cell, overrides)
    wanted = {
        "layers": (record["model"].get("layers"), setup.layers),
        "hidden": (record["model"].get("hidden"), setup.hidden),
        "heads": (record["model"].get("heads"), setup.heads),
        "steps": (record["train"].get("steps"), steps),
        "batch_size": (record["train"].get("batch_size"), setup.batch_size),
        "learning_rate": (record["train"].get("learning_rate"), setup.learning_rate),
        "pretraining_steps": (  # none for a cell started from a saved model (--init-backbone, --init-model)
            (record.get("pretraining") or {}).get("steps"),
            setup.pretraining.steps
            if getattr(setup, "pretraining", None) is not None and not (init_backbone or init_model)
            else None,
        ),
        "xl_cache_recompute": (  # records made before the option existed used the stored keys/values
            record["rmt_config"].get("xl_cache_recompute", False),
            xl_recompute and cell.kind in CACHE_KINDS,
        ),
        "xl_cache_tokens": (
            record["rmt_config"].get("xl_cache_tokens", 0),
            record["rmt_config"]["segment_size"] * xl_cache_segments if cell.kind in CACHE_KINDS else 0,
        ),
    }
    for name, folder in (("init_backbone", init_backbone), ("init_model", init_model)):
        wanted[name] = (record.get(name, {}).get("folder"), None if folder is None else str(folder))
    return [name for name, (recorded, planned) in wanted.items() if recorded != planned]


def train_cell(
    model: RecurrentMemoryModel, source: TaskSource, config: TrainConfig, folder: Path, description: str, resume: bool
) -> tuple[list[dict[str, Any]], int]:
    """`train` into `folder`; with `resume`, continue from the checkpoint an interrupted run left there (refused when
    that run had other settings). Returns the training log and the step it started from."""
    if not (resume and checkpoint_exists(folder)):  # the cell starts over, replacing what an earlier run left
        return train(model, source, config, folder, description=description, overwrite=True), 0
    recover_directory(folder / CHECKPOINT_DIR)  # a checkpoint a crash left set aside, as `train` would restore it
    state = json.loads((folder / CHECKPOINT_DIR / TRAINER_STATE).read_text())
    saved, wanted = state["train_config"], asdict(config)
    differing = [k for k in wanted if k != "progress" and json.dumps(saved.get(k)) != json.dumps(wanted[k])]
    if differing:
        raise InputError(
            f"--resume: {folder} holds a checkpoint of a run with other settings ({', '.join(differing)} differ); "
            "run it with the same options, or delete that folder to start the cell over"
        )
    return train(model, source, config, folder, resume=True, description=description), state["step"]


def _check_resumed_warmup(cell_dir: Path, steps: int) -> None:
    """A resumed cell continues a model trained from the warm-up its first run made: refuse a warm-up of another
    length, which the record would name while the checkpoint holds the other's model."""
    state = cell_dir / "pretraining" / CHECKPOINT_DIR / TRAINER_STATE
    if not state.exists():
        raise InputError(
            f"--resume: {cell_dir} holds a checkpoint but no record of its warm-up ({state}): delete that folder to "
            "start the cell over"
        )
    made = json.loads(state.read_text())["train_config"]["steps"]
    if made != steps:
        raise InputError(
            f"--resume: {cell_dir} holds a checkpoint trained after a warm-up of {made} steps, not {steps}: give "
            f"--pretraining-steps {made}, or delete that folder to start the cell over"
        )


def run_cell(
    cell: Cell,
    output_dir: Path,
    seed: int = 0,
    progress: bool = True,
    init_backbone: Path | None = None,
    resume: bool = False,
    init_model: Path | None = None,
    xl_recompute: bool = False,
    xl_cache_segments: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and evaluate one cell; returns its results record. `overrides` replace fields of the task's setup
    (e.g. steps=60, learning_rate=1e-3, eval_samples=64); None values are ignored. `init_backbone`: a saved memory
    model whose backbone the cell starts from instead of a random one (the task's in-context warm-up is skipped).
    `init_model`: a saved model of the cell's own kind that the cell starts from whole, memory parameters included,
    to train it further. `resume`: continue the cell's training from the checkpoint an interrupted run of it left in
    its folder. `xl_recompute`: the Transformer-XL kinds recompute their cache's keys/values from cached layer
    inputs (RMTConfig.xl_cache_recompute). `xl_cache_segments`: their cache holds this many segments (the paper: 1)."""
    if xl_cache_segments < 1:
        raise InputError(f"--xl-cache-segments must be >= 1, got {xl_cache_segments}")
    if init_backbone is not None and init_model is not None:
        raise InputError("--init-backbone and --init-model both name a start; give one of them")
    torch.manual_seed(seed)
    setup, steps = cell_setup(cell, overrides)
    if cell.task == "detect_memorize":
        return _run_extrapolation(cell, setup, output_dir, seed, progress, resume)
    task = setup.make(cell.segments)
    segment_size = task.segment_size_for(cell.segments)
    memory_tokens = setup.memory_tokens(segment_size)
    config = rmt_config(cell.kind, segment_size, memory_tokens, xl_recompute, xl_cache_segments)
    warmup_length = setup.pretraining.make(task).sequence_length if setup.pretraining else 0
    model = build_model(setup, config, task.vocab_size, seed, min_positions=warmup_length)
    cell_dir = cell_folder(output_dir, cell)
    if seed:  # one folder per seed, so a second seed's run does not replace the first one's log and checkpoint
        cell_dir = cell_dir / f"seed{seed}"
    pretraining = backbone_start = model_start = None
    if init_backbone is not None:
        backbone_start = load_start_weights(model, Path(init_backbone), whole_model=False)
    elif init_model is not None:
        model_start = load_start_weights(model, Path(init_model), whole_model=True)
    elif setup.pretraining is not None:  # on --resume too: deterministic, it rebuilds the record; the checkpoint wins
        if resume and checkpoint_exists(cell_dir):
            _check_resumed_warmup(cell_dir, setup.pretraining.steps)
        pretraining = pretrain_backbone(model.backbone, task, setup, seed, cell_dir / "pretraining", progress)
    source = TaskSource(task, seed=seed)
    started = time.time()
    history, resumed_from = [], 0  # steps=0: evaluate the starting model as it is
    if steps:
        history, resumed_from = train_cell(
            model, source, _train_config(setup, steps, seed, progress), cell_dir, cell.key, resume
        )
    train_seconds = time.time() - started
    batches = max(1, setup.eval_samples // 256)
    teacher = evaluate(model, source, batches=batches, batch_size=min(256, setup.eval_samples))
    record: dict[str, Any] = {
        "cell": cell.key,
        "seed": seed,
        "task": cell.task,
        "segments": cell.segments,
        "kind": cell.kind,
        "segment_size": segment_size,
        "sequence_length": task.sequence_length,
        "answer_length": task.answer_length,
        "rmt_config": config.to_dict(),
        "model": {
            "family": "llama",
            "layers": setup.layers,
            "hidden": setup.hidden,
            "heads": setup.heads,
            "init_std": setup.init_std,
        },
        "train": {
            "steps": steps,
            "batch_size": setup.batch_size,
            "learning_rate": setup.learning_rate,
        },
        "teacher_forced": teacher,
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": next((r["loss"] for r in reversed(history) if "loss" in r), None),
    }
    if task.answer_length > 1:
        eval_started = time.time()
        record["generated"] = generated_scores(model, task, setup.eval_samples, 256)
        record["eval_seconds"] = round(time.time() - eval_started, 1)
        record["score_source"] = "generated"
        record["score"] = record["generated"][setup.metric]
    else:
        record["score_source"] = "teacher_forced"
        record["score"] = teacher[setup.metric]
    record["metric"] = setup.metric
    record["published"] = setup.published.get((cell.segments, cell.kind))
    if pretraining is not None:
        record["pretraining"] = pretraining
    if backbone_start is not None:
        record["init_backbone"] = backbone_start
    if model_start is not None:
        record["init_model"] = model_start
    if resumed_from:
        record["resumed_from_step"] = resumed_from  # train_seconds counts the resumed run only
    return record


def _run_extrapolation(
    cell: Cell, setup: ExtrapolationSetup, output_dir: Path, seed: int, progress: bool, resume: bool = False
) -> dict[str, Any]:
    """Train one model per seed (seed, seed + 1, ...), evaluate each at every multiple of the trained count, and
    report the seed with the best accuracy at the trained count itself: selection on in-distribution held-out
    data, never on the extrapolation lengths. Every seed's numbers stay in the record."""
    size, top = setup.segment_size, cell.segments

    def factory(segments: int) -> Task:
        return make_task("detect_memorize", num_segments=segments, segment_size=size)

    config = rmt_config(cell.kind, size, setup.memory_tokens)
    steps = setup.steps
    curriculum = linear_curriculum(1, top, steps, hold_fraction=0.3)
    per_seed: dict[str, dict[str, Any]] = {}
    train_seconds = eval_seconds = 0.0
    for run_seed in range(seed, seed + setup.seeds):
        torch.manual_seed(run_seed)
        model = build_model(setup, config, factory(1).vocab_size, run_seed)
        source = TaskSource(factory, seed=run_seed)
        started = time.time()
        train_cell(
            model,
            source,
            _train_config(setup, steps, run_seed, progress, curriculum),
            cell_folder(output_dir, cell) / f"seed{run_seed}",
            f"{cell.key} seed {run_seed}",
            resume,
        )
        train_seconds += time.time() - started
        started = time.time()
        scores = {}
        for multiple in setup.eval_multiples:
            segments = top * multiple
            # Longer inputs cost more per sample: keep the evaluated token count about constant.
            batch_size = max(32, min(256, setup.eval_samples * 8 // segments))
            batches = max(1, setup.eval_samples // batch_size)
            scores[str(segments)] = evaluate(model, source, batches, batch_size, num_segments=segments)
        eval_seconds += time.time() - started
        per_seed[str(run_seed)] = scores
    selected = max(per_seed, key=lambda s: per_seed[s][str(top)]["accuracy"])
    scores = per_seed[selected]
    return {
        "cell": cell.key,
        "task": cell.task,
        "segments": top,
        "kind": cell.kind,
        "segment_size": size,
        "rmt_config": config.to_dict(),
        "model": {"family": "llama", "layers": setup.layers, "hidden": setup.hidden, "heads": setup.heads},
        "train": {
            "steps": steps,
            "batch_size": setup.batch_size,
            "learning_rate": setup.learning_rate,
            "curriculum": curriculum,
        },
        "extrapolation": {n: s["accuracy"] for n, s in scores.items()},
        "seeds": {s: {n: r["accuracy"] for n, r in runs.items()} for s, runs in per_seed.items()},
        "selected_seed": int(selected),
        "teacher_forced": scores[str(top)],
        "score_source": "teacher_forced",
        "metric": "accuracy",
        "score": scores[str(top)]["accuracy"],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "published": None,
    }


def record_cell(output_dir: Path, key: str, record: dict[str, Any]) -> None:
    """Add one cell's record to OUTPUT/results.json and rewrite results.md, under the folder's lock: several
    processes may share an output folder, and each adds its cell to what is on disk now."""
    with results_lock(output_dir):
        results = reproduce_report.load_results(output_dir / "results.json")
        results["cells"][key] = record
        reproduce_report.write_report(results, output_dir, TASKS, EXTRAPOLATION, plots=False)


def write_full_report(output_dir: Path) -> None:
    """results.md and the plots from OUTPUT/results.json as it is now (under the folder's lock)."""
    with results_lock(output_dir):
        results = reproduce_report.load_results(output_dir / "results.json")
        reproduce_report.write_report(results, output_dir, TASKS, EXTRAPOLATION)


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reproduce",
        description=__doc__,
        epilog="Cells: " + ", ".join(c.key for c in grid()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cells", help="comma-separated cells TASK:SEGMENTS:KIND (default: the full grid)")
    parser.add_argument("--smoke", action="store_true", help=f"run {' and '.join(SMOKE_CELLS)} with few steps")
    parser.add_argument("--list", action="store_true", help="print the grid's cells and exit")
    parser.add_argument(
        "--report", action="store_true", help="rewrite results.md and the plots from OUTPUT/results.json, run nothing"
    )
    parser.add_argument("--output", default="runs/reproduce", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per cell; 0 evaluates each cell's starting model, e.g. what an --init-backbone gives "
        "before training (default: per task)",
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per task)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: per task)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; a cell run with seed N > 0 is recorded as TASK:SEGMENTS:KIND@N next to seed 0's, and the "
        "table shows the mean and each seed (default: %(default)s)",
    )
    parser.add_argument("--layers", type=int, default=None, help="backbone layers (default: per task)")
    parser.add_argument("--hidden", type=int, default=None, help="backbone width (default: per task)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: per task)")
    parser.add_argument(
        "--pretraining-steps",
        type=int,
        default=None,
        metavar="N",
        help="steps of the in-context warm-up of the tasks that have one (associative retrieval; default: per task: "
        "2000, which 2 layers need; at 6 layers of width 64 seed 0 learnt binding between 4800 and 6400 steps, seed 2 "
        "by 3200, seed 1 not in 16000)",
    )
    parser.add_argument(
        "--init-backbone",
        metavar="FOLDER",
        help="start each cell's backbone from a saved model (e.g. another cell's cells/KEY/checkpoint/model) instead "
        "of a random one; memory parameters start fresh and the task's warm-up is skipped",
    )
    parser.add_argument(
        "--init-model",
        metavar="FOLDER",
        help="start each cell from a saved model of its own kind, memory parameters included (e.g. the cell's own "
        "cells/KEY/checkpoint/model), to train it further; the task's warm-up is skipped",
    )
    parser.add_argument(
        "--xl-recompute",
        action="store_true",
        help="Transformer-XL kinds (trxl, memtrxl) as in the original Transformer-XL: the cache's keys/values are "
        "recomputed from cached layer inputs, so the key/value projections also learn from attention to the cache "
        "(RMTConfig.xl_cache_recompute; default: a cache of detached keys/values)",
    )
    parser.add_argument(
        "--xl-cache-segments",
        type=int,
        default=1,
        metavar="N",
        help="Transformer-XL kinds: the cache holds the last N segments (default: %(default)s, as in the paper)",
    )
    parser.add_argument("--fresh", action="store_true", help="drop earlier results in OUTPUT/results.json")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish a partly done grid: skip the cells OUTPUT/results.json already has (with the same settings) and "
        "continue an interrupted cell from its last checkpoint (written every tenth of its steps)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often as fast for these tiny models and behaves "
        "better on a shared machine)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(c.key for c in grid()))
        return 0
    output = Path(args.output)
    if args.report:
        if not (output / "results.json").exists():
            raise SystemExit(f"benchmarks.reproduce: no results to report in {output} (results.json is missing)")
        write_full_report(output)
        print(f"wrote {output / 'results.md'} and plots")
        return 0
    if args.smoke and args.cells:
        raise SystemExit("benchmarks.reproduce: --smoke runs its own cells; drop --cells")
    if args.steps is not None and args.steps < 0:
        raise SystemExit(f"benchmarks.reproduce: --steps must be >= 0, got {args.steps}")
    if args.pretraining_steps is not None and args.pretraining_steps < 1:
        raise SystemExit(f"benchmarks.reproduce: --pretraining-steps must be >= 1, got {args.pretraining_steps}")
    if args.pretraining_steps is not None and (args.init_backbone or args.init_model):
        raise SystemExit(
            "benchmarks.reproduce: --pretraining-steps sets the warm-up, which a cell started from a "
            "saved model (--init-backbone, --init-model) skips; give one of them"
        )
    if args.init_backbone and args.init_model:
        raise SystemExit("benchmarks.reproduce: --init-backbone and --init-model both name a start; give one of them")
    if args.fresh and args.resume:
        raise SystemExit("benchmarks.reproduce: --fresh drops the results that --resume continues; use one of them")
    cells = [parse_cell(c) for c in (SMOKE_CELLS if args.smoke else args.cells.split(",") if args.cells else [])]
    cells = cells or grid()
    steps = args.steps if args.steps is not None else (SMOKE_STEPS if args.smoke else None)
    output.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        with results_lock(output):
            reproduce_report.write_report({"cells": {}}, output, TASKS, EXTRAPOLATION, plots=False)
    overrides = {
        "steps": steps,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "eval_samples": SMOKE_EVAL_SAMPLES if args.smoke else None,
        "layers": args.layers,
        "hidden": args.hidden,
        "heads": args.heads,
        "pretraining_steps": args.pretraining_steps,
    }
    recorded = reproduce_report.load_results(output / "results.json")["cells"] if args.resume else {}
    with torch_threads(args.threads):
        for cell in cells:
            key = cell.key if args.seed == 0 else f"{cell.key}@{args.seed}"
            if key in recorded:
                differing = settings_differing(
                    recorded[key],
                    cell,
                    overrides,
                    args.init_backbone,
                    args.init_model,
                    args.xl_recompute,
                    args.xl_cache_segments,
                )
                if differing:
                    raise SystemExit(
                        f"benchmarks.reproduce: --resume: {key} is in {output / 'results.json'} with other settings "
                        f"({', '.join(differing)} differ); run it without --resume to replace it"
                    )
                print(f"{key}: in {output / 'results.json'} already, skipped", flush=True)
                continue
            record = run_cell(
                cell,
                output,
                args.seed,
                not args.no_progress,
                args.init_backbone,
                args.resume,
                init_model=args.init_model,
                xl_recompute=args.xl_recompute,
                xl_cache_segments=args.xl_cache_segments,
                **overrides,
            )
            # After every cell, so an interrupted grid keeps what it finished (plots once, at the end: slow).
            record_cell(output, key, record)
            print(
                f"{cell.key}: {record['score']:.3f} ({record['metric']}, {record['score_source']}) "
                f"in {record['train_seconds']:.0f} s",
                flush=True,
            )
        write_full_report(output)
    print(f"wrote {output / 'results.json'}, {output / 'results.md'} and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
