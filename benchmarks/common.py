"""What the benchmark scripts share: atomic writes of result files, the lock on a results folder that several
processes fill, torch's CPU thread count, the resident memory of this process, timing several variants in turns,
the command that starts a benchmark's worker subprocess (`python -m benchmarks.<name>`, importable from any
working directory), and the command-line flags several scripts take alike (device, ARMT's shape).

Not a script: the benchmarks import it (`from benchmarks import common`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from rmt import resident
from rmt.files import write_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
PUBLISHED_DIR = REPO_ROOT / "benchmarks" / "published"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` whole (`rmt.files.write_atomic`), so a crash never leaves it half-written."""
    write_atomic(path, text)


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, written atomically."""
    write_atomically(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def results_lock(folder: Path) -> Iterator[None]:
    """Hold the lock of a results folder (FOLDER/.results.lock) that several processes may write into: whoever holds
    it reads the results file, adds to it and writes it back, so no process overwrites another's additions."""
    with FileLock(folder / ".results.lock"):
        yield


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch on `threads` CPU threads inside the block (None or 0: leave torch's setting), then restore."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_turns(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name) for `rounds` rounds in which `names` take turns, their order reversed every other round: a
    change of the machine's load (another process, clock frequency) falls on all of them alike, so measurements
    taken in this order compare fairly on a shared machine."""
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            yield round_index, name


def time_in_turns(runs: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 0) -> dict[str, list[float]]:
    """Seconds of each run in every round, the runs taking turns (`in_turns`). The first `warmup` rounds run but
    are not recorded."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index, name in in_turns(list(runs), warmup + rounds):
        started = time.perf_counter()
        runs[name]()
        if round_index >= warmup:
            times[name].append(time.perf_counter() - started)
    return times


def rss_bytes() -> int:
    """The resident size of this process now (`rmt.resident.rss_bytes`); an error where it cannot be read."""
    return _measured(resident.rss_bytes(), "the resident size")


def reset_peak_rss() -> None:
    """Start the peak resident size over from the current size (`rmt.resident.reset_peak_rss`), so that a later
    `peak_rss_bytes` is that of the work after this call; an error where that cannot be done, since a benchmark's
    peak would then include loading the model."""
    if not resident.reset_peak_rss():
        raise RuntimeError("cannot reset the peak resident size here: benchmarks need Linux's /proc/self/clear_refs")


def peak_rss_bytes() -> int:
    """The peak resident size of this process since `reset_peak_rss` (`rmt.resident.peak_rss_bytes`)."""
    return _measured(resident.peak_rss_bytes(), "the peak resident size")


def _measured(value: int | None, what: str) -> int:
    if value is None:
        raise RuntimeError(f"cannot read {what} of this process here: the benchmarks need Linux's /proc")
    return value


def run_module(
    module: str, args: list[str], env: Mapping[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m MODULE ARGS...` with this interpreter and capture its output. The repository root goes first on
    the child's PYTHONPATH, so `benchmarks.<name>` imports whatever the working directory."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} cores)"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device, CUDA when this machine has it."""
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device, cuda when available (default: %(default)s)",
    )


def add_armt_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--segment-size, --memory-tokens and --d-mem of the ARMT wrapper the speed and precision scripts build."""
    parser.add_argument(
        "--segment-size", type=int, default=1024, help="ARMT input tokens per segment (default: %(default)s)"
    )
    parser.add_argument("--memory-tokens", type=int, default=16, help="ARMT memory tokens (default: %(default)s)")
    parser.add_argument(
        "--d-mem",
        type=int,
        default=64,
        help="size of ARMT's associative memory keys before the DPFP map (default: %(default)s)",
    )
