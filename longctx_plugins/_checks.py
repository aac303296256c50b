"""Argument checks shared by the public entry points (one wording everywhere)."""
from __future__ import annotations


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (bools are not integers here), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


class MissingParameterError(KeyError):
    """A required configuration key is missing: a ``KeyError``, as transformers raises for the missing keys of its own
    RoPE types (code written against transformers' contract keeps working), with a message that names the key and
    how to pass it."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""
