"""All passes of a position method (SelfExtend, Dual Chunk Attention, STRING) in ONE fused Triton attention kernel.

The multi-pass fast path (:mod:`longctx_plugins.attention.positional`) runs one attention per pass and merges them by
log-sum-exp. :func:`attention` computes the same result in a single online-softmax sweep over the keys:

* host side: the distinct rotated copies are built once with :func:`~longctx_plugins.ops.passes.rotated` (one query
  copy per distinct ``Pass.q`` map, one key copy per distinct ``Pass.k`` map; ``Positions.max`` clamps happen there),
  and a small pass table (band ``lo, hi, q_div, k_div, rows_from, rows_to`` as ints, infinities as ``+-2**30``; which
  query copy and key copy each pass uses);
* kernel: one program per (query block, batch * head) loops over the passes: it loads the pass's query copy once (one
  copy resident at a time) and sweeps the key blocks where that pass has pairs, carrying ONE float32 online softmax
  (exp2) across all passes, then ``P @ V``; the output and its log-sum-exp (natural log) are written. With
  ``contiguous=True`` (the caller vouches that query ``i`` sits at position ``K - Q + i`` and key ``j`` at ``j`` in
  every batch row: prefill without padding, decode tails) the key range of each pass comes from scalar band
  arithmetic and the tiles wholly inside a pass (and causal, and not padded) run without any element-wise mask, as
  flash attention's off-diagonal tiles do; otherwise (padding, arbitrary positions) positions are loaded and each
  causal key block is checked against each pass from its position bounds and masked element-wise.

Semantics are those of :func:`longctx_plugins.ops.passes.dense_attention` (the exact reference) for passes that
partition the pairs, as every method's passes do (a pair covered by two passes would be counted twice here, where the
reference takes the last one); pairs no pass covers are masked, ``causal`` is by index (key ``j <= i + K - Q``),
``key_valid`` masks padded keys, ``logit_scale [B]`` (positive) multiplies the logits; rows with no allowed key give 0
and an lse of ``-inf``. Float32 inputs use IEEE float32 products (no TF32); half inputs use the tensor cores with
float32 accumulation and ``P`` rounded to the input dtype before ``P @ V`` (as flash attention does).

Forward only (inference): there is no backward kernel; gradients use the existing exact path
(:func:`~longctx_plugins.ops.passes.dense_attention`). Call :func:`unsupported_reason` first and fall back when it
returns a reason. On CPU tensors the kernel runs only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
this module first imports the kernel), which is how the tests check it.
"""

from __future__ import annotations

import math

import torch

from ...ops import passes as P

HEAD_DIMS = (16, 32, 64, 128, 256)
MAX_PASSES = 4  # also the most distinct query copies / key copies (2-bit indices in the kernel)
_LIMIT = 1 << 30


def _kernel():
    from . import _passes_kernel

    return _passes_kernel


def _maps(passes, attr: str) -> list:
    out: list = []
    for p in passes:
        if getattr(p, attr) not in out:
            out.append(getattr(p, attr))
    return out


def _bound(x) -> int:
    """A band bound as an int of the table (infinities as the +-2**30 sentinels)."""
    if x == math.inf:
        return _LIMIT
    if x == -math.inf:
        return -_LIMIT
    return int(x)


