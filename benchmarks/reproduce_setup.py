"""The settings of the RMT paper reproduction (benchmarks/reproduce.py): how each task's cells are built, trained and
scored, and the paper's published numbers (benchmarks/published/rmt_paper.json). Shared by the grid runner and its
report (benchmarks/reproduce_report.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import PUBLISHED_DIR
from rmt.data.tasks import Task

KINDS = ("rmt", "no_memory", "trxl", "memtrxl", "memory_at_start")
PUBLISHED_FILE = PUBLISHED_DIR / "rmt_paper.json"
PAPER: dict[str, Any] = json.loads(PUBLISHED_FILE.read_text())


def published(task: str) -> dict[tuple[int, str], float]:
    """(segments, kind) -> the RMT paper's number for `task`, from benchmarks/published/rmt_paper.json."""
    return {(entry["segments"], entry["kind"]): entry["value"] for entry in PAPER["tasks"][task]["values"]}


@dataclass
class BackbonePretraining:
    """Train the bare backbone in context (each sample in one window, no memory) before a cell trains its model.

    Every kind of the task starts from the same warmed-up backbone, so the comparison between kinds is unchanged:
    the warm-up gives the backbone a skill it needs inside a window, the cell then shows what memory adds."""

    make: Callable[[Task], Task]  # the cell's task -> the warm-up task
    steps: int
    learning_rate: float = 1e-3
    batch_size: int = 32
    description: str = ""


@dataclass
class TaskSetup:
    """How the cells of one task are built, trained and scored."""

    title: str
    make: Callable[[int], Task]  # number of segments -> task
    chance: float
    metric: str  # "accuracy" (per answer token) or "exact_match" (whole answer)
    cells: list[tuple[int, str]]  # (segments, kind) of the full grid
    published: dict[tuple[int, str], float]  # (segments, kind) -> the paper's number (`published(task)`)
    steps: int
    more_steps: dict[int, int] = field(default_factory=dict)  # segments -> steps, where `steps` is not enough
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    init_std: float | None = None  # backbone's initial weight std; None: HF's 0.02
    pretraining: BackbonePretraining | None = None
    memory_tokens: Callable[[int], int] = lambda segment_size: segment_size  # memory size = segment length
    memory_note: str = "segment length"
    eval_samples: int = 512
    paper_model: str = ""
    note: str = ""


@dataclass
class ExtrapolationSetup:
    """detect_memorize trained with a curriculum up to `train_segments`, evaluated at several multiples."""

    title: str = "detect-and-memorize: extrapolation"
    segment_size: int = 16
    memory_tokens: int = 4
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    eval_multiples: tuple[int, ...] = (1, 2, 4, 8)
    eval_samples: int = 512
    chance: float = 1 / 6
    bars: dict[int, float] = field(default_factory=lambda: {2: 0.9, 4: 0.8})  # eval multiple -> issue's bar
    # Training is all-or-nothing per seed at this size (the seed rows of the extrapolation table in
    # benchmarks/results/reproduce/results.md): train this many seeds and keep the best at the trained length (every
    # seed is reported).
    seeds: int = 3
