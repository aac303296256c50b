"""``attn_implementation="anchor"``: AnchorAttention for packed long-context training.

Rule (SPEC §4): query q may attend key k iff ``k <= q`` (decoders) and ``doc(q) == doc(k) or doc(k) == 0``
(the anchor). Document boundaries arrive as ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (what
:class:`~longctx_plugins.AnchorPackingCollator` emits: int tensors, or tuples of ints for sequence parallelism);
without them the rule is transformers' own mask, so an ordinary unpacked batch gives exactly what ``sdpa`` gives.

Under DeepSpeed Ulysses sequence parallelism (see :mod:`longctx_plugins.training.sequence_parallel`) this function
runs inside DeepSpeed's wrapper on the full gathered sequence for a slice of the heads; the wrapper drops the
per-shard mask (``attention_mask=None``), so the rule is rebuilt here from the boundaries, which cover the whole
window.

Backends: on CUDA, FlexAttention with one block mask per forward built directly from the boundaries (never
S x S, no compilation of the mask), or, with flash-attn-4 installed, its varlen kernel over per-document anchor
copies (:mod:`._flash`; ``auto`` on sm90 only); elsewhere an exact SDPA path over a dense boolean mask (supports
training on CPU). Choose with ``model.config.anchor_backend = "auto" | "flex" | "sdpa" | "flash"`` or
``LONGCTX_ANCHOR_BACKEND``.
"""
from __future__ import annotations

import torch

from ..ops import blocks, masks, varlen
from ..ops.reference import repeat_kv
from . import _common, _flash

_doc_cache = _common.IdentityCache()
_block_cache = _common.IdentityCache()
_plan_cache = _common.IdentityCache()
_layout_cache = _common.IdentityCache()
_padding_cache = _common.IdentityCache()


def anchor_mask(batch_size, q_length, kv_length, *args, **kwargs):
    """Mask function registered under "anchor": transformers' own rule (causal / sliding / padding), always
    materialised as a dense bool mask, or a :class:`FlexPlan` on the FlexAttention path."""
    return _common.make_mask("anchor", batch_size, q_length, kv_length, args, kwargs)


def _doc_ids(kwargs, batch: int, q_len: int, kv_len: int, device):
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and cu_k is None:
        return None
    cu = cu_q if cu_q is not None else cu_k
    if cu_q is not None and cu_k is not None and cu_k is not cu_q and not _same_boundaries(cu_q, cu_k):
        raise ValueError("anchor attention: cu_seq_lens_q and cu_seq_lens_k differ; packed self-attention needs one set.")
    if q_len != kv_len:
        raise ValueError(
            "anchor attention: packed boundaries (cu_seq_lens_*) were given together with a KV cache "
            f"(query length {q_len} != key length {kv_len}). Packed training runs with use_cache=False."
        )
    if not isinstance(cu, torch.Tensor):  # tuple of ints: the sequence-parallel form (survives sequence sharding)
        cu = _doc_cache.get((cu,), ("tensor",), lambda: torch.as_tensor(cu, dtype=torch.int32, device=device))
    return _doc_cache.get((cu,), (batch, q_len), lambda: masks.doc_ids_from_cu_seqlens(cu, batch, q_len))


