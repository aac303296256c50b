"""The inputs of decode steps (a KV cache, fewer query rows than keys) for the position-method attentions
(:mod:`.positional_decode`): a path that torch.compile traces in one graph.

``generate(..., cache_implementation="static")`` compiles the decode step; every step must then run the same graph (no
recompiles) and stay in it (no graph breaks). So, compiled, this path keeps no plan, no Python-side state keyed by
tensors or by object identity, and never reads a tensor's value on the host: query positions come from
``position_ids``, each row's key positions from the ``[B, 1, Q, K]`` bool mask transformers passes
(:func:`plan.mask_function`'s ``sdpa_mask`` branch; static caches have empty slots after the real ones, batches may be
left padded), both with tensor ops only. The passes and inverse frequencies are plain Python values of the layer's
parameters, built once outside any trace (:func:`cached`).

Uncompiled, the work that is the same for every layer of one forward pass (positions, masks, the layer settings) is
done by the first layer and read by the others (:func:`per_forward`): a decode step is short, and repeating it per
layer costs more host time than the attention itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from .kernels import sdpa

# Values of plain-Python keys (a layer's parameters, device): passes, inverse frequencies. Filled eagerly (prefill or
# the first uncompiled step); a trace only reads it (a miss while tracing builds the value inside the trace).
# Also holds the position attentions' RoPE frequencies for prefill. At most CACHE_MAX entries (oldest dropped).
_CACHE: dict[Any, Any] = {}
CACHE_MAX = 64


def cached(key, build: Callable[[], Any]):
    """The value stored under ``key`` (plain Python values only), else ``build()``, stored unless tracing."""
    value = _CACHE.get(key)
    if value is None:
        value = build()
        if not torch.compiler.is_compiling():
            if len(_CACHE) >= CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = value
    return value


class _Forward:
    """One forward pass's shared values: the tensor that identifies it (weakly held), its version, the last layer
    index seen and the values by key, each with the objects its key names by identity (kept alive)."""

    def __init__(self, anchor: torch.Tensor, version, layer: int):
        self.ref = weakref.ref(anchor)
        self.version = version
        self.layer = layer
        self.served: set = set()
        self.values: dict = {}


# The current forward pass's shared values; cleared when its identifying tensor is freed, replaced by the next forward.
_FORWARD: list[_Forward | None] = [None]


def _drop(state: _Forward) -> None:
    if _FORWARD[0] is state:
        _FORWARD[0] = None


def per_forward(anchor: torch.Tensor | None, layer: int | None, key: tuple, held: tuple, build: Callable[[], Any]):
    """``build()`` once per forward pass, for every layer of it.

    transformers hands every layer of one forward the same ``position_ids`` tensor (``anchor``; the mask where there
    is none) and calls them in increasing ``layer_idx`` order. A value stored under ``key`` and the identity of the
    objects in ``held`` (kept alive with it, so an ``id`` names one object) is read back by the later layers of the
    same forward: same anchor tensor, same version (an in-place change bumps it; inference tensors have none), a
    layer index above the last one seen, or the same layer asking for another key. Anything else starts a new
    forward; so does a layer that asks again for a key it was served (a new forward of a one-layer model). Built
    afresh while compiling (a compiled step keeps no state keyed by tensors: no ``id`` is taken in a trace) and
    without an anchor or a layer index. The values are dropped when the anchor is freed."""
    if torch.compiler.is_compiling() or anchor is None or layer is None:
        return build()
    key = (*key, *map(id, held))
    version = None if anchor.is_inference() else anchor._version
    state = _FORWARD[0]
    if (
        state is None
        or state.ref() is not anchor
        or state.version != version
        or layer < state.layer
        or (layer, key) in state.served
    ):
        state = _Forward(anchor, version, layer)
        weakref.finalize(anchor, _drop, state)
        _FORWARD[0] = state
    state.layer = layer
    state.served.add((layer, key))
    if key not in state.values:
        state.values[key] = (held, build())
    return state.values[key][1]


def parameters_key(params: dict) -> tuple:
    """A hashable key of a RoPE parameter dict (values as strings: floats, lists and None alike)."""
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def bool_mask(mask: torch.Tensor | None, batch: int, kv_len: int) -> torch.Tensor | None:
    """transformers' mask as ``[B, 1, Q, K]`` bool (an additive float mask: its finite entries), or None."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    mask = mask[..., :kv_len]
    return mask.expand(batch, -1, -1, -1) if mask.shape[0] != batch else mask


def causal_mask(batch: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """The last ``q_len`` slots of a cache of ``kv_len`` as queries, causally (when transformers passed no mask)."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return (torch.arange(kv_len, device=device)[None, :] <= rows)[None, None].expand(batch, 1, q_len, kv_len)


def positions(
    mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, q_len: int, kv_len: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q_pos [B, Q], k_pos [B, K])``. Key slot s holds position s - offset, the offset fixed per row by the last
    query's own slot, the last key its mask lets it see (a dynamic cache ends there, a static one has empty slots
    after it; left padding shifts positions against slots). Empty and padding slots get positions the mask hides.
    Without ``position_ids`` the last query sits at (keys it sees - 1), i.e. positions count real tokens."""
    if mask is None:
        own_slot = torch.full((batch, 1), kv_len - 1, device=device, dtype=torch.long)
        seen_count = own_slot + 1
    else:
        seen = mask[:, 0, -1, :]
        own_slot = kv_len - 1 - seen.flip(-1).to(torch.int8).argmax(-1, keepdim=True).to(torch.long)
        seen_count = seen.sum(-1, keepdim=True)
    if position_ids is None:
        q_pos = seen_count - q_len + torch.arange(q_len, device=device)[None]
    else:
        q_pos = position_ids.to(device=device, dtype=torch.long).expand(batch, -1)
    offset = own_slot - q_pos[:, -1:]
    return q_pos, torch.arange(kv_len, device=device)[None] - offset


def plain_attention(query, key, value, mask, scaling: float, dropout: float) -> torch.Tensor:
    """Plain attention of a layer without a method (Gemma3 sliding layers): SDPA; rows that may see no key give 0
    (decided on the device, no host sync). Returns ``[B, H, Q, D]``."""
    if mask is None:
        return sdpa.attention(query, key, value, None, scaling, dropout)
    empty = ~mask.any(dim=-1, keepdim=True)
    return sdpa.attention(query, key, value, mask | empty, scaling, dropout, empty)
