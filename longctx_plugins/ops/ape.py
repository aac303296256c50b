"""Absolute-position-embedding (APE) extension math (as in LongEmbed, Zhu et al. 2024): table interpolation and
position maps.

Every map keeps inputs no longer than the trained window ``L`` on their original positions, so their embeddings
are exactly those of the unextended model.
"""

from __future__ import annotations

import math

import torch

APE_METHODS = ("pi", "gp", "rp")


def pi_scale(trained: int, target: int) -> int:
    """Integer interpolation factor s = ceil(target / L); the extended table has L * s rows."""
    return max(1, math.ceil(target / trained))


def interpolate_table(weight: torch.Tensor, trained: int, scale: int, offset: int = 0) -> torch.Tensor:
    """PI table: row ``j`` of the new table sits at original position ``j / s``.

    Rows ``offset + i * s`` equal the original rows ``offset + i`` exactly; rows between are linear
    interpolations; rows past the last original row repeat it. The first ``offset`` rows (XLM-R's padding
    rows) are kept. Returns ``[offset + trained * scale, hidden]``.
    """
    head, real = weight[:offset], weight[offset : offset + trained].to(torch.float32)
    j = torch.arange(trained * scale, dtype=torch.float64, device=weight.device)
    lo = torch.div(j, scale, rounding_mode="floor").long()
    hi = torch.clamp(lo + 1, max=trained - 1)
    frac = ((j / scale) - lo.to(torch.float64)).to(torch.float32)[:, None]
    frac = torch.where((lo == trained - 1)[:, None], torch.zeros_like(frac), frac)
    table = real[lo] * (1 - frac) + real[hi] * frac
    return torch.cat([head, table.to(weight.dtype)], dim=0)


def positions(method: str, lengths: torch.Tensor, seq_len: int, trained: int, scale: int = 1) -> torch.Tensor:
    """Position ids ``[B, T]`` (before any model offset) for true ``lengths`` ``[B]`` of right-padded rows.

    * ``pi``: ``p * s`` for rows no longer than ``L`` (the original rows), ``p`` beyond (interpolated table);
    * ``gp``: ``floor(p / s_b)`` with ``s_b = ceil(len_b / L)`` per sequence (not per padded batch);
    * ``rp``: ``p mod L``;
    * ``none``: ``p``.
    """
    p = torch.arange(seq_len, device=lengths.device)[None, :].expand(lengths.shape[0], -1)
    lengths = lengths.to(torch.long)[:, None]
    if method == "pi":
        return torch.where(lengths <= trained, p * scale, p)
    if method == "gp":
        s = torch.clamp(torch.div(lengths + trained - 1, trained, rounding_mode="floor"), min=1)
        return torch.div(p, s, rounding_mode="floor")
    if method == "rp":
        return torch.remainder(p, trained)
    if method == "none":
        return p
    raise ValueError(f"unknown APE position method {method!r}; expected one of {APE_METHODS + ('none',)}")
