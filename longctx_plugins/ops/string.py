"""STRING, shifted rotary positions (An et al. 2024, "Why Does the Effective Context Length of LLMs Fall Short?"),
as passes.

Keys stay at their true positions. A query at position i sees keys at distance ``d = i - j < S`` (``shift``) at their
true distance, and keys at ``d >= S`` with its position shifted to ``i - S + W`` (``local_window``), i.e. at distance
``d - S + W``: the rarely trained largest distances are replaced by well-trained ones, and distances below W stay
reserved for true neighbours. Every key is attended once (the two parts partition the causal pairs; this is how the
authors' decoding computes it). Decoders only.

With all distances inside a trained window L: ``S <= L - 1`` and ``length <= L + S - W`` (at most about 2L).
"""

from __future__ import annotations

from . import passes as P

DEFAULT_LOCAL_WINDOW = 128  # the authors' default


def default_parameters(trained_length: int, target_length: int, local_window: int | None = None) -> tuple[int, int]:
    """``(shift, local_window)`` for reaching ``target_length``: the authors' shift of a third of the trained length
    when that reaches the target with trained distances only, else the smallest shift that does
    (``target - L + W``), at most ``L - 1``."""
    L = trained_length
    w = min(DEFAULT_LOCAL_WINDOW, max(1, L // 8)) if local_window is None else local_window
    return min(max(L // 3, target_length - L + w), L - 1), w


def max_length(trained_length: int, shift: int, local_window: int) -> int:
    """Longest input whose distances all stay inside the trained window: ``L + S - W``."""
    return trained_length + shift - local_window


def passes(shift: int, local_window: int) -> tuple[P.Pass, ...]:
    return (
        P.Pass("window", P.Band(lo=0, hi=shift - 1)),
        P.Pass("shifted", P.Band(lo=shift), q=P.Positions(c=local_window - shift)),
    )
