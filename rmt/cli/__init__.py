"""The `rmt` command: `rmt demo`, `rmt train`, `rmt eval`, `rmt babilong`, `rmt generate`.

Each subcommand (one module here) maps onto plain functions of the library; the memory and training flags are
generated from `RMTConfig` and `TrainConfig` (`rmt.cli.options`), so the help text and the library never disagree.
Problems with the input (a bad value, a missing or damaged file, a flag argparse cannot parse) print one line and
exit with status 2, as does a command other than `rmt train` launched as several processes (torchrun); running out
of memory (the CPU's or a GPU's) prints one line with the size asked for, and a write the machine refuses (a full
disk or quota, a read-only file system, a file this user may not write) one line, naming the file where the system
names it (torch.save's own failure to write one line too), both with status 1; anything else is a bug and shows its
traceback. rmt's own warnings print as one line too.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

from rmt import __version__
from rmt.cli import babilong, demo, evaluate, generate, train
from rmt.errors import InputError, RMTWarning

COMMANDS = (demo, train, evaluate, babilong, generate)
# The commands that share their work among the processes of torchrun or accelerate launch; the others would each do
# all of it and write the same files at once.
MULTI_PROCESS_COMMANDS = ("train",)
# What stops a write for reasons of the machine, not of rmt: a full disk or quota, no permission, a read-only mount.
_CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the command, as rmt's own are (argparse prints the whole
    usage block first, tens of lines for `rmt train`, with the error last)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="rmt",
        description="Recurrent memory for Hugging Face transformers: train, evaluate and run memory models "
        "(RMT, ARMT) on inputs longer than their context window.",
    )
    parser.add_argument("--version", action="version", version=f"rmt {__version__}")
    # Each command's parser refuses abbreviated flags (allow_abbrev=False): an abbreviation would change meaning
    # when a flag sharing its prefix is added, and flags_given (which tells a flag given from its default) reads
    # whole names.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _format_warning(
    prog: str,
    default: Callable[..., str],
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """rmt's own warnings (RMTWarning) as one line in the command's voice ("rmt train: warning: ..."), like its
    errors; other warnings as Python formats them (their file and line say where they come from). Only the text
    changes: warning filters, -W error and whoever records warnings see them as before."""
    if issubclass(category, RMTWarning):
        return f"{prog}: warning: {message}\n"
    return default(message, category, filename, lineno, line)


_CPU_ALLOCATION_FAILED = re.compile(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes")


def torch_write_failed(err: BaseException) -> str | None:
    """One line for torch.save failing to write its file (a checkpoint's optimizer or random states): its zip writer
    reports a full disk only as an assertion on the file position. None for any other error."""
    first = str(err).splitlines()[0] if str(err) else ""
    if "inline_container.cc" not in first and "PytorchStreamWriter" not in first:
        return None
    return f"torch could not write a file (is the disk full?): {first}"


def out_of_memory(err: BaseException) -> str | None:
    """One line for an allocation that failed, naming its size: torch's CPU allocator raises a RuntimeError whose
    first line is the C++ assertion, a GPU a torch.OutOfMemoryError of several lines. None for any other error."""
    torch = sys.modules.get("torch")  # an error from torch means torch is loaded; rmt --help does not load it
    text = str(err)
    gpu_library = "CUDA error: out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
    if gpu_library or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
        return f"out of GPU memory: {text.splitlines()[0]} (a smaller batch, segment or memory needs less)"
    failed = _CPU_ALLOCATION_FAILED.search(text)
    if failed is None:
        return None
    size = _size(int(failed.group(1)))
    return f"out of memory: could not allocate {size} (a smaller batch, segment or memory needs less)"


def _size(size: int) -> str:
    """A size in bytes in the largest unit it fills: "2.3 GiB", "15.7 MiB", "512 bytes"."""
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale * 0.99995:  # what prints as 1.0 of this unit, not 1,024.0 of the next smaller
            return f"{size / scale:,.1f} {unit}"
    return f"{size} bytes"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command_line = list(sys.argv[1:] if argv is None else argv)
    if unknown:  # reported for the command they were given to (after its name), else for `rmt`
        before_command = command_line[: command_line.index(args.command)]
        prog = parser.prog if any(u in before_command for u in unknown) else f"{parser.prog} {args.command}"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see {prog} --help)\n")
    args.command_line = command_line  # to tell a flag given from its default
    processes = os.environ.get("WORLD_SIZE", "1")  # set by torchrun and accelerate launch for each process
    if args.command not in MULTI_PROCESS_COMMANDS and processes.isdigit() and int(processes) > 1:
        parser.exit(
            2,
            f"rmt {args.command}: error: launched as {processes} processes (WORLD_SIZE), and rmt {args.command} runs "
            "in one: each would do all of the work and write the same files; start it without torchrun or accelerate "
            "launch (or with WORLD_SIZE unset, where a job's environment sets it for every process)\n",
        )
    default_format = warnings.formatwarning
    warnings.formatwarning = functools.partial(_format_warning, f"rmt {args.command}", default_format)
    try:
        return args.handler(args)
    except InputError as err:
        print(f"rmt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmt {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        # A permission error without a file is no refused write (a socket, a signal): a bug to show whole
        if err.errno not in _CANNOT_WRITE or (err.errno in (errno.EACCES, errno.EPERM) and not err.filename):
            raise
        names = " -> ".join(str(name) for name in (err.filename, err.filename2) if name)
        print(f"rmt {args.command}: error: {err.strerror}{f': {names}' if names else ''}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        problem = out_of_memory(err) or torch_write_failed(err)
        if problem is None:
            raise
        print(f"rmt {args.command}: error: {problem}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = default_format


if __name__ == "__main__":
    sys.exit(main())
