"""Pooling of token states into text vectors (sentence-transformers' semantics) and into span vectors (late chunking),
and the L2 normalisation of the vectors."""

from __future__ import annotations

import numpy as np
import torch

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
    """Mean of ``states [n, H]`` over rows ``[lo_k, hi_k)`` for every span k, vectorised with one cumulative sum.
    Real tokens are contiguous between the special tokens, so a span's tokens are one contiguous range."""
    c = torch.nn.functional.pad(states.to(torch.float64).cumsum(0), (0, 0, 1, 0))
    lo_t, hi_t = torch.as_tensor(lo, device=states.device), torch.as_tensor(hi, device=states.device)
    return ((c[hi_t] - c[lo_t]) / (hi_t - lo_t).clamp(min=1)[:, None].to(c.dtype)).to(torch.float32)
