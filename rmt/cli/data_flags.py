"""Flags that name data, shared by `rmt train`, `rmt eval` and `rmt babilong`: data files and generated BABILong
tasks (`--data`), facts per story (`--facts`), lengths (`--lengths`) and the background text (`--haystack`).

Each check raises InputError naming the flag, so that every command words the same mistake the same way; heavy
modules are imported inside the functions so that `rmt --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rmt.errors import InputError

if TYPE_CHECKING:
    from rmt.data.haystack import Haystack

BABILONG_PREFIX = "babilong:"
DEFAULT_SEED = 0  # seed of generated BABILong samples: rmt eval's default, and rmt babilong's


def check_data_files(*specs: str | None) -> None:
    """Refuse a --data (or --validation-data) that is neither babilong:TASK nor an existing file, suggesting
    babilong:NAME for a BABILong task's bare name."""
    from rmt.data.babilong import TASKS
    from rmt.errors import MissingFileError

    for spec in specs:
        if spec is None or spec.startswith(BABILONG_PREFIX) or Path(spec).is_file():
            continue
        hint = f" (for the generated BABILong task, write {BABILONG_PREFIX}{spec})" if spec in TASKS else ""
        if spec.lower() == BABILONG_PREFIX[:-1]:
            hint = f" (BABILong samples: name the tasks: {BABILONG_PREFIX}TASK[,TASK...], of {list(TASKS)})"
        raise MissingFileError(f"no data file at {spec}{hint}")


def babilong_tasks(spec: str) -> list[str] | None:
    """The tasks of --data babilong:TASK[,TASK...], each once in the order given; None for other data."""
    if not spec.startswith(BABILONG_PREFIX):
        return None
    from rmt.data.babilong import TASKS

    tasks = list(dict.fromkeys(t for t in spec[len(BABILONG_PREFIX) :].split(",") if t))  # each task once
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise InputError(f"--data {spec}: expected babilong:TASK[,TASK...] with tasks from {', '.join(TASKS)}")
    return tasks


def facts_setting(spec: str | None, tasks: list[str] | None, needs: str) -> int | tuple[int, int] | None:
    """The --facts setting checked against the BABILong tasks (None: the tasks' own ranges), with messages that name
    --facts. `needs`: what --facts needs when there are no BABILong tasks (the flag that gives them)."""
    if spec is None:
        return None
    if tasks is None:
        raise InputError(f"--facts sets facts per BABILong story: it needs {needs}")
    from rmt.data.babilong import parse_num_facts

    return parse_num_facts(spec, tasks, name="--facts")


def parse_lengths(text: str, flag: str = "--lengths") -> list[str]:
    """The length names of a comma-separated list, each once, in the order given; at least one."""
    from rmt.data.babilong import length_name, parse_length

    names: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            name = length_name(parse_length(item))
        except InputError as err:
            raise InputError(f"{flag} {text}: {err}") from err
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"{flag} {text!r}: give at least one length, e.g. 0k,1k,4k")
    return names


def check_background(spec: str | None) -> list[Path]:
    """The files of --haystack (comma-separated), each checked to be there and to start as text: a command calls this
    before it loads a model, so that a wrong file is named at once."""
    from rmt.data.haystack import check_text_file

    paths = [Path(p) for p in (spec or "").split(",") if p]
    if spec is not None and not paths:
        raise InputError(f"--haystack {spec!r}: no file named")
    for path in paths:  # every file's first MiB before any is read whole
        check_text_file(path, f"--haystack {path}")
    return paths


def load_background(spec: str | None) -> Haystack:
    """The BABILong background text: the files of --haystack (comma-separated), or the built-in corpus."""
    from rmt.data.haystack import default_haystack, load_haystack

    if spec is None:
        return default_haystack()
    return load_haystack(check_background(spec))


def text_collator(tokenizer: object, max_length: int | None) -> object:
    """The collator of a text data file, with --max-length checked in the flag's name (a document needs 2 tokens
    for one to predict)."""
    from rmt.data.collate import TextCollator

    if max_length is not None and max_length < 2:
        raise InputError(
            f"--max-length must be at least 2 (a document's first token predicts its second), got {max_length}"
        )
    return TextCollator(tokenizer, max_length)
