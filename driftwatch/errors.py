"""Exceptions raised by driftwatch.

Every error a user can cause (bad input, bad options, a bad policy file) is a
subclass of :class:`DriftwatchError`, so callers and the CLI catch one root::

    DriftwatchError
    ├── InputError            input cannot be read at all (path, file, format)
    │   ├── NoInputError      a path or glob that matches nothing / an empty input
    │   │   └── NothingToAudit  incremental mode: every source file was audited before
    │   └── CorruptFileError  a file that is not readable Parquet
    ├── SchemaError           a required column is missing or has an unusable type
    ├── PolicyError           a policy file with unknown keys or wrong types
    └── InvalidParameterError an option with a value outside what is accepted

Messages name the file or parameter, what was expected and what was found.
"""

from __future__ import annotations


class DriftwatchError(Exception):
    """Root of every error driftwatch raises on purpose."""


class InputError(DriftwatchError):
    """The input could not be read."""


class NoInputError(InputError):
    """A path or glob matched no file, or the input holds no rows."""


class EmptyInputError(NoInputError):
    """Every file of the input holds zero rows (an incremental audit skips such files)."""


class NothingToAudit(NoInputError):
    """Incremental mode: every source file was audited before, or the new ones hold no rows
    (the CLI prints ``no new data since the last audit`` and exits 0)."""


class CorruptFileError(InputError):
    """A file is not readable Parquet (truncated, corrupt, or another format)."""


class SchemaError(DriftwatchError):
    """A required column is missing or has a type that cannot be converted."""


class PolicyError(DriftwatchError):
    """A policy file is malformed: unknown keys, wrong types, unreadable TOML."""


class InvalidParameterError(DriftwatchError, ValueError):
    """An option has a value outside what is accepted."""


__all__ = [
    "CorruptFileError",
    "DriftwatchError",
    "InputError",
    "InvalidParameterError",
    "NoInputError",
    "NothingToAudit",
    "PolicyError",
    "SchemaError",
]


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` on one line, at most ``limit`` characters, for a message (a frame's
    repr is a table of many lines).

    >>> short_repr("a\\nb"), short_repr(list(range(100)), 20)
    ("'a\\\\nb'", '[0, 1, 2, 3, 4, 5, …')
    """
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
