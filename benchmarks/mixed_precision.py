"""bf16 autocast against fp32 training on the CPU: speed side by side in one process, and the accuracy each reaches.

    python -m benchmarks.mixed_precision --threads 1 --output benchmarks/results/mixed_precision-cpu.json

1. Speed: a 4-layer, width-256 Llama-shaped RMT (16 memory tokens, segments of 256 tokens, 3 segments, batch 4) takes
   training steps (streaming forward_backward + AdamW) in fp32 and under bf16 autocast, alternately in the same
   process (so a busy machine slows both alike); the table gives the median steps/s of each and their ratio.
2. Accuracy: the `rmt demo` setting (copy-24 in 3 segments, 2 layers, width 64) trained with the trainer twice, fp32
   and `mixed_precision="bf16"`, same seed and steps: held-out answer accuracy and steps/s of each.
Weights, optimizer state and memory states stay fp32 under autocast (the trainer's test checks the memory state).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator

from benchmarks.common import RESULTS_DIR, device_name, run_module, time_in_turns, torch_threads, write_json
from rmt import RMTConfig
from rmt.build import memory_model, random_backbone
from rmt.data.sources import TaskSource
from rmt.data.tasks import CopyTask
from rmt.demo import DemoSettings, demo_model, demo_train_config
from rmt.train.evaluation import evaluate
from rmt.train.loop import train


def speed(rounds: int, warmup: int) -> dict:
    """Median seconds per training step, fp32 and bf16 autocast, steps taken in turns (`time_in_turns`)."""
    torch.manual_seed(0)
    backbone = random_backbone("llama", vocab_size=1000, num_layers=4, hidden_size=256, num_heads=4, max_positions=512)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=16, segment_size=256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 1000, (4, 3 * 256), generator=torch.Generator().manual_seed(0))

    def step(dtype: torch.dtype | None) -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            model.forward_backward(ids, labels=ids)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    runs = {"fp32": functools.partial(step, None), "bf16": functools.partial(step, torch.bfloat16)}
    times = time_in_turns(runs, rounds, warmup)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {
        "model": "llama, 4 layers, width 256, 4 heads, RMT 16 memory tokens, 3 segments of 256, batch 4",
        "rounds": rounds,
        "seconds_per_step": {"fp32": fp32, "bf16": bf16},
        "steps_per_second": {"fp32": 1 / fp32, "bf16": 1 / bf16},
        "speedup": fp32 / bf16,
        "all_seconds": times,
    }


def demo_worker(precision: str, steps: int | None) -> dict:
    """The demo's RMT trained with one precision ("no" or "bf16"): held-out accuracy and speed. Runs in its own
    process, because Accelerate fixes the mixed-precision setting once per process."""
    settings = DemoSettings(plateau_evals=None)  # the same number of steps for both precisions
    if steps:
        settings.steps = steps
    task = CopyTask(length=settings.length)
    model = demo_model(settings, settings.memory_tokens)
    config = replace(demo_train_config(settings, progress=False), mixed_precision=precision)
    source = TaskSource(task, seed=settings.seed)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        train(model, source, config, folder, accelerator=Accelerator(cpu=True, mixed_precision=precision))
        seconds = time.perf_counter() - started
    # In the precision it trained in (before a47008f the trainer left its autocast on the model's forward).
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        scores = evaluate(model, source, batches=4, batch_size=256)
    return {
        "task": f"copy-{settings.length}, {settings.segments} segments (the demo)",
        "steps": settings.steps,
        "answer_accuracy": scores["accuracy"],
        "exact_match": scores["exact_match"],
        "train_seconds": seconds,
        "steps_per_second": settings.steps / seconds,
    }


def demo_accuracy(steps: int | None, threads: int) -> dict:
    """The demo trained in fp32 and with bf16 autocast, one child process each, same seed and steps."""
    results: dict = {}
    for precision in ("no", "bf16"):
        worker = ["--demo-worker", precision, "--threads", str(threads)]
        if steps:
            worker += ["--demo-steps", str(steps)]
        done = run_module("benchmarks.mixed_precision", worker)
        if done.returncode != 0:
            raise SystemExit(f"demo with mixed precision {precision!r} failed:\n{done.stderr[-3000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        results["task"], results["steps"] = run.pop("task"), run.pop("steps")
        results["fp32" if precision == "no" else "bf16"] = run
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps of each precision (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first (default: 2)")
    parser.add_argument("--demo-steps", type=int, default=None, help="demo training steps (default: the demo's)")
    parser.add_argument("--skip-demo", action="store_true", help="measure speed only")
    parser.add_argument("--output", default=str(RESULTS_DIR / "mixed_precision-cpu.json"), help="result file")
    parser.add_argument("--demo-worker", choices=("no", "bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        if args.demo_worker:
            print(json.dumps(demo_worker(args.demo_worker, args.demo_steps)))
            return 0
        record = {"device": device_name("cpu"), "threads": args.threads}
        record["speed"] = speed(args.rounds, args.warmup)
        write_json(Path(args.output), record)
        if not args.skip_demo:
            record["demo"] = demo_accuracy(args.demo_steps, args.threads)
            write_json(Path(args.output), record)
    print(format_table(record))
    return 0


def format_table(record: dict) -> str:
    s = record["speed"]
    lines = [
        "| setting | fp32 steps/s | bf16 steps/s | bf16 / fp32 |",
        "|---|---|---|---|",
        f"| {s['model']} | {s['steps_per_second']['fp32']:.3f} | {s['steps_per_second']['bf16']:.3f} | "
        f"{s['speedup']:.2f}x |",
    ]
    if "demo" in record:
        d = record["demo"]
        fp32, bf16 = d["fp32"], d["bf16"]
        lines.append(
            f"| {d['task']}, {d['steps']} steps | {fp32['steps_per_second']:.2f} (acc {fp32['answer_accuracy']:.3f}) "
            f"| {bf16['steps_per_second']:.2f} (acc {bf16['answer_accuracy']:.3f}) | "
            f"{bf16['steps_per_second'] / fp32['steps_per_second']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
