"""FlexAttention: compiled on CUDA, eager (exact, inference-only) on CPU; optionally with the log-sum-exp."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

# torch.compile recompiles flex per distinct shape / mask structure; at dynamo's default limit (8) it falls back to
# the eager op, which materialises S x S scores (a 128 GiB allocation at 32k x 32 heads was seen on the H200). Our
# calls raise the limit to this for their own duration only (the global setting stays the user's).
RECOMPILE_LIMIT = 64

# Forward kernel configuration used on Hopper (sm90) for head dims 64 / 128 in half precision when the user set none.
# torch's own default there for head dim 64 is BLOCK 128 x 128 with 4 warps: on the 1.1B model's packed 32k window
# (anchor rule + padding) that forward took 21 ms per call, with 8 warps / 2 stages 3.4 ms, identical output
# (benchmarks/results/anchor_step_probe.json). "fwd_" keeps the backward on torch's default (8 warps slowed it by
# ~3 ms); torch < 2.8 hands unknown keys to the Triton template, so the tuned default needs torch >= 2.8.
SM90_FWD_OPTIONS = {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 2}
_compiled: dict = {}


@functools.cache
def tuned_forward_applies(device_index) -> bool:
    from ..._compat import flex_prefixed_options

    return flex_prefixed_options() and torch.cuda.get_device_capability(device_index) == (9, 0)


def kernel_options(configured: dict | None, query) -> dict | None:
    """The user's options (``{}`` = torch's defaults), else the tuned Hopper forward configuration where it was
    measured (sm90, fp16/bf16, head dim 64 or 128), else None. Decided once per forward by the plan."""
    if configured is not None:
        return dict(configured) or None
    if (
        query.device.type == "cuda"
        and query.dtype in (torch.float16, torch.bfloat16)
        and query.shape[-1] in (64, 128)
        and tuned_forward_applies(query.device.index)
    ):
        return dict(SM90_FWD_OPTIONS)
    return None


def _recompile_limit():
    import torch._dynamo.config as dcfg

    name = "recompile_limit" if hasattr(dcfg, "recompile_limit") else "cache_size_limit"
    return dcfg.patch(**{name: max(RECOMPILE_LIMIT, getattr(dcfg, name))})


def _flex(device) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if torch.device(device).type != "cuda":
        return flex_attention
    if "flex" not in _compiled:
        _compiled["flex"] = torch.compile(flex_attention, dynamic=False)  # dynamic kernels measured slower
    return _compiled["flex"]


def attention(query, key, value, block_mask, scale: float, kernel_options: dict | None = None, lse: bool = False):
    """``[B, H, Q, D]`` (and ``[B, H, Q]`` float32 log-sum-exp when ``lse``)."""
    fn = _flex(query.device)
    gqa = query.shape[1] != key.shape[1]
    with _recompile_limit() if query.is_cuda else contextlib.nullcontext():
        if not lse:
            return fn(
                query, key, value, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=kernel_options
            )
        try:
            from torch.nn.attention.flex_attention import AuxRequest
        except ImportError:  # torch < 2.9
            return fn(
                query,
                key,
                value,
                block_mask=block_mask,
                scale=scale,
                enable_gqa=gqa,
                return_lse=True,
                kernel_options=kernel_options,
            )
        out, aux = fn(
            query,
            key,
            value,
            block_mask=block_mask,
            scale=scale,
            enable_gqa=gqa,
            return_aux=AuxRequest(lse=True),
            kernel_options=kernel_options,
        )
        return out, aux.lse


def compiled(fn: Callable, device) -> Callable:
    """``torch.compile(fn, dynamic=True)`` on CUDA (fuses a chain of elementwise ops - RoPE re-rotation, the
    log-sum-exp merge - into one kernel instead of several passes over S x H x D tensors); ``fn`` itself elsewhere."""
    if torch.device(device).type != "cuda":
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]
