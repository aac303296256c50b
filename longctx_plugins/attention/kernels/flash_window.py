"""Banded and chunk-packed attention *with its log-sum-exp* on PyTorch's flash kernel (CUDA, inference only).

The passes of the position methods that are not "every key beyond a distance" (those run on a causal kernel, see
:mod:`.fused_lse`) are bands: a neighbour window ``0 <= i - j <= h`` (SelfExtend's near pass, STRING's window) or a
relation between chunks (Dual Chunk Attention: a query's own chunk, the previous chunk, the upper triangle of the
chunk before that). Flash attention's local window (``window_size_left`` / ``window_size_right``) and its packed
variable-length form (``cu_seqlens``: every chunk its own sequence) express each of them in one call, so a pass costs
the FLOPs of its own pairs. Used only after :func:`usable` has checked the kernel once per (device, dtype, head dim)
against an explicit float32 computation of the same calls; otherwise the caller falls back to FlexAttention.

Tensors are ``[B, H, L, D]`` (the model's layout); the results are ``(out [B, H, n, D], lse [B, H, n] float32)`` for a
range of query rows, with ``lse = -inf`` (and ``out = 0``) on rows that see no key of the pass.
"""

from __future__ import annotations

import logging

import torch

from . import fused_lse

logger = logging.getLogger("longctx_plugins")
_status: dict[tuple, bool] = {}


def _flash_op():
    """PyTorch's flash attention forward (its local window and packed sequences are what this module uses)."""
    return torch.ops.aten._flash_attention_forward


def _flash(q, k, v, scale: float, causal: bool, left: int | None, right: int | None, cu_q=None, cu_k=None, mq=0, mk=0):
    res = _flash_op()(
        q, k, v, cu_q, cu_k, mq, mk, 0.0, causal, False, scale=scale, window_size_left=left, window_size_right=right
    )
    lse = res[1].to(torch.float32)
    return res[0], lse.masked_fill(lse == float("inf"), float("-inf"))  # flash marks rows with no key +inf


def band(q, k, v, scale: float, h: int, r0: int, r1: int):
    """Rows ``[r0, r1)`` of causal attention restricted to keys ``i - h <= j <= i``: one windowed call over the rows
    and the ``h`` keys before them. Returns ``(out, lse)`` for those rows."""
    s = max(r0 - h, 0)
    qs, ks, vs = (t[:, :, s:r1].transpose(1, 2) for t in (q, k, v))  # [B, n, H, D]
    out, lse = _flash(qs, ks, vs, scale, True, h, 0)
    return out.transpose(1, 2)[:, :, r0 - s :], lse[..., r0 - s : r1 - s]


def _packed(t, a: int, b: int):
    """Rows ``[a, b)`` of ``t [B, H, L, D]`` as one packed ``[B * (b - a), H, D]`` tensor (a view when B == 1)."""
    return t[:, :, a:b].transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])


def _cu(lengths: list[int], batch: int, device) -> tuple[torch.Tensor, int]:
    """Cumulative sequence starts of ``lengths`` repeated for every batch row, and the longest length."""
    per_row = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0)
    total = int(per_row[-1])
    cu = torch.cat([per_row[:-1] + b * total for b in range(batch)] + [torch.tensor([batch * total])])
    return cu.to(device=device, dtype=torch.int32), max(lengths)


def _varlen(q, k, v, scale, causal, left, right, qa, q_lengths, ka, k_lengths):
    """Sequences of query rows ``qa + ...`` (``q_lengths``) against key rows ``ka + ...`` (``k_lengths``), one pair of
    sequences per entry. Returns ``(out, lse)`` over the query rows ``[qa, qa + sum(q_lengths))``."""
    B, H, _, D = q.shape
    n = sum(q_lengths)
    cu_q, mq = _cu(q_lengths, B, q.device)
    cu_k, mk = _cu(k_lengths, B, q.device)
    kb = ka + sum(k_lengths)
    out, lse = _flash(
        _packed(q, qa, qa + n), _packed(k, ka, kb), _packed(v, ka, kb), scale, causal, left, right, cu_q, cu_k, mq, mk
    )
    out = out.view(B, n, H, D).transpose(1, 2)
    lse = lse.view(H, B, n).transpose(0, 1) if lse.dim() == 2 else _unpad_lse(lse, q_lengths, B)
    return out, lse


def _unpad_lse(lse, lengths: list[int], batch: int):
    """A padded ``[S, H, max_len]`` log-sum-exp (older flash builds) as ``[B, H, n]``."""
    per_row = [lse[i * len(lengths) + s, :, :n] for i in range(batch) for s, n in enumerate(lengths)]
    return torch.cat(per_row, dim=-1).view(lse.shape[1], batch, -1).transpose(0, 1)