def _band_problem(b: P.Band) -> str | None:
    for name in ("lo", "hi", "rows_from", "rows_to"):
        v = getattr(b, name)
        if not math.isinf(v) and (v != int(v) or abs(v) >= _LIMIT // 4):
            return f"band bound {name}={v} is not an integer below 2**28"
    if (
        int(b.q_div) != b.q_div
        or int(b.k_div) != b.k_div
        or not (1 <= b.q_div < _LIMIT // 4 and 1 <= b.k_div < _LIMIT // 4)
    ):
        return f"band divisors must be integers in [1, 2**28) (got q_div={b.q_div}, k_div={b.k_div})"
    return None


def unsupported_reason(query, key, value, passes, q_pos=None, k_pos=None) -> str | None:
    """Why the fused kernel cannot run these inputs (a sentence for a log line), or None when it can."""
    try:
        kern = _kernel()
    except ImportError as exc:
        return f"Triton is not installed ({exc})"
    interpret = kern.INTERPRET
    if query.device.type != "cuda" and not interpret:
        return f"the fused pass kernel needs CUDA tensors (got {query.device.type}; TRITON_INTERPRET=1 runs CPU ones)"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return "the fused pass kernel is forward only (no gradients); gradients use the exact path"
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not (
        query.dtype == key.dtype == value.dtype
    ):
        return f"dtypes {query.dtype}/{key.dtype}/{value.dtype}: the kernel takes one of float16, bfloat16, float32"
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return "query/key/value must be [B, H, S, D]"
    B, H, Q, D = query.shape
    if D not in HEAD_DIMS or key.shape[-1] != D or value.shape[-1] != D:
        return f"head dim {D} (values {value.shape[-1]}): the kernel supports {HEAD_DIMS}, equal for q, k and v"
    if key.shape[1] == 0 or H % key.shape[1] or key.shape[:3] != value.shape[:3] or key.shape[0] != B:
        return f"query heads {H} must be a multiple of key heads {key.shape[1]} (and k/v shapes equal)"
    if Q == 0 or key.shape[2] == 0:
        return "empty query or key sequence"
    if not 1 <= len(passes) <= MAX_PASSES:
        return f"{len(passes)} passes: the kernel takes 1 to {MAX_PASSES}"
    if len(_maps(passes, "q")) > MAX_PASSES or len(_maps(passes, "k")) > MAX_PASSES:
        return f"more than {MAX_PASSES} distinct query or key position maps"
    for p in passes:
        problem = _band_problem(p.band)
        if problem:
            return f"pass {p.name!r}: {problem}"
    for pos in (q_pos, k_pos):
        if pos is not None and pos.numel() and int(pos.abs().max()) >= _LIMIT // 4:
            return "positions must stay below 2**28"
    if B * H > 65535:
        return f"batch * heads = {B * H} exceeds the grid limit 65535"
    return None


def pass_table(passes) -> tuple[tuple[int, ...], int, int, int]:
    """``(table, NQ, QC, KC)``: 6 ints per pass, the number of query copies, and the 2-bit packed query / key copy
    index of each pass (in the order of :func:`_maps`)."""
    qmaps, kmaps = _maps(passes, "q"), _maps(passes, "k")
    table: list[int] = []
    qc = kc = 0
    for i, p in enumerate(passes):
        b = p.band
        table += [_bound(b.lo), _bound(b.hi), int(b.q_div), int(b.k_div), _bound(b.rows_from), _bound(b.rows_to)]
        qc |= qmaps.index(p.q) << (2 * i)
        kc |= kmaps.index(p.k) << (2 * i)
    return tuple(table), len(qmaps), qc, kc


_TABLES: dict = {}


def _table_tensor(table: tuple, device) -> torch.Tensor:
    """The pass table as an int32 tensor on ``device`` (cached: one small copy per distinct table and device)."""
    key = (table, str(device))
    if key not in _TABLES:
        _TABLES[key] = torch.tensor(table, dtype=torch.int32, device=device)
    return _TABLES[key]


def attention(
    query,
    key,
    value,
    q_pos,
    k_pos,
    passes,
    inv_freq,
    *,
    causal: bool,
    key_valid: torch.Tensor | None = None,
    scale: float,
    logit_scale: torch.Tensor | None = None,
    config: dict | None = None,
    contiguous: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused multi-pass attention (see the module docstring).

    ``query [B,H,Q,D]``, ``key``/``value [B,Hkv,K,D]`` rotated at their true positions ``q_pos [B,Q]``,
    ``k_pos [B,K]``; ``key_valid [B,K]`` bool; ``logit_scale [B]``. ``config``: fixed launch parameters
    ``{"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}`` instead of autotuning (always fixed under the
    interpreter). ``contiguous``: the caller's promise that ``q_pos[b] == arange(Q) + K - Q`` and ``k_pos[b] ==
    arange(K)`` for every row (not checked: that would cost a device sync); the kernel then derives positions from
    indices and skips the masks of whole tiles (see the module docstring). Returns ``(out [B,H,Q,D] in query's
    dtype, lse [B,H,Q] float32)``."""
    reason = unsupported_reason(query, key, value, passes, q_pos, k_pos)
    if reason:
        raise ValueError(reason)
    kern = _kernel()
    B, H, Q, D = query.shape
    K = key.shape[2]
    q_pos = q_pos.expand(B, Q)
    k_pos = k_pos.expand(B, K)
    table, nq, qc, kc = pass_table(passes)
    qcopies = torch.stack([P.rotated(query, q_pos, m, inv_freq) for m in _maps(passes, "q")]).contiguous()
    kcopies = torch.stack([P.rotated(key, k_pos, m, inv_freq) for m in _maps(passes, "k")]).contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, Q, device=query.device, dtype=torch.float32)
    qp = q_pos.to(torch.int32).contiguous()
    kp = k_pos.to(torch.int32).contiguous()
    kv = key_valid.expand(B, K).to(torch.int8).contiguous() if key_valid is not None else kp
    ls = (
        logit_scale.to(device=query.device, dtype=torch.float32).expand(B).contiguous()
        if logit_scale is not None
        else lse
    )
    args = (
        qcopies,
        kcopies,
        value,
        out,
        lse,
        qp,
        kp,
        kv,
        ls,
        _table_tensor(table, query.device),
        *qcopies.stride()[:4],
        *kcopies.stride()[:4],
        *value.stride()[:3],
        *out.stride()[:3],
        H,
        key.shape[1],
        Q,
        K,
        float(scale),
    )
    flags = dict(
        NP=len(passes),
        NQ=nq,
        QC=qc,
        KC=kc,
        CAUSAL=bool(causal),
        CONTIGUOUS=bool(contiguous),
        HAS_VALID=key_valid is not None,
        HAS_LS=logit_scale is not None,
        HEAD_DIM=D,
        IEEE=query.dtype == torch.float32,
        UPCAST=kern.INTERPRET and query.dtype == torch.bfloat16,
    )
    if config is None and kern.INTERPRET:
        config = {"BLOCK_M": 16, "BLOCK_N": 16}
    if config is None:
        grid = lambda meta: (triton_cdiv(Q, meta["BLOCK_M"]), B * H)  # noqa: E731
        kern.tuned(D)[grid](*args, **flags)
    else:
        cfg = dict(config)
        grid = (triton_cdiv(Q, cfg["BLOCK_M"]), B * H)
        kern._fwd[grid](*args, **flags, **cfg)
    return out, lse


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
