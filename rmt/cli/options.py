"""Command-line flags generated from config dataclasses, so `--help` and the library never disagree.

Each field becomes `--field-name` (or the flag given in `flags`), its metadata "doc" the help text, its default the
default; bools become switches, Literal fields get their choices, and a metadata "parse" function reads values such
as a curriculum. The help names flags, not fields: a field name with an underscore in a doc ("needs xl_cache_tokens >
0") reads as its flag there ("needs --xl-cache-tokens > 0"), and each value's placeholder is its flag's name.
`config_from_args` builds the dataclass back from the parsed namespace; the dataclass's errors about a field given by
a flag name the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

from rmt.errors import InputError


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    flags: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    shown: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of dataclass `cls` (except `skip`); `flags` renames some, `defaults` overrides some,
    `shown` gives the "(default: ...)" text of fields whose default is None (what None means for them)."""
    flags, defaults, shown_none = flags or {}, defaults or {}, shown or {}
    hints = typing.get_type_hints(cls)
    given = [f for f in dataclasses.fields(cls) if f.name not in skip]
    to_flags = _field_names_to_flags({f.name: flag_name(f.name, flags) for f in given if "_" in f.name})
    for f in given:
        flag = flag_name(f.name, flags)
        default = defaults.get(f.name, f.default)
        doc = to_flags(f.metadata.get("doc", ""))
        kind, choices = _kind(hints[f.name])
        if kind is bool:
            if default:
                parser.add_argument(f"--no-{flag[2:]}", dest=f.name, action="store_false", help=f"do not: {doc}")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=doc)
            parser.set_defaults(**{f.name: default})
            continue
        parse = _with_message(f.metadata["parse"]) if "parse" in f.metadata else kind
        shown = default if not isinstance(default, list) else ",".join(f"{a}:{b}" for a, b in default)
        if default is None:
            shown = shown_none.get(f.name)
        help_text = doc + (f" (default: {shown})" if shown is not None else "")
        metavar = None if choices else flag[2:].upper().replace("-", "_")
        parser.add_argument(
            flag, dest=f.name, type=parse, default=default, choices=choices, metavar=metavar, help=help_text
        )


def _field_names_to_flags(flags: dict[str, str]) -> Callable[[str], str]:
    """A function that writes each field name of `flags` (whole words, not after a '.' as in "TrainConfig.x") as its
    flag."""
    if not flags:
        return lambda text: text
    names = sorted(flags, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, names)) + r")(?!\w)")
    return lambda text: pattern.sub(lambda match: flags[match.group(1)], text)


def flag_name(field_name: str, flags: dict[str, str] | None = None) -> str:
    """The command-line flag of a config field: its entry in `flags`, else `--field-name`."""
    return (flags or {}).get(field_name, "--" + field_name.replace("_", "-"))


def config_from_args(cls: type, args: argparse.Namespace, flags: dict[str, str] | None = None, **overrides: Any) -> Any:
    """The dataclass `cls` from the parsed flags (fields without a flag keep their defaults), with `overrides`.

    An InputError of `cls` about a field that a flag set (its message starts with "Cls.field") names the flag first:
    "TrainConfig.learning_rate must be > 0" becomes "--lr: learning_rate must be > 0" (`flags` as for
    `add_config_arguments`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    try:
        return cls(**{**values, **overrides})
    except InputError as err:
        message = name_flag(str(err), [name for name in values if name not in overrides], flags, prefix=cls.__name__)
        if message == str(err):
            raise
        raise InputError(message) from err


def name_flag(message: str, fields: list[str], flags: dict[str, str] | None = None, prefix: str = "") -> str:
    """`message` led by the flag of the field it starts with ("PREFIX.field ..." or "field ..." without a prefix):
    "FLAG: field ...". Other messages come back as they are."""
    lead = f"{prefix}." if prefix else ""
    for name in sorted(fields, key=len, reverse=True):  # memory_learning_rate before learning_rate
        start = lead + name
        if message.startswith(start) and message[len(start) : len(start) + 1] in (" ", "=", ":", ""):
            return f"{flag_name(name, flags)}: {message[len(lead) :]}"
    return message


def _with_message(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` whose errors argparse prints with their own message (it replaces a ValueError's with "invalid
    <function name> value")."""

    def parse_value(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse_value


def _kind(hint: Any) -> tuple[Any, tuple | None]:
    """(the type that reads a flag's value, its choices) for a field's type hint."""
    if get_origin(hint) is Literal:
        return str, tuple(get_args(hint))
    args = [a for a in get_args(hint) if a is not type(None)]
    if args:  # Optional[X] or X | None
        if len(args) == 1:
            return _kind(args[0])
        literal = [a for a in args if get_origin(a) is Literal]
        return (str, tuple(get_args(literal[0]))) if literal else (args[0], None)
    if hint in (bool, int, float, str):
        return hint, None
    return str, None
