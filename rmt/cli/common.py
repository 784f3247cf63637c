"""What the subcommands share: runtime flags (threads, device, progress bars) and building tasks and models."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rmt.errors import InputError

if TYPE_CHECKING:
    import torch

    from rmt.data.tasks import Task

TASK_NAMES = ("copy", "reverse", "associative_retrieval", "quadratic", "detect_memorize")
TASK_SIZE_DEFAULTS = {"copy": 24, "reverse": 24, "associative_retrieval": 4, "detect_memorize": 64}
DEFAULT_SEGMENTS = 3
FACTS_HELP = (
    "BABILong: facts per story, N or MIN-MAX (default: the bAbI task's range; qa1 with 1 is the 1M-token RMT paper's "
    "single-fact task)"
)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 on the CPU, where a second thread gains little on small models and "
        "stalls when another process shares the cores; set it to the number of idle cores for a large model)",
    )
    group.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: %(default)s)"
    )
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def apply_runtime(args: argparse.Namespace) -> torch.device:
    """Set threads and progress bars from the runtime flags; return the device to use."""
    import torch

    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else default_threads(device)
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    return device


def default_threads(device: torch.device) -> int:
    """The thread policy: one thread on the CPU (measured in the README: with a second busy process on a 2-core
    machine, two OpenMP threads spin against it and the demo ran 4x slower than with one)."""
    import torch

    return 1 if device.type == "cpu" else torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: this torch build or machine has no CUDA device")
    return torch.device(name)


def check_seed(seed: int) -> None:
    """Refuse a --seed that torch.manual_seed cannot take (a traceback from deep inside torch otherwise)."""
    if not 0 <= seed < 2**32:
        raise InputError(f"--seed must be in [0, 2**32), got {seed}")


def flags_given(args: argparse.Namespace, flags: Sequence[str]) -> list[str]:
    """Which of `flags` the command line gave (as `--flag VALUE` or `--flag=VALUE`), from `args.command_line` (set by
    `rmt.cli.main`; none when the handler is called without it). The commands refuse abbreviated flags, so whole
    names are all a command line can hold."""
    words = getattr(args, "command_line", [])
    return [flag for flag in flags if any(word == flag or word.startswith(flag + "=") for word in words)]


def flag_with_value(args: argparse.Namespace, name: str) -> str:
    """A flag as given on the command line, with its value ("--seed 3"; a switch alone: "--resume")."""
    value = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    return flag if value is True else f"{flag} {value}"


def add_task_arguments(
    parser: argparse.ArgumentParser | Any,
    default_task: str | None = "copy",
    segments_given: bool = False,
    segments_help: str | None = None,
    segments_default: str = str(DEFAULT_SEGMENTS),
) -> None:
    """--task, --task-size and --segments. segments_given=True: --segments defaults to None, so that the command can
    tell whether it was given (None stands for DEFAULT_SEGMENTS). `segments_help` replaces --segments' description
    (for a command that reads it differently)."""
    shown = default_task or "copy, when no --data is given"
    parser.add_argument("--task", default=default_task, choices=TASK_NAMES, help=f"synthetic task (default: {shown})")
    parser.add_argument(
        "--task-size",
        type=int,
        default=None,
        help="copy/reverse: number of source symbols (24); associative_retrieval: key-value pairs (4); "
        "detect_memorize: tokens per segment (64)",
    )
    parser.add_argument(
        "--segments",
        type=int,
        default=None if segments_given else DEFAULT_SEGMENTS,
        help=(
            segments_help
            or "number of segments the input is cut into (synthetic tasks; BABILong training: samples of this many "
            "segments when there is no curriculum)"
        )
        + f" (default: {segments_default})",
    )


def task_from_flags(name: str, size: int | None, segments: int) -> Task:
    """The synthetic task of the --task/--task-size/--segments flags."""
    from rmt.data.tasks import make_task as build

    if size is not None and size <= 0:
        raise InputError(f"--task-size must be > 0, got {size}")
    if size is not None and name not in TASK_SIZE_DEFAULTS:
        raise InputError(f"--task-size applies to {', '.join(TASK_SIZE_DEFAULTS)}; {name} has one size")
    size = size if size is not None else TASK_SIZE_DEFAULTS.get(name)
    if name in ("copy", "reverse"):
        return build(name, length=size)
    if name == "associative_retrieval":
        return build(name, num_pairs=size)
    if name == "detect_memorize":
        return build(name, num_segments=segments, segment_size=size)
    return build(name)
