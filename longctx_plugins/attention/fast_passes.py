"""The fast path of the position-method attentions (CUDA, no gradients where fused kernels are used): one attention
per pass, merged by log-sum-exp.

Each pass takes the first of these that applies to it:
* every pair beyond a distance (a far pass): a causal kernel with its log-sum-exp over rows and keys sliced so the
  band becomes ordinary causal attention (:mod:`.kernels.fused_lse`, cuDNN / flash);
* opt-in (``dense_lse_kernels`` including ``"tiles"`` or ``"window"``; both measured slower than the default on H100 /
  H200): neighbour windows and Dual Chunk Attention's chunk relations as causal-kernel calls over chunks
  (:mod:`.kernels.causal_tiles`), or on flash attention's local window and packed chunks
  (:mod:`.kernels.flash_window`);
* Dual Chunk Attention's chunks one query chunk at a time on the causal kernel;
* otherwise FlexAttention with a block-sparse mask built from the pass's band (also the path with gradients).
The fused kernels need positions 0..L-1 without padding (decided once per forward).
"""

from __future__ import annotations

import torch

from ..ops import blocks, masks
from ..ops import passes as P
from ..ops import rope as rope_ops
from ..ops.dense import repeat_kv
from ..ops.lse import merge_pair
from . import plan as plans
from .kernels import causal_tiles, flash_window, flex, fused_lse


def _pass_layout(plan, q_pos, k_pos):
    """What the flex path needs of this forward's positions, built once: whether positions are monotone (block maps
    from positions) and contiguous 0..L-1 without padding (fused-kernel passes). Two host syncs."""
    monotone = not plan.windowed and bool((q_pos[:, 1:] >= q_pos[:, :-1]).all() if q_pos.shape[1] > 1 else True)
    contiguous = bool((q_pos == torch.arange(q_pos.shape[1], device=q_pos.device)).all())
    return {"monotone": monotone, "contiguous": contiguous and plan.key_valid() is None and not plan.windowed}


def _block_mask(plan, p: P.Pass, q_pos, k_pos, layout):
    valid = plan.key_valid()
    mod = masks.band_mod(p.band, q_pos, k_pos, plan.causal, valid)
    if not layout["monotone"]:  # windowed layers or unordered positions: evaluate the rule with transformers'
        return plan.transformers_block_mask(masks.band_mod(p.band, q_pos, k_pos, False, None))
    any_, full = blocks.band_blocks(q_pos, k_pos, valid, plans.BLOCK, p.band, plan.causal)
    return blocks.to_block_mask(any_, full, mod, plan.q_length, plan.kv_length, plans.BLOCK)


def flex_passes(plan, query, key, value, q_pos, k_pos, inv_freq, passes, scale, logit_scale):
    merge = flex.compiled(merge_pair, query.device)
    apply = flex.compiled(rope_ops.apply_rotation, query.device)  # tables stay outside: no per-head cos/sin
    layout = plan.once("pass_layout", lambda: _pass_layout(plan, q_pos, k_pos))
    fast = layout["contiguous"] and not torch.is_grad_enabled()
    kernels = plan.options.dense_lse_kernels
    causal_kernels = tuple(k for k in kernels if k not in ("tiles", "window"))
    kernel = plan.once("fused_kernel", lambda: fused_lse.choose(causal_kernels, query) if fast else None)
    tiles = plan.once("causal_tiles", lambda: _opted(kernels, "tiles") and _tiles_usable(kernel, query))
    window = plan.once(
        "window_kernel", lambda: _window_kernel(query, key) if fast and _opted(kernels, "window") else None
    )
    if logit_scale is not None:
        query = query * logit_scale.to(query.dtype)[:, None, None, None]
    out = lse = None
    rotated_k: dict = {}
    for p in passes:
        q = P.rotated(query, q_pos, p.q, inv_freq, apply)
        if p.k not in rotated_k:  # passes that rotate keys alike share them
            rotated_k[p.k] = P.rotated(key, k_pos, p.k, inv_freq, apply)
        k = rotated_k[p.k]
        res = _fast_pass(kernel, window, tiles, p, q, k, value, scale, plan.causal)
        if res is None:
            bm = plan.once(("pass_block_mask", p), lambda: _block_mask(plan, p, q_pos, k_pos, layout))
            o, l_ = flex.attention(q, k, value, bm, scale, plan.kernel_options, lse=True)
            out, lse = (o, l_) if out is None else merge(out, lse, o, l_)
            continue
        if res == "empty":
            continue
        if out is None:
            out = torch.zeros_like(query)
            lse = torch.full(query.shape[:3], float("-inf"), device=query.device, dtype=torch.float32)
        for o, l_, rows in res if isinstance(res, list) else [res]:  # merged into the rows a part reaches
            out[:, :, rows], lse[..., rows] = merge(out[:, :, rows], lse[..., rows], o, l_)
    return out


