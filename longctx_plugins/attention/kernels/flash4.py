"""The flash-attn-4 (``flash_attn.cute``, CuTe DSL) varlen kernel behind ``anchor``'s ``flash`` backend.

``auto`` uses it on Hopper (sm90, where it was verified) when the package imports and the call is eligible (packed
boundaries, no local window, padding only in whole segments, no dropout, fp16/bf16, a head dim verified on the
H200: 32, 64, 96, 128 or 256); otherwise FlexAttention. ``flash`` also runs it on Blackwell (sm100, not verified
here), raises when the kernel cannot run at all, and falls back to FlexAttention (with a warning) on layers it cannot
express (sliding windows).
"""

from __future__ import annotations

import functools

import torch

# Head dims whose values and gradients matched the float32 reference on the H200 (flash-attn-4 4.0.0b36, GQA and MHA,
# causal and bidirectional, collator padding; benchmarks/probe_flash_grads.py -> results/flash_grad_probe*.json). At
# head dim 16 the forward is right but dQ (and dK/dV with grouped-query heads) come out ~120% off, so dims not
# verified go to FlexAttention.
VERIFIED_HEAD_DIMS = frozenset({32, 64, 96, 128, 256})


@functools.cache
def unavailable_reason(device_index: int | None) -> str | None:
    """Why the kernel cannot run on this CUDA device (None: it can). Decided once per device."""
    try:
        from flash_attn.cute import flash_attn_varlen_func  # noqa: F401
    except Exception as exc:  # ImportError, or the CuTe DSL failing to initialise
        return (
            f"flash-attn-4 is not importable ({type(exc).__name__}: {exc}); install `flash-attn-4` "
            "(with `nvidia-cutlass-dsl`) or use backend='flex'"
        )
    major = torch.cuda.get_device_capability(device_index)[0]
    if major not in (9, 10):
        return f"flash-attn-4 varlen needs an sm90/sm100 GPU, this one is sm{major}x; use backend='flex'"
    return None


@functools.cache
def verified_device(device_index: int | None) -> bool:
    """sm90: where ``auto`` may pick the kernel."""
    return torch.cuda.get_device_capability(device_index)[0] == 9


def call_reason(query, dropout: float) -> str | None:
    """Why this forward's calls are not expressible for the kernel (None: they are)."""
    if query.device.type != "cuda":
        return "tensors are not on CUDA"
    if query.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {query.dtype} (the kernel takes fp16/bf16)"
    if query.shape[-1] not in VERIFIED_HEAD_DIMS:
        return (
            f"head dim {query.shape[-1]} (the kernel is used only at head dims verified against the reference, "
            f"{sorted(VERIFIED_HEAD_DIMS)}: flash-attn-4 4.0.0b36's sm90 backward is wrong at 16)"
        )
    if dropout:
        return "attention dropout"
    return None


def varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal):
    """The varlen kernel with :func:`~longctx_plugins.ops.varlen.varlen_attention_reference`'s signature."""
    from flash_attn.cute import flash_attn_varlen_func

    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        softmax_scale=scale,
        causal=causal,
    )
    return out[0] if isinstance(out, tuple) else out
