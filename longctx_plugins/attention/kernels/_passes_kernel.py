"""The Triton kernel behind :mod:`.triton_passes` (imported only when Triton is installed; see that module).

Whether it runs compiled or in Triton's interpreter is decided when this module is imported (``TRITON_INTERPRET=1``
at that moment gives the interpreter, which runs CPU tensors).

Layout: one program per (query block, batch * head) loops over the passes; for each pass it loads that pass's query
copy once and sweeps the key blocks where the pass can have pairs, carrying one online-softmax state across all
passes (the passes partition the pairs, so each pair is counted once). With ``CONTIGUOUS`` (query ``i`` at position
``K - Q + i``, key ``j`` at ``j``) the key-block ranges come from scalar band arithmetic and the tiles wholly inside
the pass (and causal, and not padded) run without any element-wise mask; otherwise positions are loaded and every
causal key block is checked against the pass from its position bounds and masked element-wise.
"""

from __future__ import annotations

import triton
import triton.language as tl

INTERPRET = bool(triton.knobs.runtime.interpret)
BIG = tl.constexpr(1 << 30)  # the pass table's infinity (positions and band bounds stay far below it)


@triton.jit
def _floor_div(a, d):
    """floor(a / d) for d >= 1 whatever the sign of a (integer ``//`` truncates on the GPU, floors in numpy)."""
    return tl.where(a >= 0, a // d, -((d - 1 - a) // d))


@triton.jit
def _ranges(pa, pb, lo, hi, qd, kd, rf, rt, K_LEN, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks of one pass for query positions ``[pa, pb]`` (contiguous mode): ``(r_lo, f_lo, f_hi, r_end)``, the
    pass's pairs lie in blocks ``[r_lo, r_end)`` and blocks ``[f_lo, f_hi)`` are wholly inside it (no mask)."""
    qa = tl.maximum(pa, rf)
    qb = tl.minimum(pb, rt - 1)
    last_chunk = (K_LEN - 1) // kd
    # key chunks floor(j / kd) in [floor(qa / qd) - hi, floor(qb / qd) - lo], clamped before scaling (no overflow)
    j_lo = tl.maximum(_floor_div(qa, qd) - hi, 0) * kd
    j_hi = tl.minimum(tl.minimum(_floor_div(qb, qd) - lo, last_chunk) * kd + kd - 1, K_LEN - 1)
    if CAUSAL:
        j_hi = tl.minimum(j_hi, qb)
    r_lo = j_lo // BLOCK_N
    r_end = tl.where((qa > qb) | (j_lo > j_hi), r_lo, j_hi // BLOCK_N + 1)
    # whole tiles: every row in the pass, floor(j / kd) >= floor(pb / qd) - hi, floor(j / kd) <= floor(pa / qd) - lo
    s = tl.maximum(_floor_div(pb, qd) - hi, 0) * kd
    e = tl.minimum((tl.minimum(_floor_div(pa, qd) - lo, last_chunk + 1) + 1) * kd, K_LEN)
    if CAUSAL:
        e = tl.minimum(e, pa + 1)
    rows_whole = (pa >= rf) & (pb < rt)
    f_lo = tl.minimum(tl.maximum((s + BLOCK_N - 1) // BLOCK_N, r_lo), r_end)
    f_hi = tl.minimum(tl.maximum(tl.maximum(e, 0) // BLOCK_N, f_lo), r_end)
    f_lo = tl.where(rows_whole, f_lo, r_end)
    f_hi = tl.where(rows_whole, f_hi, r_end)
    return r_lo, f_lo, f_hi, r_end


@triton.jit
def _row_bounds(qpos, lo, hi, qd, kd, rf, rt):
    """Per query row, the key positions ``[L, U]`` of the band (rows outside ``[rf, rt)`` get an empty range): the
    element-wise mask is then two compares. Chunk indices are clamped before scaling, so nothing overflows."""
    cl = (1 << 28) // kd + 2  # |positions| < 2**28: chunk indices beyond +-cl bound nothing more
    c = _floor_div(qpos, qd)
    lk = tl.minimum(tl.maximum(c - hi, -cl), cl) * kd
    uk = tl.minimum(tl.maximum(c - lo, -cl), cl) * kd + kd - 1
    rows = (qpos >= rf) & (qpos < rt)
    return tl.where(rows, lk, BIG), tl.where(rows, uk, -BIG)


@triton.jit
def _step(
    acc,
    m_i,
    l_i,
    q,
    k_ptr,
    v_ptr,
    kv_ptr,
    start_n,
    kpos,
    lk,
    uk,
    uc,
    offs_n,
    offs_d,
    s_kn,
    s_vn,
    K_LEN,
    scale,
    MASKED: tl.constexpr,
    CONTIGUOUS: tl.constexpr,
    HAS_VALID: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One key tile into the online softmax (exp2 domain). ``MASKED``: keys at positions ``[lk, uk]`` of each row
    (band and rows; contiguous: causality and padding folded in) and, general mode, key indices ``<= uc`` (causality,
    padding)."""
    cols = start_n + offs_n
    col_ok = cols < K_LEN
    if MASKED:
        k = tl.load(k_ptr + (cols[None, :] * s_kn + offs_d[:, None]), mask=col_ok[None, :], other=0.0)
        v = tl.load(v_ptr + (cols[:, None] * s_vn + offs_d[None, :]), mask=col_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptr + (cols[None, :] * s_kn + offs_d[:, None]))
        v = tl.load(v_ptr + (cols[:, None] * s_vn + offs_d[None, :]))
    if UPCAST:  # the interpreter's bfloat16 dot is wrong (Triton 3.7.1): the same products in float32
        k = k.to(tl.float32)
    if IEEE or UPCAST:
        qk = tl.dot(q, k, input_precision="ieee")
    else:
        qk = tl.dot(q, k)
    if MASKED:
        ok = (kpos[None, :] >= lk[:, None]) & (kpos[None, :] <= uk[:, None])
        if not CONTIGUOUS:
            ok = ok & (cols[None, :] <= uc[:, None])
        qk = tl.where(ok, qk, float("-inf"))
    if HAS_VALID:
        kv = tl.load(kv_ptr + cols, mask=col_ok, other=1)
        qk = tl.where(kv[None, :] != 0, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * scale)  # scale > 0
    if MASKED or HAS_VALID:  # rows that have seen no allowed key keep m = -inf and l = 0
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    pr = tl.math.exp2(qk * scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(pr, 1)
    if UPCAST:
        pr = pr.to(v.dtype).to(tl.float32)
        v = v.to(tl.float32)
    if IEEE or UPCAST:
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _fwd(
    Qc,
    Kc,
    V,
    Out,
    Lse,
    QP,
    KP,
    KV,
    LS,
    TAB,
    s_qc,
    s_qb,
    s_qh,
    s_qm,
    s_kc,
    s_kb,
    s_kh,
    s_kn,
    s_vb,
    s_vh,
    s_vn,
    s_ob,
    s_oh,
    s_om,
    H,
    HKV,
    Q_LEN,
    K_LEN,
    qk_scale,
    NP: tl.constexpr,
    NQ: tl.constexpr,
    QC: tl.constexpr,
    KC: tl.constexpr,
    CAUSAL: tl.constexpr,
    CONTIGUOUS: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_LS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # TAB: 6 int32 per pass (lo, hi, q_div, k_div, rows_from, rows_to); QC / KC: 2 bits per pass, the index of the
    # pass's query copy in Qc and key copy in Kc (NQ, the number of query copies, only keys the autotuner).
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest causal rows first
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // HKV)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Q_LEN
    shift = K_LEN - Q_LEN  # causal by index: key j <= query i + shift
    qlim = offs_m + shift
    m_end = tl.minimum(pid_m * BLOCK_M + BLOCK_M, Q_LEN)  # past the block's last real row
    uc = tl.zeros([BLOCK_M], tl.int32) + (K_LEN - 1)  # the last key index each row may see (causality, padding)
    if CAUSAL:
        uc = tl.minimum(uc, qlim)
    if CONTIGUOUS:
        qpos = qlim
        pa = pid_m * BLOCK_M + shift
        pb = m_end - 1 + shift
    else:
        qpos = tl.load(QP + b * Q_LEN + offs_m, mask=row_ok, other=0)
        pa = tl.min(tl.where(row_ok, qpos, BIG), 0)
        pb = tl.max(tl.where(row_ok, qpos, -BIG), 0)
    scale = qk_scale * 1.4426950408889634  # exp2 domain
    if HAS_LS:
        scale = scale * tl.load(LS + b)
    q_base = Qc + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + offs_m[:, None].to(tl.int64) * s_qm + offs_d[None, :]
    k_base = Kc + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh  # scalar bases: tile pointers are built per tile
    v_ptr = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh
    kp_row = KP + b * K_LEN
    kv_row = KV + b * K_LEN
    n_blocks = tl.cdiv(K_LEN, BLOCK_N)
    if CAUSAL:
        n_blocks = tl.cdiv(tl.maximum(tl.minimum(K_LEN, m_end + shift), 0), BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for p in range(NP):  # one query copy resident at a time; one softmax state across the passes
        lo = tl.load(TAB + p * 6)
        hi = tl.load(TAB + p * 6 + 1)
        qd = tl.load(TAB + p * 6 + 2)
        kd = tl.load(TAB + p * 6 + 3)
        rf = tl.load(TAB + p * 6 + 4)
        rt = tl.load(TAB + p * 6 + 5)
        qc = (QC >> (2 * p)) & 3
        kc = (KC >> (2 * p)) & 3
        q = tl.load(q_base + qc.to(tl.int64) * s_qc, mask=row_ok[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        k_ptr = k_base + kc.to(tl.int64) * s_kc
        lk, uk = _row_bounds(qpos, lo, hi, qd, kd, rf, rt)
        if CONTIGUOUS:
            uk = tl.minimum(uk, uc)
            r_lo, f_lo, f_hi, r_end = _ranges(pa, pb, lo, hi, qd, kd, rf, rt, K_LEN, CAUSAL, BLOCK_N)
            for start_n in range(f_lo * BLOCK_N, f_hi * BLOCK_N, BLOCK_N):  # tiles wholly inside the pass
                start_n = tl.multiple_of(start_n, BLOCK_N)
                acc, m_i, l_i = _step(
                    acc,
                    m_i,
                    l_i,
                    q,
                    k_ptr,
                    v_ptr,
                    kv_row,
                    start_n,
                    start_n + offs_n,
                    lk,
                    uk,
                    uc,
                    offs_n,
                    offs_d,
                    s_kn,
                    s_vn,
                    K_LEN,
                    scale,
                    False,
                    True,
                    HAS_VALID,
                    IEEE,
                    UPCAST,
                )
            n_lead = f_lo - r_lo
            # the boundary tiles, masked: leading [r_lo, f_lo) and trailing [f_hi, r_end), one loop (fewer registers)
            for t in range(0, n_lead + r_end - f_hi):
                start_n = tl.where(t < n_lead, r_lo + t, f_hi + t - n_lead) * BLOCK_N
                acc, m_i, l_i = _step(
                    acc,
                    m_i,
                    l_i,
                    q,
                    k_ptr,
                    v_ptr,
                    kv_row,
                    start_n,
                    start_n + offs_n,
                    lk,
                    uk,
                    uc,
                    offs_n,
                    offs_d,
                    s_kn,
                    s_vn,
                    K_LEN,
                    scale,
                    True,
                    True,
                    HAS_VALID,
                    IEEE,
                    UPCAST,
                )
        elif (pb >= rf) & (pa < rt):  # general positions: every causal key block, skipped from its position bounds
            for start_n in range(0, n_blocks * BLOCK_N, BLOCK_N):
                cols = start_n + offs_n
                col_ok = cols < K_LEN
                kp = tl.load(kp_row + cols, mask=col_ok, other=0)
                kmin = tl.min(tl.where(col_ok, kp, BIG), 0)
                kmax = tl.max(tl.where(col_ok, kp, -BIG), 0)
                dmin = _floor_div(pa, qd) - _floor_div(kmax, kd)
                dmax = _floor_div(pb, qd) - _floor_div(kmin, kd)
                if (dmax >= lo) & (dmin <= hi):
                    acc, m_i, l_i = _step(
                        acc,
                        m_i,
                        l_i,
                        q,
                        k_ptr,
                        v_ptr,
                        kv_row,
                        start_n,
                        kp,
                        lk,
                        uk,
                        uc,
                        offs_n,
                        offs_d,
                        s_kn,
                        s_vn,
                        K_LEN,
                        scale,
                        True,
                        False,
                        HAS_VALID,
                        IEEE,
                        UPCAST,
                    )
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    o_ptr = Out + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + offs_m[:, None].to(tl.int64) * s_om + offs_d[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + bh.to(tl.int64) * Q_LEN + offs_m, lse, mask=row_ok)


def configs(head_dim: int) -> list:
    """Autotune candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dim; tune these on the GPU."""
    if head_dim <= 64:
        cand = [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)]
    elif head_dim <= 128:
        cand = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3)]
    else:
        cand = [(64, 64, 4, 2), (64, 32, 4, 3), (128, 32, 8, 2), (128, 64, 8, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in cand]


_tuned: dict = {}


def tuned(head_dim: int):
    """``_fwd`` autotuned over :func:`configs` (one autotuner per head dim)."""
    if head_dim not in _tuned:
        key = ["HEAD_DIM", "NP", "NQ", "QC", "KC", "CAUSAL", "CONTIGUOUS", "HAS_VALID", "HAS_LS"]
        _tuned[head_dim] = triton.autotune(configs(head_dim), key=key)(_fwd)
    return _tuned[head_dim]
