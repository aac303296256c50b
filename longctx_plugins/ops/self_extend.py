"""SelfExtend math (Jin et al. 2024; LongEmbed's bidirectional variant): position maps, reference, LSE merge.

G = group size, W = neighbour window, i = query position, j = key position.
``|i - j| < W``: ordinary distance ``i - j``. Otherwise grouped: key left of the query,
``floor(i/G) - floor(j/G) + W - floor(W/G)``; key right of the query (encoders), the mirror
``-(floor(j/G) - floor(i/G) + W - floor(W/G))``.
"""
from __future__ import annotations

import math

import torch

from .reference import masked_softmax_attention, repeat_kv
from .rope import apply_rotation, rotation_tables


def shift(group_size: int, window: int) -> int:
    return window - window // group_size


def max_length(trained_length: int, group_size: int, window: int) -> int:
    """Largest length whose grouped distances stay inside the trained window: ``(L_train - W) * G + W``."""
    return (trained_length - window) * group_size + window


def pick_parameters(trained_length: int, target_length: int, window: int | None = None,
                    group_size: int | None = None) -> tuple[int, int]:
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


def grouped_deltas(q_pos, k_pos, group_size: int, window: int, causal: bool):
    """Rotation deltas from the true positions to the grouped ones: ``(q_left, k_left, q_right, k_right)``, each
    ``[B, S]`` (the "right" pair, keys right of the query in encoders, is ``None`` for causal attention)."""
    s = shift(group_size, window)
    qg = torch.div(q_pos, group_size, rounding_mode="floor")
    kg = torch.div(k_pos, group_size, rounding_mode="floor")
    if causal:
        return qg + s - q_pos, kg - k_pos, None, None
    return qg + s - q_pos, kg - k_pos, qg - q_pos, kg + s - k_pos


def grouped_rotations(query, key, q_pos, k_pos, inv_freq, group_size: int, window: int, causal: bool,
                      apply=apply_rotation):
    """Re-rotate already rotated q/k to the grouped positions.

    Returns ``(q_left, k_left, q_right, k_right)``; the "right" pair (keys right of the query, encoders only)
    is ``None`` for causal attention. Rotation by a delta composes with the rotation already applied.
    ``apply(x, cos, sin)`` applies one rotation (a compiled :func:`~.rope.apply_rotation` on the fast path).
    """
    deltas = grouped_deltas(q_pos, k_pos, group_size, window, causal)
    return tuple(None if d is None else apply(x, *rotation_tables(d, inv_freq))
                 for x, d in zip((query, key, query, key), deltas))


def reference_attention(query, key, value, q_pos, k_pos, inv_freq, group_size: int, window: int, *,
                        causal: bool, mask: torch.Tensor | None, scale: float,
                        logit_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Exact SelfExtend: neighbour and grouped logits, picked per pair, one float32 softmax.

    ``query [B,H,Q,D]`` and ``key [B,Hkv,K,D]`` are rotated at their true positions ``q_pos [B,Q]``,
    ``k_pos [B,K]``. ``mask [B,1,Q,K]`` bool; ``logit_scale [B]`` optional. Returns ``[B,H,Q,D]`` float32.
    """
    n_rep = query.shape[1] // key.shape[1]
    f32 = torch.float32
    q_l, k_l, q_r, k_r = grouped_rotations(query, key, q_pos, k_pos, inv_freq, group_size, window, causal)

    def logits(q, k):
        return torch.matmul(q.to(f32), repeat_kv(k, n_rep).to(f32).transpose(-1, -2)) * scale

    dist = (q_pos[:, :, None] - k_pos[:, None, :])[:, None]  # [B,1,Q,K]
    out = torch.where(dist.abs() < window, logits(query, key), logits(q_l, k_l))
    if not causal:
        out = torch.where((dist <= -window), logits(q_r, k_r), out)
    if logit_scale is not None:
        out = out * logit_scale.to(f32)[:, None, None, None]
    return masked_softmax_attention(out, mask, value)


def merge_pair(o_a, lse_a, o_b, lse_b):
    """Exact merge of two attention results over disjoint key sets: ``(o, lse)``.

    ``o_*``: ``[B,H,Q,D]``; ``lse_*``: ``[B,H,Q]`` float (``-inf`` where a pass saw no key). Computed in float32,
    returned in ``o_a.dtype``; a row that saw no key in either pass gives ``o_b`` (zeros from the kernels).
    """
    lse_a, lse_b = lse_a.to(torch.float32), lse_b.to(torch.float32)
    lse = torch.logaddexp(lse_a, lse_b)
    w = torch.nan_to_num(torch.exp(lse_a - lse), nan=0.0)[..., None]  # weight of pass a; nan only when both are -inf
    b = o_b.to(torch.float32)
    return (b + (o_a.to(torch.float32) - b) * w).to(o_a.dtype), lse
