"""Multi-pass attention for KV-cache decoding that reads the cached keys once where the passes allow it.

Same contract and result as :func:`~longctx_plugins.ops.passes.dense_attention` (each pair's logit from the pass that
covers it, one float32 softmax, one ``P @ V``); built for a few query rows against a long cache.

RoPE logits depend on rotation differences only: a query rotated at ``i`` against a key rotated at ``j`` gives the
same logit after rotating the query by ``t`` and the key by ``u`` as after rotating the query alone by ``t - u``. A
pass that moves keys by ``dk(j) = Pk(j) - j`` and queries by ``dq(i) = Pq(i) - i`` is therefore computed against the
cached keys as they are, with the query rotated by ``dq(i) - dk(j)``, whenever ``dk`` takes few values:

* ``dk`` constant (identity, ``Positions(c=...)``: every pass of STRING, SelfExtend's ``near``, the plain pass of
  :func:`~longctx_plugins.ops.passes.exact_below`): one query variant per distinct ``(Pq, dk)``, all stacked into one
  matmul against the cache (*global* layout).
* ``dk`` constant per chunk of ``c`` positions (``Positions(a=1, b, div=c)``, Dual Chunk Attention's ``j mod c``)
  and every band deciding per key chunk: the pass, hence the query rotation, is fixed per (query, key chunk). The
  cache is cut into blocks of at most ``c`` slots (a view, no copy); a block touches at most two position chunks (two
  heads when the block size does not divide the cache length), so each block is multiplied by 2 (or 4) rotated copies
  of its head's queries and every key keeps the product of its own chunk (*chunked* layout).
* Any other key map (SelfExtend's ``far`` passes: keys at ``floor(j/G)``, i.e. ``dk = floor(j/G) - j``, a different
  rotation for every key) cannot move to the query side: its keys are re-rotated once, as ``dense_attention`` does,
  and that group's query variants stacked against them.

Chunked layout precondition: each row's key positions are consecutive in the slots, ``k_pos[b, s] = s - offset_b``
(what :func:`longctx_plugins.attention.decode.positions` gives, left padding and empty static-cache slots included).
Every pass structure is handled (no fallback to ``dense_attention``); exact up to float32 rounding. Tensor ops only,
no host sync, shapes fixed by the input shapes: torch.compile traces it in one graph.
"""

from __future__ import annotations

import math

import torch

from . import passes as P
from .rope import apply_rotation


def _query_side(k: P.Positions) -> bool:
    """Key map moving every key by one constant (identity included)."""
    return k.a == 1 and k.b == 0 and k.max is None


def _chunk_constant(k: P.Positions) -> bool:
    """Key map moving keys by a constant per chunk of ``k.div`` positions."""
    return k.a == 1 and k.b != 0 and k.div > 1 and k.max is None


def chunk_size(passes) -> int | None:
    """``c`` when the passes take the chunked layout: key maps constant or constant per chunk of one ``c`` (at least
    one of them), every band constant over key chunks of ``c`` (``k_div`` a multiple of c, or no distance bound)."""
    divs = {p.k.div for p in passes if _chunk_constant(p.k)}
    if len(divs) != 1 or not all(_query_side(p.k) or _chunk_constant(p.k) for p in passes):
        return None
    c = divs.pop()
    for p in passes:
        b = p.band
        if not ((b.lo == -math.inf and b.hi == math.inf) or b.k_div % c == 0):
            return None
    return c