def _fused_pass(kernel, tiles: bool, p: P.Pass, q, k, v, scale, causal: bool):
    """A pass over all pairs at distance >= lo (or <= hi, keys right of the query in encoders) on a fused causal
    kernel: rows and keys sliced so the band becomes ordinary causal attention (reversed for the right side).
    Returns ``(out, lse, rows)`` for the query rows the pass reaches (its row range included), None when the pass is
    not such a band, "empty" when it holds no pair at this length."""
    band, L = p.band, q.shape[2]
    if not band.is_distance:
        return None
    n_rep = q.shape[1] // k.shape[1]
    lo = max(band.lo, 0) if causal else band.lo
    if tiles and causal and lo == 0 and 0 <= band.hi < float("inf"):  # a neighbour window: causal tiles
        r0, r1 = int(max(band.rows_from, 0)), int(min(L, band.rows_to))
        if r0 >= r1:
            return "empty"
        kk, vv = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        return causal_tiles.window(kernel, q, kk, vv, scale, int(band.hi), r0, r1) or "empty"
    if band.hi == float("inf") and lo >= 0:  # query i sees keys j <= i - off, rows [r0, r1)
        off = int(lo)
        r0, r1 = max(off, band.rows_from), min(L, band.rows_to)
        r0, r1 = int(max(r0, 0)), int(r1)
        if r0 >= r1:
            return "empty"
        kk, vv = repeat_kv(k[:, :, : r1 - off], n_rep), repeat_kv(v[:, :, : r1 - off], n_rep)
        o, l_ = fused_lse.causal_attention_lse(kernel, q[:, :, off:r1], kk, vv, scale)
        return o[:, :, r0 - off :], l_[..., r0 - off :], slice(r0, r1)
    if band.lo == -float("inf") and band.hi < 0 and band.all_rows and not causal:
        off = int(-band.hi)  # query i sees keys j >= i + off: reverse both sequences and it is causal again
        if off >= L:
            return "empty"
        kk, vv = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        o, l_ = fused_lse.causal_attention_lse(
            kernel, q[:, :, : L - off].flip(2), kk[:, :, off:].flip(2), vv[:, :, off:].flip(2), scale
        )
        return o.flip(2), l_.flip(2), slice(0, L - off)
    return None


def _opted(kernels: tuple[str, ...], name: str) -> bool:
    """Whether the options ask for ``name`` ("tiles", "window": opt-in, off by default)."""
    return name in kernels


def _window_kernel(query, key) -> str | None:
    """``"grouped"`` when the flash window kernel takes ``key`` with its own (fewer) heads, ``"repeat"`` when it runs
    on repeated key heads, None when it is not usable here (decided once per forward)."""
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16) or query.shape[-1] > 256:
        return None
    d = query.shape[-1]
    if query.shape[1] != key.shape[1] and flash_window.usable(query.device, query.dtype, d, grouped=True):
        return "grouped"
    return "repeat" if flash_window.usable(query.device, query.dtype, d) else None


def _tiles_usable(kernel, query) -> bool:
    """Whether windows and chunks may run as causal tiles on ``kernel`` (checked once per device, dtype, head dim)."""
    if kernel is None:
        return False
    if kernel == "exact":  # tests' float32 stand-in for the kernel
        return True
    return causal_tiles.usable(kernel, query.device, query.dtype, query.shape[-1])


