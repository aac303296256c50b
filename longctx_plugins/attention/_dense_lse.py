"""Causal attention *with its log-sum-exp* on PyTorch's fused SDPA kernels (CUDA, inference only).

SelfExtend's grouped pass is an ordinary causal attention over re-rotated q/k; its result is merged with the
neighbour pass by log-sum-exp, so the kernel must return the lse. PyTorch exposes it only through the private ATen
ops behind ``F.scaled_dot_product_attention``: cuDNN (what SDPA itself picks on Hopper, the fastest there) and
flash. Each kernel is checked once per (device, dtype, head dim) against an explicit float32 computation on a small
problem before it is used; a kernel that raises or disagrees is dropped with one log line and the next one is
tried; when none is usable the caller falls back to FlexAttention. ``KERNELS`` (or ``LONGCTX_DENSE_LSE_KERNELS``,
comma separated; ``none`` for FlexAttention only) sets the order.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("longctx_plugins")

KERNELS: tuple[str, ...] = ("cudnn", "flash")
_status: dict[tuple, bool] = {}


def _order() -> tuple[str, ...]:
    env = os.environ.get("LONGCTX_DENSE_LSE_KERNELS")
    order = tuple(k.strip() for k in env.split(",") if k.strip() not in ("", "none")) if env else KERNELS
    unknown = [k for k in order if k not in ("cudnn", "flash")]
    if unknown:
        raise ValueError(f"unknown dense lse kernel(s) {unknown}; choose from 'cudnn', 'flash' or 'none'.")
    return order


def _run(kernel: str, q, k, v, scale: float):
    if kernel == "cudnn":
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False, scale=scale)
    else:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)
    b, h, n, _ = q.shape
    return res[0], res[1].reshape(b, h, n).to(torch.float32)


def _usable(kernel: str, device, dtype, head_dim: int) -> bool:
    key = (kernel, str(device), dtype, head_dim)
    if key not in _status:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, 2, 320, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
        scale = head_dim ** -0.5
        logits = (q.float() @ k.float().transpose(-1, -2)) * scale
        logits = logits.masked_fill(torch.ones(320, 320, dtype=torch.bool, device=device).triu(1), float("-inf"))
        ref_lse, ref_out = torch.logsumexp(logits, -1), torch.softmax(logits, -1) @ v.float()
        try:
            out, lse = _run(kernel, q, k, v, scale)
            err = max(float((lse - ref_lse).abs().max()), float((out.float() - ref_out).abs().max()))
            _status[key] = err < 3e-2
            reason = f"differs from the float32 computation by {err:.3g}"
        except RuntimeError as exc:  # kernel unavailable for this GPU / dtype / head dim
            _status[key] = False
            reason = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if not _status[key]:
            logger.info("self_extend: the %s attention kernel is not used for %s, head dim %d: it %s.",
                        kernel, dtype, head_dim, reason)
    return _status[key]


def causal_attention_lse(q, k, v, scale: float):
    """``(out [B,H,L,D], lse [B,H,L] float32)`` of causal attention (top-left, equal lengths, q/k/v with the same
    number of heads), or ``None`` when no fused kernel is usable here."""
    for kernel in _order():
        if not _usable(kernel, q.device, q.dtype, q.shape[-1]):
            continue
        try:
            return _run(kernel, q, k, v, scale)
        except RuntimeError as exc:  # e.g. a size limit the small check did not reach: drop it for this shape
            logger.info("self_extend: the %s attention kernel failed on shape %s (%s); trying the next one.",
                        kernel, tuple(q.shape), str(exc).splitlines()[0][:200])
    return None
