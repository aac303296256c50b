"""Attention as passes over disjoint sets of (query, key) pairs, each pass with its own RoPE positions.

SelfExtend, Dual Chunk Attention and STRING give a pair (query position i, key position j) a rotation distance that
depends on where j lies relative to i. Each method is a list of :class:`Pass`: the pairs it covers (a
:class:`Band` of mapped positions) and the positions its queries and keys are rotated to (:class:`Positions`). The
passes of a method partition every pair, so attention is exactly one softmax over the pairs' logits, each logit
taken from its own pass: :func:`dense_attention` computes that directly (the exact path); the fast paths run one
attention per pass and merge them by log-sum-exp (:func:`~longctx_plugins.ops.lse.merge_pair`).

q and k arrive already rotated at their true positions; rotating them again by ``new - true`` gives the rotation at
the new position (rotations compose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .lse import merge_pair  # noqa: F401  (re-exported: the passes' merge)
from .rope import apply_rotation, rotation_tables


def floor_div(p: torch.Tensor, div: int) -> torch.Tensor:
    return p if div == 1 else torch.div(p, div, rounding_mode="floor")


@dataclass(frozen=True)
class Band:
    """The pairs with ``lo <= floor(i / q_div) - floor(j / k_div) <= hi`` and ``rows_from <= i < rows_to``."""

    lo: float = -math.inf
    hi: float = math.inf
    q_div: int = 1
    k_div: int = 1
    rows_from: float = -math.inf
    rows_to: float = math.inf

    def pairs(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Whether the pairs ``(q_pos, k_pos)`` lie in the band, elementwise over broadcastable position tensors: the
        one statement of the rule (dense masks through :meth:`contains`, FlexAttention's mask_mod through
        :func:`~longctx_plugins.ops.masks.band_mod`). Infinite bounds are skipped, never compared."""
        d = floor_div(q_pos, self.q_div) - floor_div(k_pos, self.k_div)
        out = d == d  # all True, in the broadcast shape
        if self.lo != -math.inf:
            out = out & (d >= int(self.lo))
        if self.hi != math.inf:
            out = out & (d <= int(self.hi))
        if self.rows_from != -math.inf:
            out = out & (q_pos >= int(self.rows_from))
        if self.rows_to != math.inf:
            out = out & (q_pos < int(self.rows_to))
        return out

    def contains(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``[B, Q, K]`` bool for positions ``q_pos [B, Q]``, ``k_pos [B, K]``."""
        return self.pairs(q_pos[:, :, None], k_pos[:, None, :])

    @property
    def all_rows(self) -> bool:
        return self.rows_from == -math.inf and self.rows_to == math.inf

    @property
    def is_distance(self) -> bool:
        """A band of plain distances ``i - j`` (no chunking)."""
        return self.q_div == 1 and self.k_div == 1


@dataclass(frozen=True)
class Positions:
    """Position map ``p -> a * p + b * floor(p / div) + c``, clamped to at most ``max`` when given."""

    a: int = 1
    b: int = 0
    div: int = 1
    c: int = 0
    max: int | None = None

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        out = self.a * p + (self.b * floor_div(p, self.div) if self.b else 0) + self.c
        if self.max is not None:
            out = torch.clamp(out, max=self.max)
        return out

    @property
    def is_identity(self) -> bool:
        return self.a == 1 and self.b == 0 and self.c == 0 and self.max is None


IDENTITY = Positions()


@dataclass(frozen=True)
class Pass:
    name: str
    band: Band
    q: Positions = IDENTITY
    k: Positions = IDENTITY


def exact_below(passes, length: int) -> tuple[Pass, ...]:
    """``passes`` for query rows at positions >= ``length`` only, and one plain pass (true positions, every key) for
    the rows before: a causal model's first ``length`` positions then get exactly the unextended model's attention,
    and a row's result never depends on how long the sequence grows after it (so KV-cache decoding equals a full
    recompute)."""
    from dataclasses import replace

    plain = Pass("inside", Band(rows_to=length))
    return (plain,) + tuple(replace(p, band=replace(p.band, rows_from=length)) for p in passes)


def rotated(x: torch.Tensor, pos: torch.Tensor, to: Positions, inv_freq: torch.Tensor, apply=apply_rotation):
    """``x [B, H, S, D]`` (rotated at ``pos [B, S]``) rotated to ``to(pos)`` instead."""
    if to.is_identity:
        return x
    return apply(x, *rotation_tables(to(pos) - pos, inv_freq))


def matmul_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32 (``[..., n, k] @ [..., k, m]``). Half-precision ``b`` (keys, values) is read as it is,
    with float32 accumulation and output (``torch.bmm(..., out_dtype=)`` on CUDA), instead of being copied to
    float32."""
    if b.is_cuda and b.dtype in (torch.float16, torch.bfloat16) and _OUT_DTYPE[0]:
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a3 = a.to(b.dtype).expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
        b3 = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
        try:
            return torch.bmm(a3, b3, out_dtype=torch.float32).view(*lead, a.shape[-2], b.shape[-1])
        except (TypeError, RuntimeError):
            _OUT_DTYPE[0] = False
    return torch.matmul(a.to(torch.float32), b.to(torch.float32))


