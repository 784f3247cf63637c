"""The exceptions rmt raises for problems the caller can fix.

`InputError` (a `ValueError`) means the input was wrong: a shape, a value, a setting, a file's contents.
`MissingFileError` (also a `FileNotFoundError`) means a file or folder the call needs is not there. The `rmt`
command prints these as one line; anything else is a bug and keeps its traceback. `RMTWarning` (a `UserWarning`) is
what rmt warns of in its own words, which the command prints as one line too.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the caller: the message names the problem and, where there is one, the fix."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder that the call needs does not exist."""


class RMTWarning(UserWarning):
    """Something the caller should know that rmt goes on with (a setting without effect, weights left out)."""


class MissingWeightsError(InputError):
    """A model's files lack weights it needs (which transformers would start at random). `head_only`: all that is
    missing is a classifier's head (and pooler), so a classifier for new classes could start from these files."""

    def __init__(self, message: str, head_only: bool) -> None:
        super().__init__(message)
        self.head_only = head_only