def blocking(kv_len: int, c: int) -> tuple[int, int]:
    """``(block size, heads a block may touch)``: the largest block size <= c dividing ``kv_len`` found among
    ``kv_len // n`` for ``n`` from ``ceil(kv_len / c)`` to twice that (blocks then stay inside one head), else ``c``
    with blocks that may cross into the next head."""
    if kv_len <= c:
        return kv_len, 1
    n0 = -(-kv_len // c)
    for n in range(n0, 2 * n0 + 1):
        if kv_len % n == 0:
            return kv_len // n, 1
    return c, 2


def logit_copies(passes, kv_len: int) -> int:
    """How many float32 tensors of ``[B, H, Q, K]`` logits one call holds at most (for callers that bound memory by
    splitting the query rows)."""
    c = chunk_size(passes)
    if c is not None:
        return 2 * blocking(kv_len, c)[1] + 2
    return len({(p.q, p.k) for p in passes}) + 2


def _rotate(x: torch.Tensor, angle: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``x [..., D]`` rotated further by ``angle`` (integer positions, broadcastable to ``x[..., 0]``), as
    :func:`~longctx_plugins.ops.passes.rotated` rotates (float32 tables, result in ``x.dtype``)."""
    freqs = angle.to(torch.float32)[..., None] * inv_freq.to(device=angle.device, dtype=torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    x = x.expand(*torch.broadcast_shapes(x.shape[:-1], angle.shape), x.shape[-1])
    return apply_rotation(x, emb.cos(), emb.sin())


def _query_angle(p: P.Pass, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``dq(i) - dk(j)`` of pass ``p`` (broadcast over the position tensors)."""
    return (p.q(q_pos) - q_pos) - (p.k(k_pos) - k_pos)


def _global_logits(query, key, q_pos, k_pos, passes, sels, inv_freq, scale: float) -> torch.Tensor:
    """Selected float32 logits ``[B, Hkv, r, Q, K]``: per key tensor (the cache, or a key map that must re-rotate it)
    one matmul over the stacked query variants, then each pair's logit from the pass covering it (last pass wins, as
    in ``dense_attention``)."""
    B, H, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    r = H // Hkv
    groups: dict = {}  # key map (None: the cache as it is) -> query variants, in first-use order
    where: list = []  # per pass: (group, variant index)
    for p in passes:
        group, variant = (None, (p.q, p.k.c)) if _query_side(p.k) else (p.k, (p.q, 0))
        variants = groups.setdefault(group, [])
        index = len(variants)  # (no list.index: torch.compile traces this loop)
        for i, seen in enumerate(variants):
            if seen == variant:
                index = i
        if index == len(variants):
            variants.append(variant)
        where.append((group, index))
    logits: dict = {}
    for group, variants in groups.items():
        keys = key if group is None else P.rotated(key, k_pos, group, inv_freq)
        qs = []
        for q_map, k_shift in variants:
            if q_map.is_identity and k_shift == 0:
                qs.append(query)
            elif k_shift == 0:
                qs.append(P.rotated(query, q_pos, q_map, inv_freq))
            else:
                qs.append(_rotate(query, (q_map(q_pos) - q_pos - k_shift)[:, None], inv_freq))
        stacked = torch.stack([q.reshape(B, Hkv, r, Q, D) for q in qs], dim=3)  # [B, Hkv, r, V, Q, D]
        lg = P.matmul_f32(stacked.reshape(B, Hkv, r * len(qs) * Q, D), keys.transpose(-1, -2)) * scale
        logits[group] = lg.view(B, Hkv, r, len(qs), Q, K)
    out: torch.Tensor | None = None
    for sel, (group, v) in zip(sels, where):
        lg = logits[group][:, :, :, v]
        out = torch.where(sel[:, None, None], lg, lg.new_tensor(-math.inf) if out is None else out)
    assert out is not None, "no passes"
    return out


def _chunked_logits(query, key, q_pos, k_pos, passes, inv_freq, scale: float, c: int) -> torch.Tensor:
    """Selected float32 logits ``[B, Hkv, r, Q, K]`` of the chunked layout (module docstring), reading the cache once:
    the flat cache ``[B * Hkv * K, D]`` in blocks, each against the rotated queries of the heads and chunks it
    touches."""
    B, H, Q, D = query.shape
    Hkv, K = key.shape[1], int(key.shape[2])
    r, heads = H // Hkv, B * Hkv
    size, parts = blocking(K, c)
    flat = key.reshape(heads * K, D)
    qg = query.reshape(heads, r, Q, D)
    chunk = P.floor_div(k_pos, c)[:, None, :].expand(B, Hkv, K).reshape(heads * K)  # position chunk of every key
    steps = torch.arange(2, device=key.device)

    def blocks(start: int, count: int, length: int) -> torch.Tensor:  # [r * Q, count * length]
        f0 = start + torch.arange(count, device=key.device) * length  # first flat key of each block
        h0 = torch.div(f0, K, rounding_mode="floor")
        if parts == 2:  # the head of the block's last key, and its first key in this block
            h1 = torch.div(f0 + (length - 1), K, rounding_mode="floor")
            head, first = torch.stack((h0, h1), -1), torch.stack((f0, h1 * K), -1)
        else:
            head, first = h0[:, None], f0[:, None]
        ref = chunk[first]  # [count, parts]: chunk of each part's first key
        qp = q_pos[torch.div(head, Hkv, rounding_mode="floor")]  # [count, parts, Q]
        kp = (ref[..., None] + steps) * c  # [count, parts, 2]: a position in each chunk the part may touch
        qp, kp = qp[:, :, None, :], kp[..., None]
        angle = _query_angle(passes[0], qp, kp)  # the pass covering (query, chunk); uncovered pairs are masked later
        for p in passes[1:]:
            angle = torch.where(p.band.pairs(qp, kp), _query_angle(p, qp, kp), angle)
        qv = _rotate(qg[head][:, :, None], angle[:, :, :, None, :], inv_freq)  # [count, parts, 2, r, Q, D]
        kb = flat[start : start + count * length].view(count, length, D)
        lg = P.matmul_f32(qv.reshape(count, parts * 2 * r * Q, D), kb.transpose(1, 2)) * scale
        lg = lg.view(count, parts * 2, r * Q, length)
        fk = start + torch.arange(count * length, device=key.device).view(count, length)
        part = torch.div(fk, K, rounding_mode="floor") - h0[:, None]  # 0, or 1: the key is in the next head
        step = chunk[start : start + count * length].view(count, length) - ref.gather(1, part)  # 0 or 1
        pick = (part * 2 + step.clamp(0, 1))[:, None, None, :].expand(count, 1, r * Q, length)
        return lg.gather(1, pick)[:, 0].permute(1, 0, 2).reshape(r * Q, count * length)

    n, tail = divmod(heads * K, size)
    pieces = [blocks(0, n, size)] + ([blocks(n * size, 1, tail)] if tail else [])
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
    return out.view(r, Q, B, Hkv, K).permute(2, 3, 0, 1, 4)


def pass_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    passes,
    inv_freq: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    scale: float,
    logit_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact multi-pass attention, the cache read once (see the module docstring): ``dense_attention``'s signature
    and result. ``query [B,H,Q,D]``, ``key/value [B,Hkv,K,D]`` rotated at ``q_pos [B,Q]`` / ``k_pos [B,K]``, ``mask
    [B,1,Q,K]`` bool, ``logit_scale [B]``; grouped query heads share their key head (no copies of K). Returns
    ``[B,H,Q,D]`` float32."""
    B, H, Q, _ = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    sels = [p.band.contains(q_pos, k_pos) for p in passes]  # [B, Q, K] each
    c = chunk_size(passes)
    if c is None:
        logits = _global_logits(query, key, q_pos, k_pos, passes, sels, inv_freq, scale)
    else:
        logits = _chunked_logits(query, key, q_pos, k_pos, passes, inv_freq, scale, c)
    covered = sels[0]
    for sel in sels[1:]:
        covered = covered | sel
    allowed = covered[:, None, None] if mask is None else covered[:, None, None] & mask[:, :, None]
    if logit_scale is not None:
        logits = logits * logit_scale.to(torch.float32)[:, None, None, None, None]
    logits = logits.masked_fill(~allowed, -math.inf)
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # rows that may see nothing: zeros
    out = P.matmul_f32(probs.reshape(B, Hkv, -1, K), value)  # [B, Hkv, r * Q, D]
    return out.reshape(B, H, Q, value.shape[-1])
