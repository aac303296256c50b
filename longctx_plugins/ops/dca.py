"""Dual Chunk Attention (An et al. 2024, "Training-Free Long-Context Scaling of Large Language Models") as passes.

The sequence is cut into chunks of ``chunk_size`` (c) tokens; keys are rotated at ``j mod c``. A query at position i
(``a = i mod c``) is rotated, for keys in
* its own chunk (intra): at ``a``, so the distance is the true ``i - j``;
* the previous chunk (successive): at ``min(a + c, C)``, the true distance as long as ``a <= local_window``;
* any earlier chunk (inter): at ``min(2c - 1, C)``;
with ``C = chunk_size + local_window`` the largest position any query gets (so every distance is at most C). The
three parts partition the causal pairs: every key is attended once. Decoders only (the method is causal).

Parameter names: the authors' code calls ``C`` its "chunk_size" and cuts chunks of ``C - local_window`` tokens; here
``chunk_size`` is the chunk length itself, so the authors' defaults (their chunk_size = 3L/4, local_window = L/8 for a
trained length L) are ``chunk_size = 5L/8, local_window = L/8``.
"""

from __future__ import annotations

from . import passes as P


def default_parameters(trained_length: int) -> tuple[int, int]:
    """``(chunk_size, local_window)``: the authors' defaults, ``5L/8`` and ``L/8`` (largest distance ``3L/4``)."""
    local = max(1, trained_length // 8)
    return max(1, trained_length * 3 // 4 - local), local


def passes(chunk_size: int, local_window: int) -> tuple[P.Pass, ...]:
    c, top = chunk_size, chunk_size + local_window
    key = P.Positions(a=1, b=-c, div=c)  # j mod c
    return (
        P.Pass("intra", P.Band(0, 0, c, c), q=P.Positions(a=1, b=-c, div=c), k=key),
        P.Pass("successive", P.Band(1, 1, c, c), q=P.Positions(a=1, b=-c, div=c, c=c, max=top), k=key),
        P.Pass("inter", P.Band(lo=2, q_div=c, k_div=c), q=P.Positions(a=0, c=min(2 * c - 1, top)), k=key),
    )
