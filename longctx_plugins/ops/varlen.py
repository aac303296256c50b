"""AnchorAttention in varlen form: every document gets its own copy of its row's anchor as key 0, then
plain intra-document attention, causal with the bottom-right alignment of varlen kernels (query i of a document of
length n sees keys 0..i+1 of its n+1 keys: the anchor and the document up to itself). Pure torch.

:func:`anchor_varlen_layout` turns per-token document ids into cumulative lengths and a key gather index once per
forward. The queries are the whole batch in order (each anchor is a segment of its own whose only key is itself),
so queries and output need no gather or scatter; only keys/values are gathered to insert the anchor copies.
:func:`anchor_varlen_attention` runs any varlen kernel with the flash-attn calling convention
(``kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal) -> [total_q, H, D]``);
:func:`tests.references.varlen_attention_reference` is that kernel in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class VarlenLayout:
    kv_index: torch.Tensor  # [total_k] per segment: its row's anchor (documents of rows with one), then its tokens
    cu_q: torch.Tensor  # [S + 1] int32 over all B * T tokens (anchors are one-token segments)
    cu_k: torch.Tensor  # [S + 1] int32
    max_q: int
    max_k: int


def anchor_varlen_layout(doc_ids: torch.Tensor) -> VarlenLayout:
    """``doc_ids [B, T]`` (0 = the row's anchor, as :func:`~longctx_plugins.ops.masks.doc_ids_from_cu_seqlens` gives;
    each other id one contiguous segment) -> :class:`VarlenLayout`. One host sync (the maximum lengths)."""
    batch, seq_len = doc_ids.shape
    flat = doc_ids.reshape(-1).to(torch.long)
    total = flat.numel()
    pos = torch.arange(total, device=flat.device)
    starts = (pos % seq_len == 0) | (flat == 0)  # segments never cross rows; every anchor stands alone
    starts[1:] |= flat[1:] != flat[:-1]
    seg_start = starts.nonzero().flatten()
    seg_len = torch.diff(F.pad(seg_start, (0, 1), value=total))
    seg_row = seg_start // seq_len
    # documents (not anchors) in rows that have an anchor get one extra key: the anchor's copy
    extra = ((flat[seg_start] != 0) & (doc_ids[:, 0] == 0)[seg_row]).to(torch.long)
    cu_q = F.pad(torch.cumsum(seg_len, 0), (1, 0))
    cu_k = F.pad(torch.cumsum(seg_len + extra, 0), (1, 0))
    seg_of_token = torch.cumsum(starts.to(torch.long), 0) - 1
    kv_index = torch.empty(int(cu_k[-1]), dtype=torch.long, device=flat.device)
    kv_index[pos + torch.cumsum(extra, 0)[seg_of_token]] = pos  # each token moves right by the copies up to its own
    kv_index[cu_k[:-1][extra.bool()]] = seg_row[extra.bool()] * seq_len
    max_q, max_k = torch.stack([seg_len.max(), (seg_len + extra).max()]).tolist()
    return VarlenLayout(kv_index, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k)


def padding_isolated(doc_ids: torch.Tensor, valid: torch.Tensor) -> bool:
    """Whether padding (``valid [B, T]`` False) occupies whole segments of its own, under a real anchor where a real
    document needs one: then the varlen form is exact on every real token (padding rows attend their own segment, and
    no real token sees them). One host sync."""
    same = doc_ids[:, 1:] == doc_ids[:, :-1]
    mixed = (same & (valid[:, 1:] != valid[:, :-1])).any()
    lost_anchor = ((doc_ids[:, :1] == 0) & ~valid[:, :1] & valid).any()
    return not bool(mixed | lost_anchor)


def anchor_varlen_attention(query, key, value, layout: VarlenLayout, scale: float, causal: bool, kernel):
    """``query [B, H, T, D]``, ``key/value [B, Hkv, T, D]`` (RoPE applied) -> ``[B, T, H, D]``. Differentiable when
    ``kernel`` is (gradients of the anchor's copies add up at the anchor). Free of copies for q when it is laid out
    ``[B, T, H, D]`` in memory, as transformers' projections leave it."""
    batch, heads, seq_len, dim = query.shape
    q = query.transpose(1, 2).reshape(batch * seq_len, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq_len, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * seq_len, value.shape[1], value.shape[-1])
    # index_select: its backward is index_add (the anchor's copies accumulate), cheaper than advanced indexing's
    k, v = k.index_select(0, layout.kv_index), v.index_select(0, layout.kv_index)
    out = kernel(q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k, scale, causal)
    return out.view(batch, seq_len, heads, v.shape[-1])