def _fast_pass(kernel, window, tiles: bool, p: P.Pass, q, k, v, scale, causal: bool):
    """The pass on fused kernels (see the module docstring): ``(out, lse, rows)``, a list of them, "empty", or None
    when no fused kernel takes it."""
    res = _fused_pass(kernel, tiles, p, q, k, v, scale, causal) if kernel else None
    if res is None and window and causal:
        kw, vw = (k, v) if window == "grouped" else (repeat_kv(x, q.shape[1] // k.shape[1]) for x in (k, v))
        res = _window_pass(kernel, p, q, kw, vw, scale)
    if res is None and tiles and causal:
        res = _chunk_pass(kernel, p, q, k, v, scale)
    if res is None and kernel:
        res = _fused_chunk_pass(kernel, p, q, k, v, scale)
    return res


def _chunk_pass(kernel, p: P.Pass, q, k, v, scale):
    """One of Dual Chunk Attention's chunk relations (``floor(i/c) - floor(j/c)`` equal to 0, equal to 1, or >= 2) on
    the causal kernel (:func:`.kernels.causal_tiles.chunk_blocks`; for >= 2 also every key at distance >= 2c, one
    causal call over shifted rows). Returns a list of ``(out, lse, rows)``, "empty", or None."""
    band, L = p.band, q.shape[2]
    c = band.q_div
    if band.is_distance or band.k_div != c:
        return None
    r0, r1 = _rows(band, L)
    if r0 >= r1:
        return "empty"
    n_rep = q.shape[1] // k.shape[1]
    kk, vv = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if (band.lo, band.hi) in ((0, 0), (1, 1)):
        d, shape = int(band.lo), ("causal" if band.lo == 0 else "full")
        return causal_tiles.chunk_blocks(kernel, q, kk, vv, scale, c, d, shape, r0, r1) or "empty"
    if band.lo != 2 or band.hi != float("inf"):
        return None
    parts = causal_tiles.chunk_blocks(kernel, q, kk, vv, scale, c, 2, "after", r0, r1)
    a = max(r0, 2 * c)
    if a < r1:  # query i sees every key j <= i - 2c
        o, l_ = fused_lse.causal_attention_lse(
            kernel, q[:, :, 2 * c : r1], kk[:, :, : r1 - 2 * c], vv[:, :, : r1 - 2 * c], scale
        )
        parts.append((o[:, :, a - 2 * c :], l_[..., a - 2 * c :], slice(a, r1)))
    return parts or "empty"


def _rows(band: P.Band, L: int) -> tuple[int, int]:
    return int(max(band.rows_from, 0)), int(min(band.rows_to, L))


def _window_pass(kernel, p: P.Pass, q, k, v, scale):
    """A causal pass that is a neighbour window (``0 <= i - j <= h``) or one of Dual Chunk Attention's chunk relations
    on the flash window kernel. Returns ``(out, lse, rows)``, a list of them, "empty", or None."""
    band, L = p.band, q.shape[2]
    r0, r1 = _rows(band, L)
    if r0 >= r1:
        return "empty"
    if band.is_distance and band.lo <= 0 and band.hi != float("inf") and band.hi >= 0:
        o, l_ = flash_window.band(q, k, v, scale, int(band.hi), r0, r1)
        return o, l_, slice(r0, r1)
    c = band.q_div
    if band.is_distance or band.k_div != c:
        return None
    m0 = r0 // c
    if (band.lo, band.hi) in ((0, 0), (1, 1)):
        fn = flash_window.chunk_diagonal if band.lo == 0 else flash_window.chunk_previous
        start = max(m0, int(band.lo)) * c
        if start >= r1:
            return "empty"
        o, l_ = fn(q, k, v, scale, c, m0)
        a = max(r0, start)
        return o[:, :, a - start : r1 - start], l_[..., a - start : r1 - start], slice(a, r1)
    if band.lo == 2 and band.hi == float("inf") and kernel and r1 == L:
        parts = flash_window.chunk_upper(q, k, v, scale, c, m0)  # chunk m - 2 above its diagonal
        a = max(r0, 2 * c)  # and every key at distance >= 2c on the causal kernel: i sees j <= i - 2c
        if a < L:
            n_rep = q.shape[1] // k.shape[1]
            kk, vv = repeat_kv(k[:, :, : L - 2 * c], n_rep), repeat_kv(v[:, :, : L - 2 * c], n_rep)
            o, l_ = fused_lse.causal_attention_lse(kernel, q[:, :, 2 * c :], kk, vv, scale)
            parts.append((o[:, :, a - 2 * c :], l_[..., a - 2 * c :], slice(a, L)))
        parts = [causal_tiles.from_row(part, r0) for part in parts]
        return [part for part in parts if part is not None] or "empty"
    return None


def _fused_chunk_pass(kernel, p: P.Pass, q, k, v, scale):
    """A pass over whole chunks (Dual Chunk Attention: ``floor(i/c) - floor(j/c)`` equal to 0, equal to 1, or >= 2) on
    fused kernels, one query chunk at a time: its own chunk causally, the previous chunk or everything before that in
    full. Returns a list of ``(out, lse, rows)`` parts, "empty", or None when the pass is not such a band. Query rows
    outside the pass's row range are computed and dropped (at most one chunk)."""
    band, L = p.band, q.shape[2]
    c = band.q_div
    if (
        band.k_div != c
        or c == 1
        or band.lo not in (0, 1, 2)
        or band.hi not in (band.lo, float("inf"))
        or (band.lo == 2) != (band.hi == float("inf"))
    ):
        return None
    n_rep = q.shape[1] // k.shape[1]
    parts = []
    first_chunk = int(max(band.rows_from, 0)) // c
    for m in range(first_chunk, -(-L // c)):
        a, e = m * c, min((m + 1) * c, L)
        r0, r1 = int(max(a, band.rows_from)), int(min(e, band.rows_to))
        if r0 >= r1:
            continue
        if band.lo == 0:
            keys, causal = slice(a, e), True
        elif band.lo == 1:
            keys, causal = slice(a - c, a), False
        else:
            keys, causal = slice(0, a - c), False
        if keys.stop <= keys.start or keys.start < 0:
            continue
        kk, vv = repeat_kv(k[:, :, keys], n_rep), repeat_kv(v[:, :, keys], n_rep)
        o, l_ = fused_lse.causal_attention_lse(kernel, q[:, :, a:e], kk, vv, scale, causal=causal)
        parts.append((o[:, :, r0 - a : r1 - a], l_[..., r0 - a : r1 - a], slice(r0, r1)))
    return parts or "empty"