_OUT_DTYPE = [True]  # whether torch.matmul(..., out_dtype=) works here (found out on first use)


def gqa_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Float32 logits ``[B, Hkv, r, Q, K]`` of ``q [B, H, Q, D]`` against ``k [B, Hkv, K, D]`` (H = r * Hkv): the query
    heads of a group share one read of their key head, no copies of K."""
    B, H, Q, D = q.shape
    Hkv = k.shape[1]
    out = matmul_f32(q.reshape(B, Hkv, (H // Hkv) * Q, D), k.transpose(-1, -2))
    return (out * scale).view(B, Hkv, H // Hkv, Q, k.shape[2])


def key_reads(passes) -> tuple:
    """How :func:`dense_attention` reads the keys: per distinct key rotation ``(k_map, q_maps, members)``, the
    distinct query rotations paired with it (stacked as the rows of one matmul) and each pass with the index of its
    query rotation among them."""
    out = []
    for k_map in dict.fromkeys(p.k for p in passes):
        group = [p for p in passes if p.k == k_map]
        q_maps = tuple(dict.fromkeys(p.q for p in group))
        out.append((k_map, q_maps, tuple((p, q_maps.index(p.q)) for p in group)))
    return tuple(out)


def dense_attention(
    query,
    key,
    value,
    q_pos,
    k_pos,
    passes,
    inv_freq,
    *,
    mask: torch.Tensor | None,
    scale: float,
    logit_scale: torch.Tensor | None = None,
    reads: tuple | None = None,
) -> torch.Tensor:
    """Exact multi-pass attention: each pair's logit from the pass that covers it, one float32 softmax.

    ``query [B,H,Q,D]`` and ``key [B,Hkv,K,D]`` rotated at their true positions ``q_pos [B,Q]``, ``k_pos [B,K]``;
    ``mask [B,1,Q,K]`` bool (causality and padding); ``logit_scale [B]`` optional. A pair no pass covers is masked.
    Grouped query heads read their key head once (no copies of K); keys are re-rotated once per distinct key
    rotation, and read once by one matmul for every query rotation the passes pair with them (passes with the same
    rotations, such as the plain rows and the near window, share their logits). ``reads``: :func:`key_reads` of
    ``passes``, built ahead for a compiled caller. Returns ``[B,H,Q,D]`` float32."""
    B, H, Q, _ = query.shape
    Hkv = key.shape[1]
    logits = covered = None
    for k_map, q_maps, members in reads if reads is not None else key_reads(passes):
        qs = [rotated(query, q_pos, m, inv_freq) for m in q_maps]
        lg_all = gqa_logits(
            qs[0] if len(qs) == 1 else torch.cat(qs, dim=2), rotated(key, k_pos, k_map, inv_freq), scale
        )
        for p, at in members:
            lg = lg_all[..., at * Q : (at + 1) * Q, :]
            sel = p.band.contains(q_pos, k_pos)[:, None, None]  # [B, 1, 1, Q, K]
            logits = torch.where(sel, lg, lg.new_tensor(-math.inf) if logits is None else logits)
            covered = sel if covered is None else covered | sel
    if logit_scale is not None:
        logits = logits * logit_scale.to(torch.float32)[:, None, None, None, None]
    allowed = covered if mask is None else covered & mask[:, :, None]
    logits = logits.masked_fill(~allowed, -math.inf)
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # rows that may see nothing: zeros
    out = matmul_f32(probs.reshape(B, Hkv, -1, key.shape[2]), value)  # [B, Hkv, r * Q, D]
    return out.reshape(B, H, Q, value.shape[-1])
