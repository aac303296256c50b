"""Dense float32 attention helpers shared by the exact paths: GQA head repetition and a masked softmax."""
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
