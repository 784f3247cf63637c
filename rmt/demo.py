"""`rmt demo`: what memory buys, in about a minute on a CPU.

Trains the same small transformer twice on copy of 24 symbols (source, start token, source twice), cut into 3
segments so the source sits in the first segment and the copies in the next two: once with RMT memory tokens,
once without memory (each segment alone). Without memory only 3 of the 48 answer tokens have their source in view
(the first, next to the source; the second copy's first two, next to the first copy), so that model can reach at
most 0.16 (chance 0.10). Each model trains until its held-out accuracy stops improving (no gain above 0.005 over 3
evaluations 50 steps apart, or 1.0 reached), at most 600 steps, and is then scored on held-out samples that the
early stop did not see. Prints a table of held-out answer accuracy, writes `results.json` and `accuracy.png`
(accuracy over training steps, one line per model) to the output folder, and shows one decoded example.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rmt.build import memory_model, random_backbone
from rmt.config import RMTConfig
from rmt.data.batch import Batch
from rmt.data.tasks import CopyTask
from rmt.errors import InputError
from rmt.files import atomic_directory, check_output_folder, write_atomic
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.plotting import pyplot, save_figure
from rmt.train.loop import TaskSource, TrainConfig, evaluate, train


@dataclass
class DemoSettings:
    """Sizes of the demo run (defaults: measured to reach the bar on a 2-core CPU within the time budget)."""

    length: int = 24
    segments: int = 3
    family: str = "llama"
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    memory_tokens: int = 24
    steps: int = 600  # at most: a model stops once held-out accuracy has plateaued
    plateau_evals: int | None = 3
    batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 100
    eval_every: int = 50
    seed: int = 0


def run_demo(output_dir: str | os.PathLike, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Train RMT and the no-memory baseline; write results.json and accuracy.png; return the results."""
    settings = settings or DemoSettings()
    check_output_folder(output_dir, "output folder")  # empty text (an unset shell variable) would be the working folder
    output_dir = Path(output_dir)
    _check_not_another_run(output_dir)
    # Written into a new folder that replaces the output folder whole once both models are trained and scored: an
    # interrupted rerun leaves the earlier demo as it was, not its results beside a half-made run.
    with atomic_directory(output_dir, owned=_DEMO_OWNED) as new:
        return _run_demo(new, settings, progress)


