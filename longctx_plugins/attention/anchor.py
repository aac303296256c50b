"""``attn_implementation="anchor"``: AnchorAttention for packed long-context training.

A packed window is ``[A, doc1 tokens, doc2 tokens, ...]`` with A the anchor (document id 0). Query q may attend key k
iff ``k <= q`` (decoders) and ``doc(q) == doc(k) or doc(k) == 0``: every token sees its own document causally plus
the one shared anchor. Document boundaries arrive as ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (what
:class:`~longctx_plugins.AnchorPackingCollator` emits: int tensors, or tuples of ints for sequence parallelism).
Without them, ``position_ids`` that restart mark documents packed the padding-free way (TRL's ``padding_free=True``):
each document then attends only to itself, starting at its own BOS. With neither, the rule is transformers' own mask,
so an ordinary unpacked batch gives exactly what ``sdpa`` gives.

Under DeepSpeed Ulysses sequence parallelism this function runs inside DeepSpeed's wrapper on the whole gathered
sequence for a slice of the heads; the wrapper drops the per-shard mask (``attention_mask=None``), so the rule is
rebuilt from the boundaries, which cover the whole window.

The plan (:mod:`.plan`) decides the backend once per forward: the flash-attn-4 varlen kernel over per-document
anchor copies (:mod:`longctx_plugins.ops.varlen`), FlexAttention with one block mask built from the boundaries, or
the exact dense path. This module only reads the boundaries and runs the chosen kernel.
"""

from __future__ import annotations

import torch

from ..ops import blocks, masks, varlen
from ..ops.dense import repeat_kv
from . import plan as plans
from .kernels import flash4, flex, sdpa

anchor_mask = plans.mask_function("anchor")


def _read_boundaries(batch: int, q_len: int, kv_len: int, device):
    def read(kwargs: dict, plan=None) -> dict:
        cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
        if cu_q is None and cu_k is None:
            return {
                "doc_ids": _documents_from_positions(kwargs.get("position_ids"), batch, q_len, kv_len, device),
                "from_positions": True,
            }
        cu = cu_q if cu_q is not None else cu_k
        if cu_q is not None and cu_k is not None and cu_k is not cu_q and not _same(cu_q, cu_k):
            raise ValueError(
                "anchor attention: cu_seq_lens_q and cu_seq_lens_k differ; packed self-attention needs "
                "one set of boundaries."
            )
        if q_len != kv_len:
            raise ValueError(
                "anchor attention: packed boundaries (cu_seq_lens_*) were given together with a KV cache "
                f"(query length {q_len} != key length {kv_len}). Packed training runs with use_cache=False."
            )
        if not isinstance(cu, torch.Tensor):  # tuple of ints: the sequence-parallel form (survives sharding)
            cu = torch.as_tensor(cu, dtype=torch.int32, device=device)
        return {"doc_ids": masks.doc_ids_from_cu_seqlens(cu.to(device), batch, q_len)}

    return read


def _documents_from_positions(position_ids, batch: int, q_len: int, kv_len: int, device):
    """Document ids ``[B, T]`` of a batch packed the padding-free way (TRL's ``padding_free=True``, transformers'
    ``DataCollatorWithFlattening`` without ``cu_seq_lens``): positions restart at every document, each document
    starting with its own BOS, which is its anchor copy. Segments are numbered from 1, so no token is a shared anchor:
    every token sees its own document causally, exactly as each document run alone. None when positions are
    contiguous (an ordinary batch: transformers' own rule applies). One host sync per forward."""
    if position_ids is None or q_len != kv_len or q_len < 2:
        return None
    pos = position_ids.to(device).expand(batch, -1)
    restart = pos[:, 1:] != pos[:, :-1] + 1
    if not bool(restart.any()):
        return None
    first = torch.ones(batch, 1, dtype=torch.long, device=device)
    return torch.cat([first, 1 + restart.to(torch.long).cumsum(-1)], dim=-1)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a.cpu(), b.cpu()) if a.device != b.device else torch.equal(a, b)
    return [int(x) for x in a] == [int(x) for x in b]


