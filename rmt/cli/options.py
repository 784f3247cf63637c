"""Command-line flags generated from config dataclasses, so `--help` and the library never disagree.

Each field becomes `--field-name` (or the flag given in `flags`), its metadata "doc" the help text, its default the
default; bools become switches, Literal fields get their choices, and a metadata "parse" function reads values such
as a curriculum. `config_from_args` builds the dataclass back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    flags: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add one flag per field of dataclass `cls` (except `skip`); `flags` renames some, `defaults` overrides some."""
    flags, defaults = flags or {}, defaults or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = flag_name(f.name, flags)
        default = defaults.get(f.name, f.default)
        doc = f.metadata.get("doc", "")
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
        help_text = doc + (f" (default: {shown})" if default is not None else "")
        parser.add_argument(flag, dest=f.name, type=parse, default=default, choices=choices, help=help_text)


def flag_name(field_name: str, flags: dict[str, str] | None = None) -> str:
    """The command-line flag of a config field: its entry in `flags`, else `--field-name`."""
    return (flags or {}).get(field_name, "--" + field_name.replace("_", "-"))


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass `cls` from the parsed flags (fields without a flag keep their defaults), with `overrides`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


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
