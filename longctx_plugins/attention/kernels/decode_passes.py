"""A decode step of a position method (SelfExtend, Dual Chunk Attention, STRING) in one split-K Triton kernel.

A decode step has one query row per sequence and reads the whole KV cache: it is memory-bound, so the cache should be
read once. The exact reference (:func:`longctx_plugins.ops.passes.dense_attention`) reads it once per key rotation,
writes re-rotated copies of the keys and materialises float32 logits; :func:`attention` reads each key and value
block once, re-rotates keys in registers for the passes that move them, and keeps one online softmax over all passes
(:mod:`._decode_kernel`). The cache is split along its length over enough programs to fill the GPU; the splits'
partial softmax states are merged here.

Semantics are the reference's for passes that partition the pairs (every method's do): pairs no pass covers and
keys ``key_valid`` hides are masked; ``logit_scale [B]`` multiplies the logits; a row that sees no key gives zeros.
Keys a pass re-rotates are rounded to the cache's dtype before the product, as the reference's rotated copies are;
half inputs multiply on the tensor cores with float32 accumulation and probabilities rounded to the input dtype before
``P @ V`` (as flash attention does), float32 inputs in IEEE float32.

:func:`usable` decides once per (device, dtype, head dim, passes) whether the kernel may run: CUDA (or Triton's
interpreter), rotary dimension = head dimension, at most :data:`MAX_PASSES` passes with integer bands, and the kernel
agreeing with the reference on a small problem. Inference only; callers fall back to the reference otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import NamedTuple

import torch

from ...ops import passes as P

logger = logging.getLogger("longctx_plugins")
HEAD_DIMS = (32, 64, 128, 256)
MAX_PASSES = 4
BLOCK_N = 64
NUM_WARPS = 8  # 4 spill registers at head dim 128 (sm_90)
TARGET_PROGRAMS = 512  # programs per launch: several per SM on a Hopper GPU
_LIMIT = 1 << 30
_status: dict = {}


def _kernel():
    from . import _decode_kernel

    return _decode_kernel


def _int(x) -> int:
    return _LIMIT if x == math.inf else -_LIMIT if x == -math.inf else int(x)


def pass_table(passes) -> tuple[tuple[int, ...], int, tuple]:
    """``(table, kmoves, q_maps)``: 12 ints per pass (band ``lo, hi, q_div, k_div, rows_from, rows_to``; the index
    of its query copy; its key map ``a, b, div, c, max``), the bit mask of passes that re-rotate keys, and the
    distinct query maps in copy order."""
    q_maps = tuple(dict.fromkeys(p.q for p in passes))
    table: list[int] = []
    kmoves = 0
    for n, p in enumerate(passes):
        b, k = p.band, p.k
        table += [_int(b.lo), _int(b.hi), int(b.q_div), int(b.k_div), _int(b.rows_from), _int(b.rows_to)]
        table += [q_maps.index(p.q), k.a, k.b, k.div, k.c, _LIMIT if k.max is None else int(k.max)]
        kmoves |= (not k.is_identity) << n
    return tuple(table), kmoves, q_maps


def _problem(passes) -> str | None:
    if not 1 <= len(passes) <= MAX_PASSES:
        return f"{len(passes)} passes (the kernel takes 1 to {MAX_PASSES})"
    for p in passes:
        values = (p.band.lo, p.band.hi, p.band.rows_from, p.band.rows_to, p.k.a, p.k.b, p.k.c)
        if any(not math.isinf(v) and (v != int(v) or abs(v) >= _LIMIT // 4) for v in values):
            return f"pass {p.name!r} has a bound that is not an integer below 2**28"
        if not (1 <= p.band.q_div < _LIMIT // 4 and 1 <= p.band.k_div < _LIMIT // 4 and 1 <= p.k.div < _LIMIT // 4):
            return f"pass {p.name!r} has a divisor outside [1, 2**28)"
    return None


def usable(device, dtype, head_dim: int, rotary_dim: int, passes) -> bool:
    """Whether :func:`attention` may run for these settings (decided once, logged once when not)."""
    key = (str(device), dtype, head_dim, rotary_dim, passes)
    if key not in _status:
        _status[key] = _decide(torch.device(device), dtype, head_dim, rotary_dim, passes)
    return _status[key]


def _decide(device, dtype, head_dim, rotary_dim, passes) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False  # decided without importing Triton
    try:
        kern = _kernel()
    except Exception as exc:  # noqa: BLE001 - no Triton, or one without what the kernel needs
        logger.info("position-method decoding uses the exact reference: Triton is not usable (%s).", exc)
        return False
    if device.type != "cuda" and not kern.INTERPRET:
        return False
    reason = None
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        reason = f"dtype {dtype}"
    elif head_dim not in HEAD_DIMS or rotary_dim != head_dim:
        reason = f"head dim {head_dim} with rotary dim {rotary_dim} (the kernel takes {HEAD_DIMS}, fully rotary)"
    else:
        reason = _problem(passes)
    if reason is None:
        reason = _self_check(device, dtype, head_dim, passes)
    if reason:
        logger.info("position-method decoding uses the exact reference: the decode kernel is not used (%s).", reason)
    return reason is None


def _self_check(device, dtype, head_dim, passes) -> str | None:
    """Run the kernel once against the reference on a small cache whose positions reach every pass: the query past
    the last row bound of the passes (the trained window), keys spread from 0 up to it, several key blocks per
    program (the online softmax across blocks) and a padded row."""
    gen = torch.Generator(device=device).manual_seed(0)
    B, H, Hkv, K = 2, 4, 2, 600
    bounds = [int(b) for p in passes for b in (p.band.rows_from, p.band.rows_to) if not math.isinf(b)]
    top = max(bounds, default=0) * 3 // 2 + 4096
    q = torch.randn(B, H, 1, head_dim, device=device, dtype=dtype, generator=gen)
    k, v = (torch.randn(B, Hkv, K, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(2))
    k_pos = torch.arange(K, device=device)[None] * (top // K) + torch.tensor([[0], [-5]], device=device)
    q_pos = k_pos[:, -1:] + 1
    valid = torch.ones(B, K, dtype=torch.bool, device=device)
    valid[1, :7] = False
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    scale = head_dim**-0.5
    try:
        out = _launch(q, k, v, step_inputs(q_pos, k_pos, valid, None, inv, B), passes, scale, programs=B * Hkv * 2)
    except Exception as exc:  # noqa: BLE001 - a kernel that cannot compile here is not used, with the reason
        return f"it raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    ref = P.dense_attention(q, k, v, q_pos, k_pos, passes, inv, mask=valid[:, None, None], scale=scale)
    err = float((out.float().transpose(1, 2) - ref).abs().max())
    tol = 1e-3 if dtype == torch.float32 else 3e-2  # float32: room for a reference on TF32 matmuls
    return None if err < tol else f"it differs from the reference by {err:.3g}"


class StepInputs(NamedTuple):
    """The per-step tensors every layer of a forward pass shares (:func:`step_inputs`)."""

    q_pos: torch.Tensor
    kp: torch.Tensor
    qp: torch.Tensor
    valid: torch.Tensor | None
    ls: torch.Tensor | None
    inv: torch.Tensor


def step_inputs(q_pos, k_pos, key_valid, logit_scale, inv_freq, batch: int) -> StepInputs:
    """Positions, key mask, logit scale and frequencies as the kernel reads them: contiguous ``[B, K]`` int32
    positions and int8 mask, ``[B]`` int32 query positions and float32 scales, float32 frequencies."""
    kv_len = k_pos.shape[-1]
    return StepInputs(
        q_pos,
        k_pos.expand(batch, kv_len).to(torch.int32).contiguous(),
        q_pos[:, -1].expand(batch).to(torch.int32).contiguous(),
        None if key_valid is None else key_valid.expand(batch, kv_len).to(torch.int8).contiguous(),
        None if logit_scale is None else logit_scale.to(torch.float32).expand(batch).contiguous(),
        inv_freq.to(torch.float32).contiguous(),
    )


def attention(
    query,
    key,
    value,
    q_pos,
    k_pos,
    passes,
    inv_freq,
    *,
    key_valid: torch.Tensor | None = None,
    scale: float,
    logit_scale: torch.Tensor | None = None,
    layout: tuple | None = None,
    inputs: StepInputs | None = None,
) -> torch.Tensor:
    """One decode step: ``query [B,H,1,D]``, ``key``/``value [B,Hkv,K,D]`` rotated at their true positions
    ``q_pos [B,1]``, ``k_pos [B,K]``; ``key_valid [B,K]`` bool; ``logit_scale [B]``. Returns ``[B,1,H,D]`` in the
    query's dtype (the attention interface's layout). ``layout``: ``(table tensor on the query's device, kmoves,
    q_maps)`` of :func:`pass_table`, built ahead by a compiled caller (dynamo cannot build the passes' frozen
    dataclasses). ``inputs``: :func:`step_inputs` of these positions, mask, scale and frequencies, built once for the
    layers of a forward pass (else built here). Callers check :func:`usable` first."""
    if query.shape[2] != 1:
        raise ValueError(f"the decode kernel takes one query row per sequence, got {query.shape[2]}")
    if inputs is None:
        inputs = step_inputs(q_pos, k_pos, key_valid, logit_scale, inv_freq, query.shape[0])
    return _launch(query, key, value, inputs, passes, scale, layout)


def layout_for(passes, device) -> tuple:
    """``(table tensor, kmoves, q_maps)`` for :func:`attention`'s ``layout``."""
    table, kmoves, q_maps = pass_table(passes)
    return torch.tensor(table, dtype=torch.int32, device=device), kmoves, q_maps


