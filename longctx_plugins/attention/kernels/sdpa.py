"""The exact dense path: SDPA over a boolean mask (trains on CPU; the reference the fast paths are tested against)."""

from __future__ import annotations

import contextlib

import torch.nn.functional as F

# The dense path is the exact reference, so on CUDA it keeps masked SDPA off the cuDNN backend (which torch prefers on
# Hopper for masked inputs): in bf16 its backward gave 123% relative error on the q/k gradients of tiny Gemma3's
# sliding-window layers against float32, where the memory-efficient kernel and FlexAttention stay at ~1%
# (benchmarks/results/gemma3_grad_probe.json; cf. pytorch/pytorch#196678, cuDNN SDPA backward with attn_mask).
AVOID_CUDNN = True


def attention(query, key, value, mask, scale: float, dropout: float = 0.0, empty_rows=None):
    """SDPA with a ``[B, 1, Q, K]`` bool mask (or None). ``empty_rows [B, 1, Q, 1]`` (or None): rows that may see no
    key; the plan has already let them see every key in ``mask`` (no NaN), and their output is set to 0 here.
    Returns ``[B, H, Q, D]``."""
    backends = contextlib.nullcontext()
    if mask is not None and query.is_cuda and AVOID_CUDNN:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
    with backends:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=query.shape[1] != key.shape[1]
        )
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)  # [B,1,Q,1] broadcasts over heads and channels
    return out
