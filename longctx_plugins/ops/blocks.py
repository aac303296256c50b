"""Block-sparse structure computed directly from document boundaries / positions (never S x S).

FlexAttention needs, per (query block, key block), whether the block is empty, partial (the ``mask_mod`` is
evaluated inside) or full (no masking). For rules made of document ranges and position distances this is
decided from per-block ranges in O((S / block)^2), without compiling or evaluating the rule per element.
The classification may only err towards "partial": ``mask_mod`` then decides exactly.
"""

from __future__ import annotations

import torch


def block_ranges(values: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block min and max of a ``[B, T]`` tensor that is non-decreasing along T (first/last element)."""
    b, t = values.shape
    nb = -(-t // block)
    starts = torch.arange(nb, device=values.device) * block
    ends = torch.clamp(starts + block - 1, max=t - 1)
    return values[:, starts], values[:, ends]


def _tail(t: int, block: int, device) -> torch.Tensor:
    """True for blocks that are cut by the sequence end (never mark those full)."""
    nb = -(-t // block)
    tail = torch.zeros(nb, dtype=torch.bool, device=device)
    if t % block:
        tail[-1] = True
    return tail


def causal_blocks(nq: int, nk: int, device, causal: bool):
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    if not causal:
        ones = torch.ones(nq, nk, dtype=torch.bool, device=device)
        return ones, ones
    return j <= i, j < i


def anchor_blocks(doc_ids: torch.Tensor, block: int, causal: bool):
    """(any, full) ``[B, nq, nk]`` for the anchor rule over non-decreasing ``doc_ids`` (0 = anchor)."""
    lo, hi = block_ranges(doc_ids, block)
    nq = lo.shape[1]
    c_any, c_full = causal_blocks(nq, nq, doc_ids.device, causal)
    overlap = (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])
    has_anchor_key = (lo == 0)[:, None, :]
    any_ = (overlap | has_anchor_key) & c_any
    single = lo == hi
    same = single[:, :, None] & single[:, None, :] & (lo[:, :, None] == lo[:, None, :])
    tail = _tail(doc_ids.shape[1], block, doc_ids.device)
    full = same & c_full & ~tail[None, :, None] & ~tail[None, None, :]
    return any_, full & any_


def band_blocks(q_pos, k_pos, key_valid, block: int, band, causal: bool):
    """(any, full) ``[B, nq, nk]`` for the pairs of ``band`` (a :class:`~longctx_plugins.ops.passes.Band`:
    ``lo <= floor(i / q_div) - floor(j / k_div) <= hi``) under causality and key padding.

    ``q_pos`` / ``k_pos`` ``[B, T]`` must be non-decreasing (the floor maps keep them so); ``key_valid`` ``[B, T]``
    bool or None. Interval arithmetic on per-block ranges: exact for "empty", conservative for "full"."""
    from .passes import floor_div

    qlo, qhi = block_ranges(floor_div(q_pos, band.q_div), block)
    klo, khi = block_ranges(floor_div(k_pos, band.k_div), block)
    nq, nk = qlo.shape[1], klo.shape[1]
    c_any, c_full = causal_blocks(nq, nk, q_pos.device, causal)
    dmin = qlo[:, :, None] - khi[:, None, :]
    dmax = qhi[:, :, None] - klo[:, None, :]
    rlo, rhi = block_ranges(q_pos, block)  # the rows a block holds, against the band's row range
    rows_any = ((rhi >= band.rows_from) & (rlo < band.rows_to))[:, :, None]
    rows_all = ((rlo >= band.rows_from) & (rhi < band.rows_to))[:, :, None]
    any_ = (dmax >= band.lo) & (dmin <= band.hi) & c_any & rows_any
    ok = (
        rows_all
        & ~_tail(q_pos.shape[1], block, q_pos.device)[None, :, None]
        & ~_tail(k_pos.shape[1], block, q_pos.device)[None, None, :]
    )
    if key_valid is not None:
        ok = ok & block_all(key_valid, block)[:, None, :]
    full = (dmin >= band.lo) & (dmax <= band.hi) & c_full & ok & any_
    return any_, full


def to_block_mask(any_: torch.Tensor, full: torch.Tensor, mask_mod, q_len: int, kv_len: int, block: int):
    """Build a FlexAttention ``BlockMask`` from (any, full) ``[B, nq, nk]`` block maps."""
    from torch.nn.attention.flex_attention import BlockMask

    partial = any_ & ~full

    def compress(m):
        m = m[:, None].to(torch.int32)  # [B, 1, nq, nk]
        num = m.sum(-1).to(torch.int32)
        idx = torch.argsort(m, dim=-1, descending=True, stable=True).to(torch.int32)
        return num, idx

    kv_num, kv_idx = compress(partial)
    full_num, full_idx = compress(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(q_len, kv_len)
    )


def block_all(values: torch.Tensor, block: int) -> torch.Tensor:
    """``[B, nb]``: True where every element of the block is True (a short tail block counts its real part)."""
    b, t = values.shape
    nb = -(-t // block)
    padded = torch.nn.functional.pad(values.to(torch.bool), (0, nb * block - t), value=True)
    return padded.view(b, nb, block).all(-1)