def _same_boundaries(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return [int(x) for x in a] == [int(x) for x in b]


def anchor_block_mask(plan: _common.FlexPlan, doc_ids, causal: bool):
    """The anchor BlockMask for one forward: built from boundaries when the layer has no local window."""
    if doc_ids is None:
        return plan.block_mask()
    if plan.local_size is not None or plan.q_offset or plan.kv_offset:
        return plan.block_mask(masks.anchor_document_mod(doc_ids))  # windowed layers: compose with transformers
    any_, full = blocks.anchor_blocks(doc_ids, _common.BLOCK, causal)
    mod = masks.anchor_mod(doc_ids, causal)
    valid = plan.key_valid()
    if valid is not None:  # explicit padding beyond what the boundaries say
        mod = masks.and_mods(mod, _common.key_valid_mod(valid))
        full = full & blocks.block_all(valid, _common.BLOCK)[:, None, :]
    return blocks.to_block_mask(any_, full, mod, plan.q_length, plan.kv_length, _common.BLOCK)


def _varlen_plan_reason(plan: _common.FlexPlan, doc_ids) -> str | None:
    """Why the varlen form cannot express this call's rule (None: it can). Padding is fine when it fills segments of
    its own (AnchorPackingCollator's padding): real tokens are then exact and padding rows unspecified."""
    if doc_ids is None:
        return "no packed boundaries (cu_seq_lens_*)"
    if plan.local_size is not None or plan.q_offset or plan.kv_offset:
        return "a sliding/chunked window layer"
    valid = plan.key_valid()
    if valid is not None and not _padding_cache.get((plan, doc_ids), (),
                                                    lambda: varlen.padding_isolated(doc_ids, valid)):
        return "attention_mask padding inside a packed document (pad whole segments, as AnchorPackingCollator does)"
    return None


def _rebuilt_plan(module, kwargs, doc_ids, batch, q_len, kv_len, device, causal):
    """The mask was dropped by a wrapper (DeepSpeed Ulysses discards per-shard masks): the boundaries alone define
    the rule. A FlexPlan on the flex path (cached for all layers of the forward); None (plain causal) otherwise."""
    if kwargs.get("sliding_window") or getattr(module, "sliding_window", None):
        raise NotImplementedError(
            "anchor attention received no attention mask on a sliding-window layer (a sequence-parallel wrapper such "
            "as DeepSpeed Ulysses drops the mask). Sliding windows under sequence parallelism are not supported; "
            "train this model without sequence parallelism or with its sliding window disabled."
        )
    if not _common.use_flex(module.config, "anchor", device, q_len, kv_len):
        return None

    def build():
        from transformers.masking_utils import (
            bidirectional_mask_function,
            causal_mask_function,
        )

        fn = causal_mask_function if causal else bidirectional_mask_function
        return _common.FlexPlan(batch, q_len, kv_len, device=device, mask_function=fn)

    return _plan_cache.get((doc_ids,), (q_len, kv_len, causal), build)


def anchor_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """AttentionInterface function. ``query [B,H,Q,D]``, ``key/value [B,Hkv,K,D]`` (RoPE applied, GQA not
    expanded). Returns ``([B,Q,H,D], None)``."""
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    doc_ids = _doc_ids(kwargs, batch, q_len, kv_len, query.device)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if attention_mask is None and doc_ids is not None:
        attention_mask = _rebuilt_plan(module, kwargs, doc_ids, batch, q_len, kv_len, query.device, causal)

    if isinstance(attention_mask, _common.FlexPlan):
        plan = attention_mask
        if _flash.choose(_common.backend_for(module.config, "anchor"), query, dropout,
                         lambda: _varlen_plan_reason(plan, doc_ids)):
            layout = _layout_cache.get((doc_ids,), (), lambda: varlen.anchor_varlen_layout(doc_ids))
            return varlen.anchor_varlen_attention(query, key, value, layout, scaling, causal, _flash.kernel), None
        if dropout:
            raise ValueError(
                "anchor attention: the FlexAttention backend has no attention dropout; set the model's "
                "attention_dropout to 0 or anchor_backend='sdpa'."
            )
        block_mask = _block_cache.get((attention_mask, doc_ids), (causal,),
                                      lambda: anchor_block_mask(attention_mask, doc_ids, causal))
        expand = getattr(module.config, "anchor_flex_expand_kv", None)
        if query.shape[1] != key.shape[1] and (torch.is_grad_enabled() if expand is None else expand):
            # grouped-query layers in training: KV heads copied per query head, so the flex backward writes dK/dV per
            # head instead of accumulating across the group; identical results. 1.1B train step at 32k: 1160 ->
            # 1021 ms (benchmarks/results/anchor_trainer_expand_kv.json). Config None = when gradients are on.
            n_rep = query.shape[1] // key.shape[1]
            key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
        out = _common.compiled_flex(query.device)(
            query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1],
            kernel_options=_common.flex_kernel_options(module.config, "anchor", query),
        )
        return out.transpose(1, 2).contiguous(), None

    mask = _common.to_bool_mask(attention_mask, module, q_len, kv_len, query.device, causal)
    if doc_ids is not None:
        doc_mask = masks.dense_mask(masks.anchor_mod(doc_ids, causal), batch, q_len, kv_len, query.device)
        mask = doc_mask if mask is None else mask & doc_mask
    return _common.sdpa_dense(query, key, value, mask, scaling, dropout), None
