"""Argument checks shared by the public entry points (one wording everywhere)."""
from __future__ import annotations


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (bools are not integers here), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value
