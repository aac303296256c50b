"""Pooling of token states into text vectors (sentence-transformers' semantics) and into span vectors (late chunking),
and the L2 normalisation of the vectors."""

from __future__ import annotations

import numpy as np
import torch

from .transfer import to_device

POOLING_MODES = ("mean", "cls", "lasttoken", "max")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, left_padded: bool) -> torch.Tensor:
    """``hidden [B, T, H]`` float, ``mask [B, T]`` (1 = real token) -> ``[B, H]``.

    ``mean`` averages real tokens, ``cls`` takes the first position, ``max`` the element-wise maximum over real tokens,
    ``lasttoken`` the last real token (the last position when rows are padded on the left)."""
    m = mask.to(hidden.dtype)[..., None]
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(1).values
    if mode == "lasttoken":
        if left_padded:
            return hidden[:, -1]
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}.")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Each row of ``vectors [n, dim]`` divided by its L2 norm (norms below 1e-12 count as 1e-12, so a zero row stays
    zero); the dtype is kept. The one normalisation of every vector the embedder returns."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


def span_token_ranges(starts: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token index ranges ``[lo, hi)`` of each character span ``[start, end)`` (``spans [k, 2]``).

    ``starts [n]``: the character where each token starts, -1 for special and prompt tokens, which belong to no span;
    the text's tokens are one contiguous run with non-decreasing starts. A token belongs to a span when its first
    character lies in it. An empty range (``lo == hi``) means the span holds no token."""
    real = np.flatnonzero(starts >= 0)
    if len(real) and real[-1] - real[0] + 1 != len(real):
        raise ValueError("token offsets are not one contiguous run of the text's tokens")
    first = int(real[0]) if len(real) else 0
    s = starts[real]
    return first + np.searchsorted(s, spans[:, 0], side="left"), first + np.searchsorted(s, spans[:, 1], side="left")


def span_means(states: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    """``[k, H]`` float32 on ``states``' device: the mean of ``states [n, H]`` over rows ``[lo_j, hi_j)`` for every
    span j (zeros for an empty span). Spans may overlap, nest or touch; the rows of several texts' states flattened
    into one ``[B * T, H]`` are pooled in one call by shifting each text's ranges to its rows.

    Every (row, span) pair is summed into its span on the device with one ``index_add_`` (float32 accumulation, also
    for half-precision states), from a pair list built there (no host synchronisation; the host sends two numbers per
    span). Overlapping spans make more pairs than rows: then the spans are pooled in groups of at most
    ``max(n, MIN_PAIRS)`` pairs each (one ``index_add_`` per group) so memory stays bounded."""
    lo, hi = np.asarray(lo, dtype=np.int64).reshape(-1), np.asarray(hi, dtype=np.int64).reshape(-1)
    k, device = len(lo), states.device
    out = torch.zeros(k, states.shape[1], dtype=torch.float32, device=device)
    counts = np.maximum(hi - lo, 0)
    budget = max(states.shape[0], MIN_PAIRS)
    for a, b in _pair_groups(counts, budget):
        n_pairs = int(counts[a:b].sum())
        if n_pairs == 0:
            continue
        before = np.cumsum(counts[a:b]) - counts[a:b]  # pairs of the group's earlier spans
        meta = to_device(np.stack([lo[a:b] - before, counts[a:b]]), device)
        shift, count = meta[0], meta[1]
        span = torch.repeat_interleave(torch.arange(b - a, device=device), count, output_size=n_pairs)
        row = torch.arange(n_pairs, device=device) + torch.repeat_interleave(shift, count, output_size=n_pairs)
        group = out[a:b]
        group.index_add_(0, span, states.index_select(0, row).to(torch.float32))
        group /= count.clamp(min=1)[:, None].to(torch.float32)
    return out


MIN_PAIRS = 1 << 16  # (row, span) pairs one index_add_ may gather, at the least (see span_means)


def _pair_groups(counts: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """``[a, b)`` runs of consecutive spans with at most ``budget`` pairs each (a longer span is a run of its own)."""
    if len(counts) == 0 or int(counts.sum()) <= budget:
        return [(0, len(counts))] if len(counts) else []
    groups, a, used = [], 0, 0
    for j, c in enumerate(counts.tolist()):
        if j > a and used + c > budget:
            groups.append((a, j))
            a, used = j, 0
        used += c
    groups.append((a, len(counts)))
    return groups
