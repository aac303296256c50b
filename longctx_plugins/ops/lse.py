"""Exact merge of attention results over disjoint key sets by their log-sum-exps."""

from __future__ import annotations

import torch


def merge_pair(o_a, lse_a, o_b, lse_b):
    """``(o, lse)`` of attention over the union of the key sets of ``a`` and ``b``.

    ``o_*``: ``[B,H,Q,D]``; ``lse_*``: ``[B,H,Q]`` float (``-inf`` where a pass saw no key). Computed in float32,
    returned in ``o_a.dtype``; a row that saw no key in either pass gives ``o_b`` (zeros from the kernels).
    ``o = w o_a + (1 - w) o_b`` with ``w = exp(lse_a - lse)``, ``lse = logaddexp(lse_a, lse_b)``.
    """
    lse_a, lse_b = lse_a.to(torch.float32), lse_b.to(torch.float32)
    lse = torch.logaddexp(lse_a, lse_b)
    w = torch.nan_to_num(torch.exp(lse_a - lse), nan=0.0)[..., None]  # weight of pass a; nan only when both are -inf
    b = o_b.to(torch.float32)
    return (b + (o_a.to(torch.float32) - b) * w).to(o_a.dtype), lse
