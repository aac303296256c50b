"""Plain reference attention: dense mask, eager softmax in float32. Tests compare every fast path with it."""
from __future__ import annotations

import torch


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def masked_softmax_attention(logits: torch.Tensor, mask: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``softmax(logits masked) @ value`` in float32; rows with no allowed key give 0. Returns ``[B, H, Q, D]``."""
    logits = logits.to(torch.float32)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    value = repeat_kv(value, logits.shape[1] // value.shape[1])
    return torch.matmul(probs, value.to(torch.float32))


def eager_attention(query, key, value, mask: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """Reference attention, ``query [B,H,Q,D]``, ``key/value [B,Hkv,K,D]``, ``mask [B,1|H,Q,K]`` bool.

    Output ``[B, H, Q, D]`` in float32.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    logits = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2)) * scale
    return masked_softmax_attention(logits, mask, value)


def anchor_by_documents(query, key, value, doc_ids: torch.Tensor, scale: float | None = None,
                        causal: bool = True) -> torch.Tensor:
    """AnchorAttention computed document by document (the varlen form of SPEC §4), never materialising S x S.

    For each row and document: keys = [anchor, document tokens], causal inside the document. Used as the
    reference at lengths where a dense mask does not fit (128k). Returns ``[B, H, Q, D]`` float32.
    """
    import torch.nn.functional as F

    scale = query.shape[-1] ** -0.5 if scale is None else scale
    n_rep = query.shape[1] // key.shape[1]
    out = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    for b in range(query.shape[0]):
        ids = doc_ids[b]
        anchors = (ids == 0).nonzero().flatten()
        for d in torch.unique(ids).tolist():
            idx = (ids == d).nonzero().flatten()
            if d == 0:
                keys = idx
            else:
                keys = torch.cat([anchors, idx])
            q = query[b:b + 1, :, idx].to(torch.float32)
            k = repeat_kv(key[b:b + 1, :, keys], n_rep).to(torch.float32)
            v = repeat_kv(value[b:b + 1, :, keys], n_rep).to(torch.float32)
            if causal:
                # query idx[i] may see key keys[j] iff keys[j] <= idx[i]
                mask = keys[None, :] <= idx[:, None]
            else:
                mask = torch.ones(len(idx), len(keys), dtype=torch.bool, device=query.device)
                if d == 0:
                    mask = keys[None, :] == idx[:, None]
            out[b:b + 1, :, idx] = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out
