"""Helpers shared by the plugin attention functions: backend choice, mask plans, flex, caches."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flex", "sdpa", "flash")  # "flash": anchor only (flash-attn-4 varlen, see _flash.py)
# On CUDA, "auto" switches to FlexAttention from this query length on (shorter: dense SDPA).
FLEX_MIN_LENGTH = 1024
BLOCK = 128  # FlexAttention block size used for the block masks we build


def backend_for(config, name: str) -> str:
    """Backend for attention ``name``: ``config.<name>_backend`` or env ``LONGCTX_<NAME>_BACKEND``; default auto."""
    value = getattr(config, f"{name}_backend", None) or os.environ.get(f"LONGCTX_{name.upper()}_BACKEND", "auto")
    allowed = BACKENDS if name == "anchor" else tuple(b for b in BACKENDS if b != "flash")
    if value not in allowed:
        raise ValueError(f"{name}_backend must be one of {allowed}, got {value!r}.")
    return value


def use_flex(config, name: str, device, q_length: int, kv_length: int) -> bool:
    backend = backend_for(config, name)
    if backend == "sdpa" or q_length != kv_length:
        return False  # decoding with a cache: a few query rows, the dense path is cheaper
    is_cuda = torch.device(device).type == "cuda"
    if backend == "flash":
        if not is_cuda:
            raise RuntimeError(f"{name}_backend='flash' (flash-attn-4) needs CUDA tensors; use 'auto' or 'sdpa' on CPU.")
        return True  # the attention decides per call between the varlen kernel and flex (both take the FlexPlan)
    if backend == "flex":
        if not is_cuda and torch.is_grad_enabled():
            raise RuntimeError(
                f"{name}_backend='flex' on CPU is inference-only (FlexAttention has no CPU backward). Use "
                f"{name}_backend='sdpa' (the exact reference path) or 'auto', or run under torch.no_grad()."
            )
        return True
    return is_cuda and q_length >= FLEX_MIN_LENGTH


def forced_dense_mask(**kwargs) -> torch.Tensor:
    """transformers' ``sdpa_mask`` with every skip disabled: always a ``[B,1,Q,K]`` bool tensor."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(**kwargs)


class FlexPlan:
    """What the registered mask function hands to the attention on the FlexAttention path.

    Nothing S x S is built here: the attention builds block masks from document boundaries / positions (cached
    for all layers of one forward), or, for rules it cannot decompose (sliding / chunked windows), asks
    transformers for a BlockMask of its own rule combined with the plugin's.
    """

    def __init__(self, batch_size, q_length, kv_length, device="cpu", mask_function=None, attention_mask=None,
                 local_size=None, q_offset=0, kv_offset=0, **_):
        from transformers.masking_utils import causal_mask_function

        self.batch_size, self.q_length, self.kv_length = batch_size, q_length, kv_length
        self.device, self.local_size = device, local_size
        self.mask_function = mask_function or causal_mask_function
        self.q_offset, self.kv_offset = q_offset, kv_offset
        self.padding = attention_mask
        self.shape = (batch_size, 1, q_length, kv_length)

    def key_valid(self):
        """``[B, K]`` bool of real keys, or None when there is no padding. Computed once per plan (one host sync;
        the plan reaches every layer of a forward)."""
        if not hasattr(self, "_key_valid"):
            valid = None
            if self.padding is not None and self.padding.dim() == 2:
                valid = self.padding[:, self.kv_offset: self.kv_offset + self.kv_length].to(torch.bool)
                valid = None if bool(valid.all()) else valid
            self._key_valid = valid
        return self._key_valid

    def block_mask(self, extra_mod=None):
        """transformers' own rule (causal / sliding / padding), AND ``extra_mod``, as a compiled BlockMask."""
        from transformers.masking_utils import and_masks, flex_attention_mask

        fn = self.mask_function if extra_mod is None else and_masks(self.mask_function, extra_mod)
        return flex_attention_mask(batch_size=self.batch_size, q_length=self.q_length, kv_length=self.kv_length,
                                   q_offset=self.q_offset, kv_offset=self.kv_offset, mask_function=fn,
                                   attention_mask=self.padding, device=self.device)


def make_mask(name: str, batch_size, q_length, kv_length, args, kwargs):
    """Body of the registered mask functions: a FlexPlan on the flex path, else a dense bool mask."""
    config, device = kwargs.get("config"), kwargs.get("device", "cpu")
    kwargs.update(batch_size=batch_size, q_length=q_length, kv_length=kv_length)
    if args:
        raise TypeError("plugin mask functions take keyword arguments only (as transformers calls them)")
    if config is not None and use_flex(config, name, device, q_length, kv_length):
        return FlexPlan(**kwargs)
    return forced_dense_mask(**kwargs)


def monotone(x: torch.Tensor) -> bool:
    return bool((x[:, 1:] >= x[:, :-1]).all()) if x.shape[1] > 1 else True


def key_valid_mod(valid: torch.Tensor):
    def mod(b, h, q_idx, kv_idx):
        return valid[b, kv_idx]

    return mod


def to_bool_mask(attention_mask, module, q_len: int, kv_len: int, device, causal: bool | None = None):
    """Normalise whatever mask arrived to ``[B,1,Q,K]`` bool (True = attend), or build the plain rule when None."""
    if attention_mask is None:
        causal = getattr(module, "is_causal", True) if causal is None else causal
        if not causal:
            return None
        q = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        return (torch.arange(kv_len, device=device)[None, :] <= q)[None, None]
    if attention_mask.dtype != torch.bool:
        # additive float mask (eager convention): 0 keeps, a large negative value drops
        attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return attention_mask[..., :kv_len]


