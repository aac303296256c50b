"""Causal attention *with its log-sum-exp* on PyTorch's fused SDPA kernels (CUDA, inference only).

A position method's grouped pass is an ordinary causal attention over re-rotated q/k, merged with the other passes
by log-sum-exp, so the kernel must return the lse. PyTorch exposes it only through the private ATen ops behind
``F.scaled_dot_product_attention``: cuDNN (what SDPA itself picks on Hopper, the fastest there) and flash. Each
kernel is checked once per (device, dtype, head dim) against an explicit float32 computation on a small problem
before it is used; a kernel that raises or disagrees is dropped with one log line and the next one is tried; when
none is usable the caller falls back to FlexAttention. The order comes from the attention options
(``dense_lse_kernels``).
"""

from __future__ import annotations

import logging

import torch

from ...ops.lse import merge_pair

logger = logging.getLogger("longctx_plugins")
_status: dict[tuple, bool] = {}


def _run(kernel: str, q, k, v, scale: float, causal: bool = True):
    if kernel == "cudnn":
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    else:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    b, h, n, _ = q.shape
    return res[0], res[1].reshape(b, h, n).to(torch.float32)


def explicit(q, k, v, scale: float, allowed):
    """Float32 ``(out, lse)`` of ``q [B,H,Q,D]`` against ``k``/``v`` (same head count) over ``allowed [Q, K]``: what
    the fused kernels are checked against; a row that sees no key gives zeros and ``-inf``."""
    logits = ((q.float() @ k.float().transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, -1), nan=0.0) @ v.float(), torch.logsumexp(logits, -1)


def merged(parts, like, length: int):
    """Parts ``(out, lse, rows)`` merged into float32 ``(out [B,H,length,D], lse [B,H,length])`` (rows no part
    reaches: zeros, ``-inf``)."""
    B, H, _, D = like.shape
    out = like.new_zeros(B, H, length, D, dtype=torch.float32)
    lse = torch.full((B, H, length), float("-inf"), device=like.device)
    for o, l_, rows in parts:
        out[:, :, rows], lse[..., rows] = merge_pair(out[:, :, rows], lse[..., rows], o.float(), l_)
    return out, lse


def difference(out, lse, ref_out, ref_lse) -> float:
    """Largest difference of ``(out, lse)`` from the reference; infinite when they disagree on which rows see a key."""
    seen = torch.isfinite(ref_lse)
    if not bool((torch.isfinite(lse) == seen).all()):
        return float("inf")
    return max(float((out.float() - ref_out).abs().max()), float((lse - ref_lse).abs().masked_fill(~seen, 0).max()))


def usable(kernel: str, device, dtype, head_dim: int) -> bool:
    key = (kernel, str(device), dtype, head_dim)
    if key not in _status:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, 2, 320, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
        scale = head_dim**-0.5
        ref_out, ref_lse = explicit(q, k, v, scale, torch.ones(320, 320, dtype=torch.bool, device=device).tril())
        try:
            out, lse = _run(kernel, q, k, v, scale)
            err = difference(out, lse, ref_out, ref_lse)
            _status[key] = err < 3e-2
            reason = f"differs from the float32 computation by {err:.3g}"
        except RuntimeError as exc:  # kernel unavailable for this GPU / dtype / head dim
            _status[key] = False
            reason = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if not _status[key]:
            logger.info(
                "the fused %s attention kernel is not used for %s, head dim %d: it %s.", kernel, dtype, head_dim, reason
            )
    return _status[key]


def choose(kernels: tuple[str, ...], query) -> str | None:
    """The first usable kernel of ``kernels`` for ``query``'s device, dtype and head dim (decided once per plan)."""
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16) or query.shape[-1] > 256:
        return None
    return next((k for k in kernels if usable(k, query.device, query.dtype, query.shape[-1])), None)


def causal_attention_lse(kernel: str, q, k, v, scale: float, causal: bool = True):
    """``(out [B,H,L,D], lse [B,H,L] float32)`` of (causal, top-left) attention; q/k/v with the same head count."""
    return _run(kernel, q, k, v, scale, causal)
