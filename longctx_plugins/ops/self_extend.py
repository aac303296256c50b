"""SelfExtend (Jin et al. 2024; LongEmbed's bidirectional variant) as attention passes.

G = group size, W = neighbour window, i = query position, j = key position.
``|i - j| < W``: ordinary distance ``i - j``. Otherwise grouped: key left of the query,
``floor(i/G) - floor(j/G) + W - floor(W/G)``; key right of the query (encoders), the mirror
``-(floor(j/G) - floor(i/G) + W - floor(W/G))``. Inputs no longer than W are plain attention.
"""

from __future__ import annotations

import math

import torch

from . import passes as P


def shift(group_size: int, window: int) -> int:
    return window - window // group_size


def max_length(trained_length: int, group_size: int, window: int) -> int:
    """Largest length whose grouped distances stay inside the trained window: ``(L_train - W) * G + W``."""
    return (trained_length - window) * group_size + window


def pick_parameters(
    trained_length: int, target_length: int, window: int | None = None, group_size: int | None = None
) -> tuple[int, int]:
    """Choose (G, W) with ``(L_train - W) * G + W >= target_length`` (smallest G for the given W).

    Default window: a quarter of the trained length (LongEmbed used 64..2048 for 512..4096 windows).
    """
    if window is None:
        window = max(1, trained_length // 4)
    if group_size is None:
        group_size = max(1, math.ceil((target_length - window) / max(1, trained_length - window)))
    return int(group_size), int(window)


def temperature(lengths: torch.Tensor, trained_length: int) -> torch.Tensor:
    """LongEmbed's logit scale ``max(1, ln L / ln L_train)`` per sequence (``lengths``: ``[B]``)."""
    lengths = lengths.to(torch.float32).clamp(min=1.0)
    return torch.clamp(torch.log(lengths) / math.log(trained_length), min=1.0)


def passes(group_size: int, window: int, causal: bool) -> tuple[P.Pass, ...]:
    """``near`` (``|i - j| < W``, true positions), ``far_left`` (``i - j >= W``: queries at ``floor(i/G) + s``, keys
    at ``floor(j/G)``, s = W - floor(W/G)) and, for encoders, ``far_right`` (``j - i >= W``, mirrored)."""
    G, W, s = group_size, window, shift(group_size, window)
    out = [
        P.Pass("near", P.Band(lo=-(W - 1), hi=W - 1)),
        P.Pass("far_left", P.Band(lo=W), q=P.Positions(a=0, b=1, div=G, c=s), k=P.Positions(a=0, b=1, div=G)),
    ]
    if not causal:
        out.append(
            P.Pass("far_right", P.Band(hi=-W), q=P.Positions(a=0, b=1, div=G), k=P.Positions(a=0, b=1, div=G, c=s))
        )
    return tuple(out)
