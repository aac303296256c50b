"""One attention plan per forward pass: the decisions and shared inputs of every layer's attention call.

transformers calls the registered mask function once per forward and mask type (full / sliding layers); it returns
an :class:`AttentionPlan` that every layer of that type receives as ``attention_mask``. The first layer's call binds
it (:meth:`AttentionPlan.bind`): options validated, backend chosen, boundaries and positions read; what the
backends need (document ids, block masks, varlen layouts, dense masks, padding checks) is built on first use through
:meth:`AttentionPlan.once`. All host synchronisations happen there, once per forward; later layers only run
kernels. When a wrapper drops the mask (DeepSpeed Ulysses passes ``attention_mask=None``) or the user passes a 4D
tensor, :func:`plan_for` adopts one plan per forward, found again by the identity of the inputs every layer shares.

Backends: ``sdpa`` (exact dense path; trains on CPU), ``flex`` (FlexAttention block masks; CUDA, or CPU without
gradients), ``flash`` (flash-attn-4 varlen; anchor only). :func:`choose_backend` is the one place that decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _warn
from . import options as opts
from .kernels import flash4

# On CUDA, "auto" switches to FlexAttention from this query length on (shorter: the dense path is cheaper).
FLEX_MIN_LENGTH = 1024
BLOCK = 128  # FlexAttention block size of the block masks built here
_fallbacks_warned: set[str] = set()


class AttentionPlan:
    def __init__(
        self,
        name: str,
        batch_size,
        q_length,
        kv_length,
        device="cpu",
        mask_function=None,
        attention_mask=None,
        local_size=None,
        q_offset=0,
        kv_offset=0,
        **_,
    ):
        from transformers.masking_utils import causal_mask_function

        self.name = name
        self.batch_size, self.q_length, self.kv_length = batch_size, q_length, kv_length
        self.device, self.local_size, self.q_offset, self.kv_offset = device, local_size, q_offset, kv_offset
        self.mask_function = mask_function or causal_mask_function
        self.user_mask = None  # a 4D mask given by the caller (adopted plans)
        self.padding = attention_mask if attention_mask is None or attention_mask.dim() == 2 else None
        if attention_mask is not None and attention_mask.dim() == 4:
            self.user_mask = attention_mask
        self.bound = False
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------------------------------------ binding
    def bind(
        self,
        module,
        query,
        kwargs: dict,
        dropout: float,
        causal: bool,
        inputs: Callable[[dict], dict],
        flash_reason: Callable[[], str | None],
    ):
        """Decide this forward's backend from the first layer's call (later calls return at once). ``inputs(kwargs,
        plan)`` reads what the attention needs from the call's keyword arguments (boundaries, positions) into
        ``self.inputs``; ``flash_reason()`` says why the flash kernel cannot express this forward (None: it can) and
        is called only when that matters."""
        if self.bound:
            return self
        self.options = opts.options_for(module, self.name)
        self.causal, self.dropout = causal, dropout
        self.inputs = inputs(kwargs, self)
        self.backend = choose_backend(self, query, flash_reason)
        self.kernel_options = None
        if self.backend == "flex":
            from .kernels import flex

            self.kernel_options = flex.kernel_options(self.options.kernel_options(), query)
        self.bound = True
        return self

    def once(self, key, build: Callable[[], Any]):
        """``build()`` the first time ``key`` is asked for in this forward, the stored value afterwards."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def windowed(self) -> bool:
        """A sliding / chunked window layer, or a query block offset: rules composed with transformers' own."""
        return self.local_size is not None or bool(self.q_offset) or bool(self.kv_offset)

    # ------------------------------------------------------------------------------------------ shared inputs
    def key_valid(self) -> torch.Tensor | None:
        """``[B, K]`` bool of real keys, or None when there is no padding (one host sync per forward)."""

        def build():
            if self.padding is None:
                return None
            valid = self.padding[:, self.kv_offset : self.kv_offset + self.kv_length].to(torch.bool)
            return None if bool(valid.all()) else valid

        return self.once("key_valid", build)

    def dense_mask(self) -> torch.Tensor | None:
        """transformers' rule (causal / sliding / padding) as a ``[B, 1, Q, K]`` bool tensor (None: no rule)."""

        def build():
            if self.user_mask is not None:
                m = self.user_mask
                return (m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2)[..., : self.kv_length]
            if not self.causal and self.padding is None and self.local_size is None:
                return None
            from transformers.masking_utils import sdpa_mask

            return sdpa_mask(
                batch_size=self.batch_size,
                q_length=self.q_length,
                kv_length=self.kv_length,
                q_offset=self.q_offset,
                kv_offset=self.kv_offset,
                mask_function=self.mask_function,
                attention_mask=self.padding,
                local_size=self.local_size,
                allow_is_causal_skip=False,
                allow_is_bidirectional_skip=False,
                device=self.device,
            )

        return self.once("dense_mask", build)

    def causal_dense_mask(self) -> torch.Tensor | None:
        """:meth:`dense_mask`, or plain causality when transformers gave no rule and the layer is causal (None:
        bidirectional without padding)."""

        def build():
            mask = self.dense_mask()
            if mask is None and self.causal:
                from ..ops import masks

                mask = masks.dense_mask(
                    masks.causal_mod,
                    self.batch_size,
                    self.q_length,
                    self.kv_length,
                    self.device,
                    q_offset=self.kv_length - self.q_length,
                )
            return mask

        return self.once("causal_dense_mask", build)

    def transformers_block_mask(self, extra_mod=None):
        """transformers' own rule AND ``extra_mod`` as a compiled BlockMask (for rules the block maps of ``ops.blocks``
        cannot express, such as sliding windows)."""
        from transformers.masking_utils import and_masks, flex_attention_mask

        fn = self.mask_function if extra_mod is None else and_masks(self.mask_function, extra_mod)
        return flex_attention_mask(
            batch_size=self.batch_size,
            q_length=self.q_length,
            kv_length=self.kv_length,
            q_offset=self.q_offset,
            kv_offset=self.kv_offset,
            mask_function=fn,
            attention_mask=self.padding,
            device=self.device,
        )


