"""Training on two processes against one on this machine: steps per second and the loss curve, same global batch.

    python -m benchmarks.processes --steps 200 --output benchmarks/results/processes-cpu.json

Runs `rmt train` (copy-24 in 3 segments, a 4-layer width-128 Llama with 24 memory tokens, global batch 32) once as one
process and once as two (`torchrun --nproc_per_node 2`, gloo, 16 samples each), one torch thread per process, and
compares the wall time and the logged losses step by step (the two runs see the same samples).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, device_name, write_json

MODEL = ["--task", "copy", "--task-size", "24", "--segments", "3", "--family", "llama", "--layers", "4"]
MODEL += ["--hidden", "128", "--heads", "4", "--memory-tokens", "24", "--lr", "3e-3"]


def run(processes: int, steps: int, global_batch: int, folder: Path) -> dict:
    args = [*MODEL, "--steps", str(steps), "--batch-size", str(global_batch // processes), "--log-every", "1"]
    args += ["--eval-every", str(steps), "--checkpoint-every", "0", "--threads", "1", "--no-progress"]
    args += ["--output", str(folder)]
    if processes == 1:
        command = [sys.executable, "-m", "rmt.cli", "train", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torchrun = str(Path(sys.executable).parent / "torchrun")
        command = [torchrun, "--nproc_per_node", str(processes), "--master-port", str(port)]
        command += ["-m", "rmt.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    train_seconds = max(r["elapsed_s"] for r in log if "elapsed_s" in r)
    return {
        "processes": processes,
        "wall_seconds": seconds,
        "train_seconds": train_seconds,
        "steps_per_second": steps / train_seconds,
        "losses": losses,
    }


def compare_losses(one: list[float], two: list[float]) -> dict:
    """How long the two loss curves agree and where they end. The all-reduce sums the two halves of the batch in
    another order than one process does, so the curves are equal to rounding at first and drift apart once training
    amplifies rounding (a fast-learning phase); the drift is not an error in the gradients."""
    differences = [abs(a - b) for a, b in zip(one, two, strict=True)]
    equal_until = next((step for step, d in enumerate(differences) if d > 1e-4), len(differences))
    return {
        "max_loss_difference": max(differences),
        "steps_equal_within_1e-4": equal_until,
        "final_losses": [one[-1], two[-1]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (default: %(default)s)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "processes-cpu.json"), help="result file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        runs = {n: run(n, args.steps, args.batch_size, Path(folder) / f"p{n}") for n in (1, 2)}
    one, two = runs[1], runs[2]
    record = {
        "device": device_name("cpu"),
        "cpus": os.cpu_count(),
        "setting": " ".join(MODEL) + f", global batch {args.batch_size}, {args.steps} steps, 1 thread per process",
        "runs": runs,
        "speedup": two["steps_per_second"] / one["steps_per_second"],
        **compare_losses(one["losses"], two["losses"]),
    }
    write_json(Path(args.output), record)
    print("| processes | steps/s | train s |\n|---|---|---|")
    for run_record in runs.values():
        print(
            f"| {run_record['processes']} | {run_record['steps_per_second']:.2f} | {run_record['train_seconds']:.0f} |"
        )
    print(
        f"two / one: {record['speedup']:.2f}x; logged losses equal within 1e-4 up to step "
        f"{record['steps_equal_within_1e-4']}, largest difference {record['max_loss_difference']:.2e}, "
        f"final losses {record['final_losses'][0]:.4f} and {record['final_losses'][1]:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
