"""Helpers shared by the plugin attention functions: mask normalisation, backend choice, flex, caches."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flex", "sdpa")
# On CUDA, "auto" switches to FlexAttention from this query length on (shorter: dense SDPA).
FLEX_MIN_LENGTH = 1024


def backend_for(config, name: str) -> str:
    """Backend for attention ``name``: ``config.<name>_backend`` or env ``LONGCTX_<NAME>_BACKEND``; default auto."""
    value = getattr(config, f"{name}_backend", None) or os.environ.get(f"LONGCTX_{name.upper()}_BACKEND", "auto")
    if value not in BACKENDS:
        raise ValueError(f"{name}_backend must be one of {BACKENDS}, got {value!r}.")
    return value


def use_flex(config, name: str, device, q_length: int, kv_length: int) -> bool:
    backend = backend_for(config, name)
    if backend == "sdpa":
        return False
    is_cuda = torch.device(device).type == "cuda"
    if backend == "flex":
        if not is_cuda:
            raise RuntimeError(
                f"{name}_backend='flex' needs a CUDA device: FlexAttention has no backward pass on CPU. "
                f"Use {name}_backend='sdpa' (the exact reference path) or 'auto'."
            )
        if q_length != kv_length:
            return False  # decoding with a cache: a few query rows, the dense path is cheaper
        return True
    return is_cuda and q_length == kv_length and q_length >= FLEX_MIN_LENGTH


def forced_dense_mask(**kwargs) -> torch.Tensor:
    """transformers' ``sdpa_mask`` with every skip disabled: always a ``[B,1,Q,K]`` bool tensor."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(**kwargs)


def flex_mask(**kwargs):
    from transformers.masking_utils import flex_attention_mask

    return flex_attention_mask(**kwargs)


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


def sdpa_dense(query, key, value, mask, scaling, dropout: float = 0.0, is_causal_hint: bool = False):
    """SDPA with a boolean mask; rows that may see nothing give zeros (no NaN). Returns ``[B, Q, H, D]``."""
    empty = None
    if mask is not None:
        any_key = mask.any(dim=-1, keepdim=True)
        if not bool(any_key.all()):
            empty = ~any_key
            mask = mask | empty
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(is_causal_hint and mask is None), enable_gqa=query.shape[1] != key.shape[1],
    )
    if empty is not None:
        out = out.masked_fill(empty, 0.0)  # [B,1,Q,1] broadcasts over heads and channels
    return out.transpose(1, 2).contiguous()


_compiled: dict[str, Callable] = {}


def compiled_flex() -> Callable:
    if "flex" not in _compiled:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled["flex"] = torch.compile(flex_attention, dynamic=False)
    return _compiled["flex"]


class IdentityCache:
    """A tiny cache keyed by the *identity* (and version) of tensors/objects of one forward pass.

    The same ``cu_seq_lens`` tensor and the same transformers mask object reach every layer of one forward,
    so a block mask built for layer 0 is reused by all later layers (and by gradient-checkpoint recomputes).
    Entries hold references to their key objects, so an id is never reused while cached.
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

    def clear(self):
        self._entries.clear()


def flex_with_lse(flex, query, key, value, block_mask, scale, enable_gqa):
    """FlexAttention returning ``(out, lse)`` across torch versions (``return_aux`` from 2.9, ``return_lse`` before)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa, return_lse=True)
    out, aux = flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                    return_aux=AuxRequest(lse=True))
    return out, aux.lse
