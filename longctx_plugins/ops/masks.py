"""Named mask rules (``mask_mod(b, h, q_idx, kv_idx) -> bool``), shared by the flex, SDPA and reference paths.

Every factory returns an index-based function that works both element-wise under FlexAttention's
``create_block_mask`` and on broadcast index tensors (``dense_mask``), so one definition serves all paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal_mod(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


def and_mods(*mods: MaskMod) -> MaskMod:
    def mod(b, h, q_idx, kv_idx):
        out = mods[0](b, h, q_idx, kv_idx)
        for m in mods[1:]:
            out = out & m(b, h, q_idx, kv_idx)
        return out

    return mod


def anchor_document_mod(doc_ids: torch.Tensor) -> MaskMod:
    """AnchorAttention's document rule: same document, or the key is the anchor (document id 0).

    ``doc_ids``: ``[B, T]`` integer document ids, 0 for the anchor. Combine with ``causal_mod`` for decoders
    (``k <= q and (doc(q) == doc(k) or doc(k) == 0)``); encoders use it alone.
    """

    def mod(b, h, q_idx, kv_idx):
        dk = doc_ids[b, kv_idx]
        return (doc_ids[b, q_idx] == dk) | (dk == 0)

    return mod


def anchor_mod(doc_ids: torch.Tensor, causal: bool = True) -> MaskMod:
    doc = anchor_document_mod(doc_ids)
    return and_mods(causal_mod, doc) if causal else doc


def key_valid_mod(valid: torch.Tensor) -> MaskMod:
    """Keys marked False in ``valid [B, K]`` (padding) are never attended."""

    def mod(b, h, q_idx, kv_idx):
        return valid[b, kv_idx]

    return mod


def band_mod(band, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, valid: torch.Tensor | None) -> MaskMod:
    """The pairs of ``band`` (a :class:`~longctx_plugins.ops.passes.Band` on positions ``q_pos [B, Q]``,
    ``k_pos [B, K]``; its rule is :meth:`~longctx_plugins.ops.passes.Band.pairs`), causal (``kv_idx <= q_idx``) when
    asked, without padded keys."""

    def mod(b, h, q_idx, kv_idx):
        out = band.pairs(q_pos[b, q_idx], k_pos[b, kv_idx])
        if causal:
            out = out & (kv_idx <= q_idx)
        if valid is not None:
            out = out & valid[b, kv_idx]
        return out

    return mod


def dense_mask(mask_mod: MaskMod, batch: int, q_len: int, kv_len: int, device, q_offset: int = 0) -> torch.Tensor:
    """Materialise ``mask_mod`` as a ``[B, 1, Q, K]`` bool tensor (True = attend). Reference/CPU path only."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]
    q = (torch.arange(q_len, device=device) + q_offset)[None, None, :, None]
    k = torch.arange(kv_len, device=device)[None, None, None, :]
    return mask_mod(b, h, q, k).expand(batch, 1, q_len, kv_len)


def doc_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """Per-token document ids ``[B, T]`` from flattened ``cu_seq_lens`` (HF ``DataCollatorWithFlattening`` form).

    The batch is read as ``B`` rows of ``T`` tokens laid end to end (``B * T`` tokens); every row start must be a
    segment boundary. A segment of length 1 at the start of a row is that row's anchor (id 0); every other
    segment gets its own positive id. Raises ``ValueError`` when the boundaries do not fit the batch.
    """
    cu = cu_seqlens.to(torch.long).flatten()
    total = batch * seq_len
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(
            f"cu_seq_lens must start at 0 and end at batch*seq_len={batch}*{seq_len}={total}; got "
            f"first={int(cu[0]) if cu.numel() else None}, last={int(cu[-1]) if cu.numel() else None}. "
            "Build the batch with AnchorPackingCollator (or DataCollatorWithFlattening) and do not truncate it "
            "afterwards."
        )
    if bool((cu[1:] < cu[:-1]).any()):
        raise ValueError("cu_seq_lens must be non-decreasing.")
    cu = torch.unique_consecutive(cu)
    row_starts = torch.arange(batch, device=cu.device) * seq_len
    if not bool(torch.isin(row_starts, cu).all()):
        raise ValueError(
            f"cu_seq_lens do not start a segment at every row start (multiples of seq_len={seq_len}): "
            "a document must not cross rows."
        )
    tokens = torch.arange(total, device=cu.device)
    seg = torch.searchsorted(cu, tokens, right=True) - 1  # segment index of each token
    lengths = cu[1:] - cu[:-1]
    is_anchor = (lengths[seg] == 1) & (cu[seg] % seq_len == 0)
    ids = torch.where(is_anchor, torch.zeros_like(seg), seg + 1)
    return ids.view(batch, seq_len)
