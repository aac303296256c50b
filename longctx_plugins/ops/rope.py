"""RoPE math: inverse frequencies for the plugin RoPE types and re-rotation helpers."""

from __future__ import annotations

import torch


def default_inv_freq(dim: int, base: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``1 / base ** (2i / dim)`` for ``i < dim / 2`` (float32), as transformers' default RoPE computes it."""
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (base**exponent)


def pi_inv_freq(dim: int, base: float, factor: float, device=None) -> torch.Tensor:
    """Position interpolation: positions divided by ``factor`` == inverse frequencies divided by it."""
    return default_inv_freq(dim, base, device) / factor


def ntk_base(base: float, factor: float, dim: int) -> float:
    """Static NTK-aware base: ``theta' = theta * factor ** (d / (d - 2))``, d = rotary dimension."""
    if dim <= 2:
        raise ValueError(f"NTK scaling needs a rotary dimension > 2, got {dim}")
    return float(base) * float(factor) ** (dim / (dim - 2))


def ntk_inv_freq(dim: int, base: float, factor: float, device=None) -> torch.Tensor:
    return default_inv_freq(dim, ntk_base(base, factor, dim), device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotation_tables(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[B, 1, S, R]`` float32 for ``positions [B, S]`` (any real values) and ``inv_freq [R/2]``."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(device=positions.device, dtype=torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, S, D]`` by precomputed tables (the leading R channels; the rest pass through), in float32,
    returned in ``x.dtype``. Separate from the tables so a compiled caller loads cos/sin instead of recomputing them
    for every head."""
    rot = cos.shape[-1]
    x32 = x.to(torch.float32)
    xr, xp = x32[..., :rot], x32[..., rot:]
    out = xr * cos + rotate_half(xr) * sin
    if xp.shape[-1]:
        out = torch.cat((out, xp), dim=-1)
    return out.to(x.dtype)


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Apply RoPE (half-split convention, as transformers' ``rotate_half``) by ``positions``.

    ``x``: ``[B, H, S, D]``; ``positions``: ``[B, S]`` (any real values, also negative deltas);
    ``inv_freq``: ``[R/2]`` with ``R <= D`` the rotary dimension (the leading R channels rotate, the rest
    pass through, as with ``partial_rotary_factor``). Computed in float32, returned in ``x.dtype``.
    Rotating an already rotated vector by a delta equals rotating the original by position + delta.
    """
    return apply_rotation(x, *rotation_tables(positions, inv_freq))
