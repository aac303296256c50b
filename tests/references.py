"""Plain references the tests (and the benchmarks' correctness checks) compare every fast path against: dense masks
and per-document loops, softmax in float32. Not used at run time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longctx_plugins.ops.dense import repeat_kv


def masked_softmax_attention(logits: torch.Tensor, mask: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``softmax(logits masked) @ value`` in float32; rows with no allowed key give 0. Returns ``[B, H, Q, D]``."""
    logits = logits.to(torch.float32)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    value = repeat_kv(value, logits.shape[1] // value.shape[1])
    return torch.matmul(probs, value.to(torch.float32))


def dca_relative_position(i: int, j: int, chunk_size: int, local_window: int) -> int:
    """Dual Chunk Attention's rotation distance of pair (i, j), ``j <= i``, written out from the definition."""
    c, top = chunk_size, chunk_size + local_window
    a, b, dc = i % c, j % c, i // c - j // c
    if dc == 0:
        return a - b
    if dc == 1:
        return min(a + c, top) - b
    return min(2 * c - 1, top) - b


def string_relative_position(i: int, j: int, shift: int, local_window: int) -> int:
    """STRING's rotation distance of pair (i, j), ``j <= i``, written out from the definition."""
    d = i - j
    return d if d < shift else d - shift + local_window


def eager_attention(query, key, value, mask: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """Reference attention, ``query [B,H,Q,D]``, ``key/value [B,Hkv,K,D]``, ``mask [B,1|H,Q,K]`` bool.

    Output ``[B, H, Q, D]`` in float32.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    logits = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2)) * scale
    return masked_softmax_attention(logits, mask, value)


def anchor_by_documents(
    query, key, value, doc_ids: torch.Tensor, scale: float | None = None, causal: bool = True
) -> torch.Tensor:
    """AnchorAttention computed document by document (keys: the anchor plus the document's own tokens), never
    materialising S x S.

    For each row and document: keys = [anchor, document tokens], causal inside the document. Used as the
    reference at lengths where a dense mask does not fit (128k). Returns ``[B, H, Q, D]`` float32.
    """
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
            q = query[b : b + 1, :, idx].to(torch.float32)
            k = repeat_kv(key[b : b + 1, :, keys], n_rep).to(torch.float32)
            v = repeat_kv(value[b : b + 1, :, keys], n_rep).to(torch.float32)
            if causal:
                # query idx[i] may see key keys[j] iff keys[j] <= idx[i]
                mask = keys[None, :] <= idx[:, None]
            else:
                mask = torch.ones(len(idx), len(keys), dtype=torch.bool, device=query.device)
                if d == 0:
                    mask = keys[None, :] == idx[:, None]
            out[b : b + 1, :, idx] = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out


def varlen_attention_reference(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal):
    """Varlen attention in float32, one document at a time (bottom-right causal alignment, as flash-attn).
    ``q [total_q, H, D]``, ``k/v [total_k, Hkv, D]`` -> ``[total_q, H, D]`` in q's dtype."""
    out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float32, device=q.device)
    n_rep = q.shape[1] // k.shape[1]
    for s in range(cu_q.numel() - 1):
        a, b, c, d = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        qs = q[a:b].transpose(0, 1).float()
        ks = k[c:d].transpose(0, 1).float().repeat_interleave(n_rep, 0)
        vs = v[c:d].transpose(0, 1).float().repeat_interleave(n_rep, 0)
        mask = None
        if causal:
            mask = torch.arange(d - c, device=q.device)[None, :] <= torch.arange(b - a, device=q.device)[:, None] + (
                (d - c) - (b - a)
            )
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale).transpose(0, 1)
    return out.to(q.dtype)


def self_extend_reference(
    query, key, value, q_pos, k_pos, inv_freq, group_size: int, window: int, *, causal: bool, mask, scale: float
):
    """SelfExtend through the exact multi-pass path (checked pair by pair against the definition in
    tests/test_self_extend.py). ``[B, H, Q, D]`` float32."""
    from longctx_plugins.ops import passes, self_extend

    return passes.dense_attention(
        query,
        key,
        value,
        q_pos,
        k_pos,
        self_extend.passes(group_size, window, causal),
        inv_freq,
        mask=mask,
        scale=scale,
    )


def flash_reference(
    q,
    k,
    v,
    cu_q,
    cu_k,
    max_q,
    max_k,
    dropout_p,
    is_causal,
    debug,
    *,
    scale,
    window_size_left=None,
    window_size_right=None,
):
    """Float32 stand-in for ``torch.ops.aten._flash_attention_forward`` (flash attention's contract, for CPU tests of
    the code that slices and packs its calls): ``[B, S, H, D]`` inputs, or packed ``[T, H, D]`` with ``cu_seqlens``;
    grouped key heads; causal and local windows aligned to the bottom right (key j of query i allowed when
    ``i + sk - sq - left <= j <= i + sk - sq + right``, ``right = 0`` when causal, None / -1 unbounded); lse
    ``[B, H, S]`` or ``[H, T]``, ``+inf`` on rows with no key (as flash writes it)."""

    def one(qs, ks, vs):  # [S, H, D] against [Sk, Hk, D]
        sq, sk = qs.shape[0], ks.shape[0]
        r = qs.shape[1] // ks.shape[1]
        ks, vs = ks.repeat_interleave(r, 1), vs.repeat_interleave(r, 1)
        i = torch.arange(sq)[:, None] + sk - sq
        j = torch.arange(sk)[None, :]
        allowed = torch.ones(sq, sk, dtype=torch.bool)
        right = 0 if is_causal and window_size_right in (None, -1) else window_size_right
        if right is not None and right >= 0:
            allowed &= j <= i + right
        if window_size_left is not None and window_size_left >= 0:
            allowed &= j >= i - window_size_left
        logits = torch.einsum("qhd,khd->hqk", qs.float(), ks.float()) * scale
        logits = logits.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(logits, -1)
        out = torch.einsum("hqk,khd->qhd", torch.nan_to_num(torch.softmax(logits, -1), nan=0.0), vs.float())
        return out.to(qs.dtype), lse.masked_fill(lse.isneginf(), float("inf"))

    if cu_q is None:
        pieces = [one(q[b], k[b], v[b]) for b in range(q.shape[0])]
        return torch.stack([p[0] for p in pieces]), torch.stack([p[1] for p in pieces]), None, None, None
    outs, lses = [], []
    for s in range(len(cu_q) - 1):
        qa, qb, ka, kb = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        o, l_ = one(q[qa:qb], k[ka:kb], v[ka:kb])
        outs.append(o)
        lses.append(l_)
    return torch.cat(outs), torch.cat(lses, dim=-1), None, None, None


def causal_lse_reference(kernel, q, k, v, scale, causal=True):
    """Float32 stand-in for :func:`longctx_plugins.attention.kernels.fused_lse.causal_attention_lse` (cuDNN / flash on
    CUDA): ``(out, lse)`` of ``q [B,H,n,D]`` against ``k``/``v`` ``[B,H,m,D]``, top-left causal when ``causal``; a row
    that sees no key gets zeros and ``-inf``."""
    n, m = q.shape[2], k.shape[2]
    allowed = torch.ones(n, m, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    logits = (q.float() @ k.float().transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, -1), nan=0.0) @ v.float(), torch.logsumexp(logits, -1)