def _launch(query, key, value, inputs: StepInputs, passes, scale, layout=None, programs=None):
    kern = _kernel()
    B, H, _, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    tab, kmoves, q_maps = layout if layout is not None else layout_for(passes, query.device)
    q_pos, kp, qp, valid, ls, inv = inputs
    qc = torch.stack([P.rotated(query, q_pos, m, inv)[:, :, 0] for m in q_maps]).contiguous()  # [NQ, B, H, D]
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    n_blocks = -(-K // BLOCK_N)
    per_split = -(-n_blocks // max(1, min(n_blocks, (programs or TARGET_PROGRAMS) // (B * Hkv))))
    splits = -(-n_blocks // per_split)
    r = H // Hkv
    m = torch.empty(B, H, splits, device=query.device, dtype=torch.float32)
    lsum = torch.empty_like(m)
    acc = torch.empty(B, H, splits, D, device=query.device, dtype=torch.float32)
    with _on_device(query.device):
        kern._split[(B * Hkv, splits)](
            qc,
            key,
            value,
            kp,
            qp,
            kp if valid is None else valid,
            qp if ls is None else ls,
            tab,
            inv,
            m,
            lsum,
            acc,
            qc.stride(0),
            qc.stride(1),
            qc.stride(2),
            key.stride(0),
            key.stride(1),
            key.stride(2),
            value.stride(0),
            value.stride(1),
            value.stride(2),
            K,
            Hkv,
            r,
            splits,
            per_split,
            float(scale) * 1.4426950408889634,
            NP=len(passes),
            KMOVES=kmoves,
            HALF=D // 2,
            R_PAD=max(16, 1 << (r - 1).bit_length()),
            BLOCK_N=BLOCK_N,
            HAS_VALID=valid is not None,
            HAS_LS=ls is not None,
            IEEE=query.dtype == torch.float32,
            UPCAST=kern.INTERPRET and query.dtype != torch.float32,
            num_warps=NUM_WARPS,
        )
    # merge the splits (log2 domain): rows that saw no key anywhere give zeros
    top = m.amax(-1, keepdim=True)
    w = torch.exp2(m - top.masked_fill(top == -math.inf, 0.0))
    den = (w * lsum).sum(-1, keepdim=True)
    out = (w[..., None] * acc).sum(-2) / den.clamp_min(torch.finfo(torch.float32).tiny)
    return out.to(query.dtype)[:, None]  # [B, 1, H, D]


def _on_device(device):
    """Triton launches on the current CUDA device: make it the tensors' own (a model spread over GPUs), eagerly;
    a compiled graph sets its device itself."""
    if (
        device.type == "cuda"
        and not torch.compiler.is_compiling()
        and device.index not in (None, torch.cuda.current_device())
    ):
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()