def _split(a: int, b: int, c: int) -> list[int]:
    """Lengths of the pieces of ``[a, b)`` cut at multiples of ``c`` (``a`` itself a multiple)."""
    return [min(c, b - s) for s in range(a, b, c)]


def chunk_diagonal(q, k, v, scale: float, c: int, m0: int):
    """Causal attention inside each chunk of ``c`` rows, chunks ``m0..``: rows ``[m0 c, L)``."""
    L = q.shape[2]
    lengths = _split(m0 * c, L, c)
    return _varlen(q, k, v, scale, True, None, None, m0 * c, lengths, m0 * c, lengths)


def chunk_previous(q, k, v, scale: float, c: int, m0: int):
    """Each chunk ``m >= max(m0, 1)`` against all of chunk ``m - 1``: rows ``[max(m0, 1) c, L)``."""
    L = q.shape[2]
    m0 = max(m0, 1)
    q_lengths = _split(m0 * c, L, c)
    return _varlen(q, k, v, scale, False, None, None, m0 * c, q_lengths, (m0 - 1) * c, [c] * len(q_lengths))


def chunk_upper(q, k, v, scale: float, c: int, m0: int, d: int = 2):
    """Each chunk ``m >= max(m0, d)`` against the keys of chunk ``m - d`` strictly above its diagonal (query offset x
    sees key offsets y > x): the queries are taken one row early, so "y > x" becomes flash's window ``j >= i``. Returns
    parts ``[(out, lse, rows)]`` (the row before each chunk is dropped; a short last chunk takes a second call for the
    keys past its length)."""
    L = q.shape[2]
    m0 = max(m0, d)
    if m0 * c >= L:
        return []
    lengths = _split(m0 * c, L, c)
    qa = m0 * c - 1
    out, lse = _varlen(q, k, v, scale, False, 0, -1, qa, lengths, (m0 - d) * c, lengths)
    lse = lse.clone()
    lse[..., ::c] = float("-inf")  # row m c - 1 belongs to chunk m - 1: not this pass's
    out = out.masked_fill(torch.isinf(lse)[..., None], 0.0)
    parts = [(out, lse, slice(qa, qa + sum(lengths)))]
    t = lengths[-1]
    if t < c:  # the last chunk's rows against the keys of chunk m - d past its own length: all pairs
        ka = (m0 - d + len(lengths) - 1) * c
        o, l_ = _varlen(q, k, v, scale, False, None, None, L - t, [t], ka + t, [c - t])
        parts.append((o, l_, slice(L - t, L)))
    return parts


def _check(q, k, v, scale) -> float:
    """Largest difference of :func:`band` and the chunk calls against explicit float32 masks (a short last chunk
    included)."""
    L = q.shape[2]
    i = torch.arange(L, device=q.device)[:, None]
    j = torch.arange(L, device=q.device)[None, :]
    c = 96
    cases = [([(*band(q, k, v, scale, 37, 50, L), slice(50, L))], (i - j >= 0) & (i - j <= 37), 50)]
    cases.append(([(*chunk_diagonal(q, k, v, scale, c, 1), slice(c, L))], (i // c == j // c) & (j <= i), c))
    cases.append(([(*chunk_previous(q, k, v, scale, c, 1), slice(c, L))], i // c - j // c == 1, c))
    cases.append((chunk_upper(q, k, v, scale, c, 2), (i // c - j // c == 2) & (j % c > i % c), 2 * c - 1))
    k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], 1) for t in (k, v))
    err = 0.0
    for parts, allowed, r0 in cases:  # parts merged: a short last chunk comes in two
        out, lse = fused_lse.merged(parts, q, L)
        ref_out, ref_lse = fused_lse.explicit(q[:, :, r0:], k, v, scale, allowed[r0:])
        err = max(err, fused_lse.difference(out[:, :, r0:], lse[..., r0:], ref_out, ref_lse))
    return err


def usable(device, dtype, head_dim: int, grouped: bool = False) -> bool:
    """Whether these calls run and agree with float32 here (checked once per device, dtype, head dim and whether
    keys have fewer heads than queries)."""
    key = (str(device), dtype, head_dim, grouped)
    if key not in _status:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (
            torch.randn(2, 4 if i == 0 or not grouped else 2, 330, head_dim, device=device, dtype=dtype, generator=gen)
            for i in range(3)
        )
        try:
            err = _check(q, k, v, head_dim**-0.5)
            _status[key] = err < 3e-2
            reason = f"differs from the float32 computation by {err:.3g}"
        except (RuntimeError, TypeError) as exc:  # no flash kernel for this GPU / dtype / head dim / torch build
            _status[key] = False
            reason = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if not _status[key]:
            logger.info(
                "the flash window kernel is not used for %s, head dim %d%s: it %s.",
                dtype,
                head_dim,
                " with grouped key heads" if grouped else "",
                reason,
            )
    return _status[key]
