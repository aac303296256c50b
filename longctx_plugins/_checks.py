"""Argument checks shared by the public entry points (one wording everywhere), and the environment's on/off
switches."""

from __future__ import annotations

import os

# the values that switch an environment variable on (any case, surrounding spaces ignored)
TRUE_VALUES = ("1", "true", "yes", "on")


def is_int_at_least(value, minimum: int = 1) -> bool:
    """Whether ``value`` is an integer >= ``minimum`` (bools are not integers here)."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def positive_int(name: str, value, minimum: int = 1, why: str = "") -> int:
    """``value`` if it is an integer >= ``minimum`` (bools are not integers here), else ValueError naming ``name``
    (and ``why`` the bound is what it is, when given: ``"max_length must be an integer >= 2 (anchor + at least one
    token), got 1."``)."""
    if not is_int_at_least(value, minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}{f' ({why})' if why else ''}, got {value!r}.")
    return value


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is switched on: set to one of :data:`TRUE_VALUES`."""
    return os.environ.get(name, "").strip().lower() in TRUE_VALUES


class MissingParameterError(KeyError):
    """A required configuration key is missing: a ``KeyError``, as transformers raises for the missing keys of its own
    RoPE types (code written against transformers' contract keeps working), with a message that names the key and
    how to pass it."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""
