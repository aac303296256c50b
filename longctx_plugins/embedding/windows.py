"""Overlapping windows over a long token sequence, and which window gives each token the most context.

Used for texts longer than the embedder's ``target_length`` (``overlength="windows"``, and ``encode_spans``), and
for parallel context windows (``method="pcw"``: windows of the trained length, no overlap).
"""

from __future__ import annotations

import numpy as np


def reading_window(config, method: str, target_length: int):
    """What an embedder asked for ``method`` and ``target_length`` on a model with ``config`` reads, resolved once
    (an :class:`~longctx_plugins.extension.Extension` that ``extend(model, it)`` applies as is): ``none`` reads the
    trained length, other methods ``target_length`` (checked by the caller:
    :func:`~longctx_plugins.extension.check_target_length`), and a checkpoint saved extended runs its own method over
    max(``target_length``, its extended length). ``method`` is checked against the model first (ValueError naming
    the fix)."""
    from ..extension import Extension, _resolve

    saved = getattr(config, "longctx_ape", None)
    choice = _resolve(config, method, target_length, {})
    if saved:
        return Extension(
            choice.position_type,
            saved["method"],
            choice.trained_length,
            max(target_length, int(saved["target_length"])),
        )
    if choice.method == "none":
        return Extension(choice.position_type, "none", choice.trained_length, choice.trained_length)
    return choice


def cover(n: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """``[a, b)`` windows of ``size`` tokens covering ``range(n)``, consecutive windows sharing ``overlap`` tokens
    (at least); the last window is the last ``size`` tokens. One window when ``n <= size``."""
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}.")
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap must be >= 0 and smaller than the window ({size}), got {overlap}.")
    if n <= size:
        return [(0, n)]
    starts = list(range(0, n - size, size - overlap)) + [n - size]
    return [(a, a + size) for a in starts]


def most_context(n: int, windows: list[tuple[int, int]], causal: bool) -> np.ndarray:
    """For each of ``n`` tokens, the index of the window where it has the most context: the most tokens before it
    (causal models) or the most on its nearer side (bidirectional). Ties go to the earlier window."""
    pos = np.arange(n)
    best = np.full(n, -1, dtype=np.int64)
    best_ctx = np.full(n, -1, dtype=np.int64)
    for w, (a, b) in enumerate(windows):
        inside = (pos >= a) & (pos < b)
        ctx = (pos - a) if causal else np.minimum(pos - a, b - 1 - pos)
        better = inside & (ctx > best_ctx)
        best[better], best_ctx[better] = w, ctx[better]
    if (best < 0).any():
        raise ValueError("the windows do not cover every token")
    return best