# The dense path is the exact reference, so on CUDA it keeps masked SDPA off the cuDNN backend (which torch prefers on
# Hopper for masked inputs): in bf16 its backward gave 123% relative error on the q/k gradients of tiny Gemma3's
# sliding-window layers against float32, where the memory-efficient kernel and FlexAttention stay at ~1%
# (benchmarks/results/gemma3_grad_probe.json; cf. pytorch/pytorch#196678, cuDNN SDPA backward with attn_mask).
DENSE_SDPA_AVOID_CUDNN = True


def sdpa_dense(query, key, value, mask, scaling, dropout: float = 0.0):
    """SDPA with a boolean mask; rows that may see nothing give zeros (no NaN). Returns ``[B, Q, H, D]``."""
    empty = None
    if mask is not None:
        any_key = mask.any(dim=-1, keepdim=True)
        if not bool(any_key.all()):
            empty = ~any_key
            mask = mask | empty
    backends = contextlib.nullcontext()
    if mask is not None and query.is_cuda and DENSE_SDPA_AVOID_CUDNN:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
    with backends:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])
    if empty is not None:
        out = out.masked_fill(empty, 0.0)  # [B,1,Q,1] broadcasts over heads and channels
    return out.transpose(1, 2).contiguous()


_compiled: dict[Any, Callable] = {}  # "flex" -> compiled flex_attention; a function -> its compiled form
RECOMPILE_LIMIT = 64

# Forward kernel configuration used on Hopper (sm90) for head dims 64 / 128 in half precision when the user set none.
# torch's own default there for head dim 64 is BLOCK 128 x 128 with 4 warps: on the 1.1B model's packed 32k window
# (anchor rule + padding) that forward took 21 ms per call, with 8 warps / 2 stages 3.4 ms, identical output
# (benchmarks/results/anchor_step_probe.json); on unpadded windows at head dim 128 it is also the fastest measured
# (anchor_attention.json). "fwd_" keeps the backward on torch's default (8 warps slowed it by ~3 ms).
SM90_FWD_OPTIONS = {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 2}


def flex_kernel_options(config, name: str, query) -> dict | None:
    """``config.<name>_flex_kernel_options`` if set (``{}`` = torch's defaults), else the tuned Hopper forward
    configuration where it was measured (sm90, fp16/bf16, head dim 64 or 128), else None (torch's defaults)."""
    options = getattr(config, f"{name}_flex_kernel_options", None)
    if options is not None:
        return dict(options) or None
    if (query.device.type == "cuda" and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] in (64, 128)
            and _tuned_forward_applies(query.device.index)):
        return dict(SM90_FWD_OPTIONS)
    return None


@functools.lru_cache(maxsize=None)
def _tuned_forward_applies(device_index) -> bool:
    """sm90 and a torch that understands the ``fwd_`` prefix; per device, decided once (attention calls are hot)."""
    from .._compat import flex_prefixed_options

    return flex_prefixed_options() and torch.cuda.get_device_capability(device_index) == (9, 0)


def compiled_flex(device=None) -> Callable:
    """``torch.compile(flex_attention)`` on CUDA; the eager (exact, memory-hungry) op on CPU (inference tests).

    torch.compile recompiles flex per distinct shape / mask structure; dynamo's default limit (8) then falls back
    to the eager op, which materialises S x S scores (a 128 GiB allocation at 32k x 32 heads was seen on the
    H200). The limit is raised once to RECOMPILE_LIMIT for that reason.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if device is not None and torch.device(device).type != "cuda":
        return flex_attention
    if "flex" not in _compiled:
        import torch._dynamo.config as dcfg

        for attr in ("recompile_limit", "cache_size_limit"):
            if hasattr(dcfg, attr) and getattr(dcfg, attr) < RECOMPILE_LIMIT:
                setattr(dcfg, attr, RECOMPILE_LIMIT)
        _compiled["flex"] = torch.compile(flex_attention, dynamic=False)  # dynamic kernels measured slower
    return _compiled["flex"]


def compiled(fn: Callable, device) -> Callable:
    """``torch.compile(fn, dynamic=True)`` on CUDA (fuses a chain of elementwise ops - RoPE re-rotation, the
    log-sum-exp merge - into one kernel instead of several passes over S x H x D tensors); ``fn`` itself elsewhere."""
    if torch.device(device).type != "cuda":
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def flex_with_lse(flex, query, key, value, block_mask, scale, enable_gqa, kernel_options=None):
    """FlexAttention returning ``(out, lse)`` across torch versions (``return_aux`` from 2.9, ``return_lse`` before)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa, return_lse=True,
                    kernel_options=kernel_options)
    out, aux = flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                    return_aux=AuxRequest(lse=True), kernel_options=kernel_options)
    return out, aux.lse


class IdentityCache:
    """A tiny cache keyed by the *identity* (and version) of tensors/objects of one forward pass.

    The same ``cu_seq_lens`` tensor and the same mask plan reach every layer of one forward, so a block mask
    built for layer 0 is reused by all later layers (and by gradient-checkpoint recomputes). Entries hold
    references to their key objects, so an id is never reused while cached.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: list[tuple[tuple, tuple, Any]] = []

    @staticmethod
    def _sig(objs):
        return tuple((id(o), getattr(o, "_version", None)) for o in objs)

    def get(self, objs: tuple, extra: tuple, build: Callable[[], Any]):
        sig = self._sig(objs) + extra
        for key_objs, key_sig, value in self._entries:
            if key_sig == sig and all(a is b for a, b in zip(key_objs, objs)):
                return value
        value = build()
        self._entries.append((objs, sig, value))
        if len(self._entries) > self.size:
            self._entries.pop(0)
        return value
