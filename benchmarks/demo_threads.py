"""How long `rmt demo` takes with 1 and 2 torch threads, on an idle machine and next to one busy process: the
evidence for the command line's thread policy (one thread on the CPU by default).

    python -m benchmarks.demo_threads --output benchmarks/results/demo_threads-cpu.json

Each condition runs the whole demo in a fresh process (`rmt demo --threads N`); "busy" starts a process that keeps
one core fully used (a Python loop) for the duration; `--passive` also runs 2 threads with OMP_WAIT_POLICY=PASSIVE
(OpenMP threads sleep instead of spinning while they wait). Results are added to --output, keyed by condition. Run
it when nothing else uses the machine: the idle numbers assume the cores are free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, device_name, write_json

BUSY_LOOP = "while True: pass"


def run_demo(threads: int, busy: bool, passive: bool = False) -> dict:
    load = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"} if passive else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            command = [sys.executable, "-m", "rmt.cli", "demo", "--threads", str(threads), "--no-progress"]
            done = subprocess.run([*command, "--output", folder], capture_output=True, text=True, check=True, env=env)
            seconds = time.perf_counter() - started
            results = json.loads((Path(folder) / "results.json").read_text())
    finally:
        if load is not None:
            load.kill()
            load.wait()
    return {
        "threads": threads,
        "busy_process": busy,
        "omp_wait_policy": "PASSIVE" if passive else "default",
        "wall_seconds": round(seconds, 1),
        "models": {
            name: {k: run[k] for k in ("answer_accuracy", "steps", "train_seconds")}
            for name, run in results["models"].items()
        },
        "table": done.stdout.strip().split("\n\n")[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "demo_threads-cpu.json"), help="result file")
    parser.add_argument("--passive", action="store_true", help="only the 2-thread runs with OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args(argv)
    path = Path(args.output)
    record = json.loads(path.read_text()) if path.exists() else {}
    runs = {json.dumps([r["threads"], r["busy_process"], r["omp_wait_policy"]]): r for r in record.get("runs", [])}
    conditions = [(2, busy, True) for busy in (False, True)] if args.passive else []
    conditions = conditions or [(threads, busy, False) for busy in (False, True) for threads in args.threads]
    for threads, busy, passive in conditions:
        run = run_demo(threads, busy, passive)
        runs[json.dumps([threads, busy, run["omp_wait_policy"]])] = run
        print(f"threads {threads}, busy process {busy}, passive {passive}: {run['wall_seconds']} s", flush=True)
    record = {"device": device_name("cpu"), "cpus": os.cpu_count(), "runs": list(runs.values())}
    write_json(path, record)
    print("| threads | OMP wait policy | busy process | demo wall s |\n|---|---|---|---|")
    for run in record["runs"]:
        busy = "yes" if run["busy_process"] else "no"
        print(f"| {run['threads']} | {run['omp_wait_policy']} | {busy} | {run['wall_seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