def with_empty_rows(mask: torch.Tensor | None):
    """``(mask, empty)``: rows that may see no key (padding queries) get every key, so SDPA gives no NaN, and are
    zeroed afterwards through ``empty [B, 1, Q, 1]`` (None when there is no such row; one host sync)."""
    if mask is None:
        return None, None
    any_key = mask.any(dim=-1, keepdim=True)
    if bool(any_key.all()):
        return mask, None
    return mask | ~any_key, ~any_key


def choose_backend(plan: AttentionPlan, query, flash_reason: Callable[[], str | None]) -> str:
    """The backend of this forward (see the module docstring). Raises when the configured one cannot run at all."""
    backend, name = plan.options.backend, plan.name
    cuda = query.device.type == "cuda"
    if plan.q_length != plan.kv_length or plan.user_mask is not None or backend == "sdpa":
        return "sdpa"  # decoding with a cache (a few query rows), or a mask the caller built: the dense path
    if backend == "flash":
        device_reason = flash4.unavailable_reason(query.device.index) if cuda else "tensors are not on CUDA"
        if device_reason:
            raise RuntimeError(f"{name} backend 'flash' cannot run: {device_reason}.")
        reason = flash4.call_reason(query, plan.dropout) or flash_reason()
        if reason is None:
            return "flash"
        fallback = "sdpa" if plan.dropout else "flex"  # the dense path has dropout, FlexAttention does not
        if reason not in _fallbacks_warned:
            _fallbacks_warned.add(reason)
            _warn.warn(
                f"{name} backend 'flash': {reason}; these layers use "
                f"{'the dense SDPA path' if fallback == 'sdpa' else 'FlexAttention'}."
            )
        return fallback if fallback == "sdpa" else _flex_or_raise(plan, query)
    if backend == "flex":
        return _flex_or_raise(plan, query)
    # auto
    if not cuda or plan.q_length < FLEX_MIN_LENGTH or plan.dropout:
        return "sdpa"
    if (
        name == "anchor"
        and flash4.unavailable_reason(query.device.index) is None
        and flash4.verified_device(query.device.index)
        and flash4.call_reason(query, plan.dropout) is None
        and flash_reason() is None
    ):
        return "flash"
    return "flex"


def _flex_or_raise(plan: AttentionPlan, query) -> str:
    if query.device.type != "cuda" and torch.is_grad_enabled():
        raise RuntimeError(
            f"{plan.name} backend 'flex' on CPU is inference-only (FlexAttention has no CPU backward). Use backend "
            "'sdpa' (the exact path) or 'auto', or run under torch.no_grad()."
        )
    if plan.dropout:
        raise ValueError(
            f"{plan.name}: the FlexAttention backend has no attention dropout; set the model's "
            "attention_dropout to 0 or use backend 'sdpa'."
        )
    return "flex"


# Plans adopted for calls without one (the mask was dropped or given as a tensor): keyed by the identity of what all
# layers of one forward share; a few entries, each holding references to its key objects (ids are never reused).
_ADOPTED: list[tuple[tuple, AttentionPlan]] = []
_ADOPTED_MAX = 8


def plan_for(name: str, attention_mask, query, key, identity: tuple, causal: bool) -> AttentionPlan:
    """``attention_mask`` itself when it is a plan, else the plan adopted for this forward (see the module
    docstring); ``identity``: objects every layer of the forward passes (boundaries, positions)."""
    if isinstance(attention_mask, AttentionPlan):
        return attention_mask
    objs = (attention_mask,) + tuple(identity)
    sig = tuple(id(o) for o in objs) + (query.shape[0], query.shape[2], key.shape[2], causal, str(query.device))
    for key_objs_sig, plan in _ADOPTED:
        if key_objs_sig[0] == sig and all(a is b for a, b in zip(key_objs_sig[1], objs)):
            return plan
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    plan = AttentionPlan(
        name,
        query.shape[0],
        query.shape[2],
        key.shape[2],
        device=query.device,
        mask_function=causal_mask_function if causal else bidirectional_mask_function,
        attention_mask=attention_mask,
        kv_offset=0,
    )
    _ADOPTED.append(((sig, objs), plan))
    if len(_ADOPTED) > _ADOPTED_MAX:
        _ADOPTED.pop(0)
    return plan


def mask_function(name: str) -> Callable:
    """The function registered in ``AttentionMaskInterface`` under ``name``: a fresh plan per forward and mask type;
    with a KV cache (fewer queries than keys) transformers' own rule as a ``[B, 1, Q, K]`` bool tensor, which
    generation may also build ahead of the forward (static caches) and which the attention adopts (:func:`plan_for`)."""

    def make(batch_size, q_length, kv_length, *args, **kwargs):
        if args:
            raise TypeError("plugin mask functions take keyword arguments only (as transformers calls them)")
        if q_length != kv_length:
            from transformers.masking_utils import sdpa_mask

            kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
            kwargs.pop("config", None)
            return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, **kwargs)
        return AttentionPlan(name, batch_size, q_length, kv_length, **kwargs)

    make.__name__ = f"{name}_mask"
    return make