def _flash_reason(plan: plans.AttentionPlan) -> str | None:
    """Why the varlen form cannot express this forward's rule (None: it can). Padding is fine when it fills segments
    of its own (AnchorPackingCollator's padding): real tokens are then exact and padding rows unspecified."""
    doc_ids = plan.inputs["doc_ids"]
    if doc_ids is None:
        return "no packed boundaries (cu_seq_lens_*)"
    if plan.inputs.get("from_positions"):
        return "documents read from restarting position_ids (pass cu_seq_lens_q/k for the varlen kernel)"
    if plan.windowed:
        return "a sliding/chunked window layer"
    valid = plan.key_valid()
    if valid is not None and not plan.once("padding_isolated", lambda: varlen.padding_isolated(doc_ids, valid)):
        return "attention_mask padding inside a packed document (pad whole segments, as AnchorPackingCollator does)"
    return None


def _block_mask(plan: plans.AttentionPlan):
    """The anchor BlockMask of this forward: from the boundaries, or composed with transformers' rule on windowed
    layers."""
    doc_ids = plan.inputs["doc_ids"]
    if doc_ids is None:
        return plan.transformers_block_mask()
    if plan.windowed:
        return plan.transformers_block_mask(masks.anchor_document_mod(doc_ids))
    any_, full = blocks.anchor_blocks(doc_ids, plans.BLOCK, plan.causal)
    mod = masks.anchor_mod(doc_ids, plan.causal)
    valid = plan.key_valid()
    if valid is not None:  # explicit padding beyond what the boundaries say
        mod = masks.and_mods(mod, masks.key_valid_mod(valid))
        full = full & blocks.block_all(valid, plans.BLOCK)[:, None, :]
    return blocks.to_block_mask(any_, full, mod, plan.q_length, plan.kv_length, plans.BLOCK)


def _dense_mask(plan: plans.AttentionPlan):
    mask = plan.causal_dense_mask()
    doc_ids = plan.inputs["doc_ids"]
    if doc_ids is not None:
        doc = masks.dense_mask(
            masks.anchor_mod(doc_ids, plan.causal), plan.batch_size, plan.q_length, plan.kv_length, doc_ids.device
        )
        mask = doc if mask is None else mask & doc
    return plans.with_empty_rows(mask)


def anchor_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """AttentionInterface function. ``query [B,H,Q,D]``, ``key/value [B,Hkv,K,D]`` (RoPE applied, GQA not
    expanded). Returns ``([B,Q,H,D], None)``."""
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if (
        attention_mask is None
        and kwargs.get("cu_seq_lens_q", kwargs.get("cu_seq_lens_k")) is not None
        and (kwargs.get("sliding_window") or getattr(module, "sliding_window", None))
    ):
        raise NotImplementedError(
            "anchor attention received no attention mask on a sliding-window layer (a sequence-parallel wrapper such "
            "as DeepSpeed Ulysses drops the mask). Sliding windows under sequence parallelism are not supported; "
            "train this model without sequence parallelism or with its sliding window disabled."
        )
    plan = plans.plan_for(
        "anchor", attention_mask, query, key, (kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")), causal
    )
    plan.bind(
        module,
        query,
        kwargs,
        dropout,
        causal,
        _read_boundaries(batch, q_len, kv_len, query.device),
        lambda: _flash_reason(plan),
    )

    if plan.backend == "flash":
        layout = plan.once("varlen_layout", lambda: varlen.anchor_varlen_layout(plan.inputs["doc_ids"]))
        return varlen.anchor_varlen_attention(query, key, value, layout, scaling, causal, flash4.varlen), None
    if plan.backend == "flex":
        block_mask = plan.once("anchor_block_mask", lambda: _block_mask(plan))
        expand = plan.options.flex_expand_kv
        if query.shape[1] != key.shape[1] and (torch.is_grad_enabled() if expand is None else expand):
            # grouped-query layers in training: KV heads copied per query head, so the flex backward writes dK/dV per
            # head instead of accumulating across the group; identical results. 1.1B train step at 32k: 1160 ->
            # 1021 ms (benchmarks/results/anchor_trainer_expand_kv.json).
            n_rep = query.shape[1] // key.shape[1]
            key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
        out = flex.attention(query, key, value, block_mask, scaling, plan.kernel_options)
        return out.transpose(1, 2).contiguous(), None
    mask, empty = plan.once("anchor_dense_mask", lambda: _dense_mask(plan))
    out = sdpa.attention(query, key, value, mask, scaling, dropout, empty)
    return out.transpose(1, 2).contiguous(), None