def _run_demo(output_dir: Path, settings: DemoSettings, progress: bool) -> dict:
    task = CopyTask(length=settings.length)
    segment_size = task.segment_size_for(settings.segments)
    source = TaskSource(task, seed=settings.seed)
    train_config = demo_train_config(settings, progress)
    runs: dict[str, Any] = {}
    for name, memory_tokens in (("RMT", settings.memory_tokens), ("no memory", 0)):
        model = demo_model(settings, memory_tokens)
        started = time.time()
        history = train(model, source, train_config, output_dir / name.replace(" ", "_"), description=name)
        seconds = time.time() - started
        final = evaluate(model, UnwatchedHeldOut(task, train_config.eval_batches), batches=4, batch_size=256)
        runs[name] = {
            "memory_tokens": memory_tokens,
            "steps": max(r["step"] for r in history),
            "answer_accuracy": final["accuracy"],
            "exact_match": final["exact_match"],
            "train_seconds": round(seconds, 1),
            "curve": [(r["step"], r["eval_accuracy"]) for r in history if "eval_accuracy" in r],
            "example": _example(model, task),
        }
    results = {
        "task": f"copy-{settings.length}",
        "segments": settings.segments,
        "segment_size": segment_size,
        "settings": asdict(settings),
        "chance_accuracy": 1 / task.num_symbols,
        "no_memory_ceiling": task.no_memory_ceiling(segment_size),
        "models": runs,
    }
    write_atomic(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    plot_curves(results, output_dir / "accuracy.png")
    return results


class UnwatchedHeldOut(TaskSource):
    """The task's held-out batches after the first `watched` ones, which the trainer's evaluations (and so its early
    stop) read: the final score is then of samples that decided nothing."""

    def __init__(self, task: CopyTask, watched: int) -> None:
        super().__init__(task)
        self.watched = watched

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        return super().eval_batch(self.watched + index, batch_size, num_segments)


# What a demo writes into its output folder: a rerun replaces them (and everything under the two run folders).
_DEMO_ENTRIES = frozenset({"RMT", "no_memory", "results.json", "accuracy.png"})
_DEMO_OWNED = (*_DEMO_ENTRIES, "RMT/*", "no_memory/*")


def _check_not_another_run(output_dir: Path) -> None:
    """Refuse an output folder that holds anything but an earlier demo's results (another command's run or
    results): the demo replaces its own files there, and would mix them with the others."""
    if not output_dir.is_dir():
        return
    # Hidden entries pass: a file manager's (.DS_Store), or the temporary files of a write a crash cut short.
    others = sorted(e.name for e in output_dir.iterdir() if e.name not in _DEMO_ENTRIES and not e.name.startswith("."))
    results = output_dir / "results.json"
    if not others and results.is_file():
        try:
            earlier = json.loads(results.read_text())
        except (OSError, ValueError):  # unreadable or cut short (older demos wrote it in place): replaced
            return
        if not (isinstance(earlier, dict) and str(earlier.get("task", "")).startswith("copy-") and "models" in earlier):
            others = ["results.json (not a demo's)"]
    if others:
        raise InputError(
            f"output folder {output_dir} holds what is not an earlier demo's ({', '.join(others[:5])}): the demo "
            "replaces its own results there, and would mix them with these; give another output folder"
        )


def demo_model(settings: DemoSettings, memory_tokens: int) -> RecurrentMemoryModel:
    """The demo's small random transformer with `memory_tokens` RMT memory tokens (0: no memory)."""
    task = CopyTask(length=settings.length)
    segment_size = task.segment_size_for(settings.segments)
    backbone = random_backbone(
        settings.family,
        vocab_size=task.vocab_size,
        num_layers=settings.num_layers,
        hidden_size=settings.hidden_size,
        num_heads=settings.num_heads,
        max_positions=segment_size + 2 * settings.memory_tokens,
        seed=settings.seed,
    )
    return memory_model(backbone, RMTConfig(num_memory_tokens=memory_tokens, segment_size=segment_size))


def demo_train_config(settings: DemoSettings, progress: bool = True) -> TrainConfig:
    """How the demo trains each model (with early stopping on a plateau)."""
    return TrainConfig(
        steps=settings.steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        eval_every=settings.eval_every,
        eval_batches=2,
        eval_batch_size=128,
        log_every=50,
        checkpoint_every=0,
        seed=settings.seed,
        plateau_evals=settings.plateau_evals,
        progress=progress,
    )


def _example(model: RecurrentMemoryModel, task: CopyTask) -> dict[str, str]:
    batch = task.batch(1, seed=12345)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids.to(model.device)).logits[0].cpu()
    start = task.answer_start
    predicted = logits[start - 1 : -1].argmax(-1)  # position t predicts token t + 1
    return {
        "source": task.decode(batch.input_ids[0, : task.length]),
        "expected": task.decode(batch.input_ids[0, start:]),
        "predicted": task.decode(predicted),
    }


def plot_curves(results: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in results["models"].items():
        steps, accuracy = zip(*run["curve"], strict=True)
        ax.plot(steps, accuracy, marker="o", markersize=3, label=name)
    ax.axhline(results["chance_accuracy"], color="gray", linestyle="--", linewidth=1, label="chance")
    ax.axhline(results["no_memory_ceiling"], color="gray", linestyle=":", linewidth=1, label="without memory, at most")
    ax.set_xlabel("training step")
    ax.set_ylabel("answer accuracy (held out)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{results['task']} in {results['segments']} segments of {results['segment_size']} tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def format_table(results: dict) -> str:
    lines = [
        f"{results['task']}, {results['segments']} segments of {results['segment_size']} tokens "
        f"(chance {results['chance_accuracy']:.2f}; without memory at most {results['no_memory_ceiling']:.2f})",
        f"{'model':<12} {'memory':>6} {'answer acc':>10} {'exact match':>11} {'steps':>6} {'train s':>8}",
    ]
    for name, run in results["models"].items():
        lines.append(
            f"{name:<12} {run['memory_tokens']:>6} {run['answer_accuracy']:>10.3f} {run['exact_match']:>11.3f} "
            f"{run['steps']:>6} {run['train_seconds']:>8.0f}"
        )
    return "\n".join(lines)
