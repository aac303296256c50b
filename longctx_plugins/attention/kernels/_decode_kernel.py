"""The Triton kernel behind :mod:`.decode_passes` (imported only when Triton is installed; see that module).

Whether it runs compiled or in Triton's interpreter is decided when this module is imported (``TRITON_INTERPRET=1``
at that moment gives the interpreter, which runs CPU tensors).

Layout (split-K, as flash-decoding): one program per (batch row, key head, split of the cache). A program holds the
query heads of its key head (one query row each: a decode step) and sweeps its key blocks once: each block of keys
and values is read once, for every pass and every query head of the group. Per pass (a runtime table) the keys of
the block the pass covers are found from their positions; the keys are re-rotated in registers when the pass moves
them (angle = new position - true position, as :func:`longctx_plugins.ops.passes.rotated`), the pass's query copy is
multiplied in, and the logits are kept where the pass covers the pair; a pass with no pair in the block costs one
reduction. One float32 online softmax (exp2) runs over all passes; each split writes its ``(m, l, acc)``, merged by
the host.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._passes_kernel import _floor_div

INTERPRET = bool(triton.knobs.runtime.interpret)
TABLE_WIDTH = 12  # ints per pass in the table (see decode_passes.pass_table)


@triton.jit
def _split(
    q_ptr,
    k_ptr,
    v_ptr,
    kpos_ptr,
    qpos_ptr,
    valid_ptr,
    ls_ptr,
    tab_ptr,
    inv_ptr,
    m_ptr,
    l_ptr,
    acc_ptr,
    s_qc,
    s_qb,
    s_qh,
    s_kb,
    s_kh,
    s_kn,
    s_vb,
    s_vh,
    s_vn,
    S,
    HKV,
    R,
    SPLITS,
    BLOCKS_PER_SPLIT,
    scale_log2,
    NP: tl.constexpr,
    KMOVES: tl.constexpr,
    HALF: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_LS: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)  # 64-bit offsets: a batch of long caches passes 2**31 elements
    kvh = (pid_bh % HKV).to(tl.int64)
    rows = tl.arange(0, R_PAD)
    row_ok = rows < R
    heads = kvh * R + rows
    d = tl.arange(0, HALF)
    dv = tl.arange(0, 2 * HALF)
    i = tl.load(qpos_ptr + b)
    inv = tl.load(inv_ptr + d)
    scale = tl.cast(scale_log2, tl.float32)  # a compiled graph passes Python floats as float64
    if HAS_LS:
        scale = scale * tl.load(ls_ptr + b)
    k_base = k_ptr + b * s_kb + kvh * s_kh
    v_base = v_ptr + b * s_vb + kvh * s_vh
    q_base = q_ptr + b * s_qb + heads[:, None] * s_qh + d[None, :]
    m_i = tl.full([R_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([R_PAD], tl.float32)
    acc = tl.zeros([R_PAD, 2 * HALF], tl.float32)
    n_blocks = tl.cdiv(S, BLOCK_N)
    first = pid_s * BLOCKS_PER_SPLIT
    last = tl.minimum(first + BLOCKS_PER_SPLIT, n_blocks)
    for blk in range(first, last):
        cols = (blk * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # 64-bit: long caches of many heads
        ok = cols < S
        kp = tl.load(kpos_ptr + b * S + cols, mask=ok, other=0)
        if HAS_VALID:
            ok = ok & (tl.load(valid_ptr + b * S + cols, mask=ok, other=0) != 0)
        k_lo = tl.load(k_base + cols[:, None] * s_kn + d[None, :], mask=ok[:, None], other=0.0)
        k_hi = tl.load(k_base + cols[:, None] * s_kn + (d[None, :] + HALF), mask=ok[:, None], other=0.0)
        logits = tl.full([R_PAD, BLOCK_N], float("-inf"), tl.float32)
        for p in tl.static_range(NP):
            t = tab_ptr + p * 12
            lo = tl.load(t)
            hi = tl.load(t + 1)
            q_div = tl.load(t + 2)
            k_div = tl.load(t + 3)
            rows_from = tl.load(t + 4)
            rows_to = tl.load(t + 5)
            dist = _floor_div(i, q_div) - _floor_div(kp, k_div)
            sel = ok & (dist >= lo) & (dist <= hi) & (i >= rows_from) & (i < rows_to)
            if tl.max(sel.to(tl.int32), 0) > 0:
                q_lo = tl.load(q_base + tl.load(t + 6) * s_qc, mask=row_ok[:, None], other=0.0)
                q_hi = tl.load(q_base + tl.load(t + 6) * s_qc + HALF, mask=row_ok[:, None], other=0.0)
                if (KMOVES >> p) & 1:  # the pass re-rotates keys: to a * j + b * floor(j / div) + c (<= max)
                    new = tl.load(t + 7) * kp + tl.load(t + 8) * _floor_div(kp, tl.load(t + 9)) + tl.load(t + 10)
                    new = tl.minimum(new, tl.load(t + 11))
                    ang = (new - kp).to(tl.float32)[:, None] * inv[None, :]
                    c = tl.cos(ang)
                    s = tl.sin(ang)
                    lo32 = k_lo.to(tl.float32)
                    hi32 = k_hi.to(tl.float32)
                    kk_lo = (lo32 * c - hi32 * s).to(k_lo.dtype)
                    kk_hi = (hi32 * c + lo32 * s).to(k_lo.dtype)
                else:
                    kk_lo = k_lo
                    kk_hi = k_hi
                if UPCAST:  # the interpreter's bfloat16 dot is wrong (Triton 3.7.1): the same products in float32
                    q_lo = q_lo.to(tl.float32)
                    q_hi = q_hi.to(tl.float32)
                    kk_lo = kk_lo.to(tl.float32)
                    kk_hi = kk_hi.to(tl.float32)
                if IEEE or UPCAST:
                    qk = tl.dot(q_lo, tl.trans(kk_lo), input_precision="ieee")
                    qk += tl.dot(q_hi, tl.trans(kk_hi), input_precision="ieee")
                else:
                    qk = tl.dot(q_lo, tl.trans(kk_lo))
                    qk += tl.dot(q_hi, tl.trans(kk_hi))
                logits = tl.where(sel[None, :], qk, logits)
        m_new = tl.maximum(m_i, tl.max(logits, 1) * scale)  # scale > 0
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet
        pr = tl.math.exp2(logits * scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(pr, 1)
        v = tl.load(v_base + cols[:, None] * s_vn + dv[None, :], mask=ok[:, None], other=0.0)
        if UPCAST:
            pv = tl.dot(pr, v.to(tl.float32), input_precision="ieee")
        elif IEEE:
            pv = tl.dot(pr, v, input_precision="ieee")
        else:
            pv = tl.dot(pr.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    out = (b * (HKV * R) + heads) * SPLITS + pid_s
    tl.store(m_ptr + out, m_i, mask=row_ok)
    tl.store(l_ptr + out, l_i, mask=row_ok)
    tl.store(acc_ptr + out[:, None] * (2 * HALF) + dv[None, :], acc, mask=row_ok[:, None])
