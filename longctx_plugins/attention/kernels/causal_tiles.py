"""A neighbour window ``0 <= i - j <= h`` (SelfExtend's near pass, STRING's window) and Dual Chunk Attention's chunk
relations as causal-kernel calls with their log-sum-exp (:func:`.fused_lse.causal_attention_lse`: cuDNN or flash,
CUDA, inference).

The query rows are cut into chunks of ``C = h + 1``. A row's window is then its own chunk up to itself (a causal
block: every chunk at once, as one batch of short sequences) and the keys of the previous chunk strictly after its own
offset (``y > x``). That second part is causal too once both chunks are read backwards (``y' < x'``), so the whole
window runs at the causal kernel's speed, with the FLOPs of its own pairs: no mask, no block-sparse bookkeeping. DCA's
relations (a chunk against itself causally, against the previous chunk in full, against the chunk before that after
its own offset) are the same blocks over chunks aligned at 0 (:func:`chunk_blocks`). A short last chunk takes its own
calls. Results are parts ``(out [B,H,n,D], lse [B,H,n] float32, rows)`` to merge.
"""

from __future__ import annotations

import torch

from . import fused_lse


def _chunks(t, start: int, n: int, c: int):
    """Rows ``[start, start + n c)`` of ``t [B, H, L, D]`` as ``[B n, H, c, D]`` (a view when B == 1)."""
    B, H, _, D = t.shape
    return t[:, :, start : start + n * c].reshape(B, H, n, c, D).transpose(1, 2).reshape(B * n, H, c, D)


def _unchunk(t, batch: int):
    """``[B n, H, c, ...]`` back to ``[B, H, n c, ...]``."""
    bn, H, c = t.shape[:3]
    n = bn // batch
    return t.reshape(batch, n, H, c, *t.shape[3:]).transpose(1, 2).reshape(batch, H, n * c, *t.shape[3:])


def _strictly_after(kernel, q, k, v, scale):
    """Query row x against keys y > x (same lengths): causal on both read backwards, the last row sees nothing."""
    if q.shape[2] <= 1:  # one row: it sees nothing (no empty call to the kernel)
        o = q.new_zeros(*q.shape[:3], v.shape[-1])
        return o, torch.full(q.shape[:3], float("-inf"), device=q.device, dtype=torch.float32)
    qf, kf, vf = (t.flip(2) for t in (q, k, v))
    o, l_ = fused_lse.causal_attention_lse(kernel, qf[:, :, 1:], kf[:, :, :-1], vf[:, :, :-1], scale)
    o = torch.cat([o.new_zeros(*o.shape[:2], 1, o.shape[-1]), o], dim=2)
    l_ = torch.cat([l_.new_full((*l_.shape[:2], 1), float("-inf")), l_], dim=2)
    return o.flip(2), l_.flip(2)


def window(kernel, q, k, v, scale: float, h: int, r0: int, r1: int) -> list:
    """Rows ``[r0, r1)`` of causal attention over keys ``i - h <= j <= i``; ``k``/``v`` with ``q``'s head count."""
    c, B = h + 1, q.shape[0]
    start = (r0 // c) * c
    n, t = divmod(r1 - start, c)
    parts = []
    if n:
        rows = slice(start, start + n * c)
        qc, kc, vc = (_chunks(x, start, n, c) for x in (q, k, v))
        o, l_ = fused_lse.causal_attention_lse(kernel, qc, kc, vc, scale)
        parts.append((_unchunk(o, B), _unchunk(l_, B), rows))
        first = max(start, c)  # chunks with a previous chunk
        m = (start + n * c - first) // c
        if m:
            qp = _chunks(q, first, m, c)
            kp, vp = (_chunks(x, first - c, m, c) for x in (k, v))
            o, l_ = _strictly_after(kernel, qp, kp, vp, scale)
            parts.append((_unchunk(o, B), _unchunk(l_, B), slice(first, first + m * c)))
    if t:
        a = r1 - t
        o, l_ = fused_lse.causal_attention_lse(kernel, q[:, :, a:r1], k[:, :, a:r1], v[:, :, a:r1], scale)
        parts.append((o, l_, slice(a, r1)))
        if a >= c:  # the previous chunk: its first t keys after the row's offset, the rest all
            o, l_ = _strictly_after(
                kernel, q[:, :, a:r1], k[:, :, a - c : a - c + t], v[:, :, a - c : a - c + t], scale
            )
            parts.append((o, l_, slice(a, r1)))
            if t < c:
                o, l_ = fused_lse.causal_attention_lse(
                    kernel, q[:, :, a:r1], k[:, :, a - c + t : a], v[:, :, a - c + t : a], scale, causal=False
                )
                parts.append((o, l_, slice(a, r1)))
    return [from_row(p, r0) for p in parts if p[2].stop > r0]


def chunk_blocks(kernel, q, k, v, scale: float, c: int, d: int, shape: str, r0: int, r1: int) -> list:
    """Rows ``[r0, r1)`` of attention of each chunk of ``c`` rows (chunks aligned at 0) against chunk ``m - d``:
    ``shape`` "causal" (its own chunk up to itself, d = 0), "full" or "after" (keys after the row's offset). Every
    whole chunk in one call; a short last chunk takes its own calls."""
    B, L = q.shape[0], q.shape[2]
    start = max(r0 // c, d) * c
    n, t = divmod(min(r1, L) - start, c) if start < r1 else (0, 0)
    parts = []

    def block(qq, kk, vv):
        if shape == "after":
            return _strictly_after(kernel, qq, kk, vv, scale)
        return fused_lse.causal_attention_lse(kernel, qq, kk, vv, scale, causal=shape == "causal")

    if n:
        kc, vc = (_chunks(x, start - d * c, n, c) for x in (k, v))
        o, l_ = block(_chunks(q, start, n, c), kc, vc)
        parts.append((_unchunk(o, B), _unchunk(l_, B), slice(start, start + n * c)))
    if t:
        a = start + n * c
        qt, ka = q[:, :, a : a + t], a - d * c
        if shape == "after":  # the first t keys after the row's offset, the rest of the chunk all
            parts.append(
                (*_strictly_after(kernel, qt, k[:, :, ka : ka + t], v[:, :, ka : ka + t], scale), slice(a, a + t))
            )
            if d and t < c:
                o, l_ = fused_lse.causal_attention_lse(
                    kernel, qt, k[:, :, ka + t : ka + c], v[:, :, ka + t : ka + c], scale, causal=False
                )
                parts.append((o, l_, slice(a, a + t)))
        else:
            kl = t if shape == "causal" else c
            o, l_ = block(qt, k[:, :, ka : ka + kl], v[:, :, ka : ka + kl])
            parts.append((o, l_, slice(a, a + t)))
    return [from_row(p, r0) for p in parts if p[2].stop > r0]


def from_row(part, r0: int):
    """``part`` ``(out, lse, rows)`` restricted to rows >= ``r0`` (None when nothing is left)."""
    if part[2].stop <= r0:
        return None
    o, l_, rows = part
    cut = max(r0 - rows.start, 0)
    return o[:, :, cut:], l_[..., cut:], slice(rows.start + cut, rows.stop)


_status: dict[tuple, bool] = {}


def _check(kernel: str, q, k, v, scale: float) -> float:
    """Largest difference of :func:`window` and :func:`chunk_blocks` (short last chunks, a row range) merged, against
    explicit float32 masks."""
    L = q.shape[2]
    i, j = torch.arange(L, device=q.device)[:, None], torch.arange(L, device=q.device)[None, :]
    c, r0 = 48, 70
    cases = [
        (window(kernel, q, k, v, scale, c - 1, r0, L), (i - j >= 0) & (i - j < c)),
        (chunk_blocks(kernel, q, k, v, scale, c, 0, "causal", r0, L), (i // c == j // c) & (j <= i)),
        (chunk_blocks(kernel, q, k, v, scale, c, 1, "full", r0, L), i // c - j // c == 1),
        (chunk_blocks(kernel, q, k, v, scale, c, 2, "after", r0, L), (i // c - j // c == 2) & (j % c > i % c)),
    ]
    err = 0.0
    for parts, allowed in cases:
        out, lse = fused_lse.merged(parts, q, L)
        ref_out, ref_lse = fused_lse.explicit(q[:, :, r0:], k, v, scale, allowed[r0:])
        err = max(err, fused_lse.difference(out[:, :, r0:], lse[..., r0:], ref_out, ref_lse))
    return err


def usable(kernel: str, device, dtype, head_dim: int) -> bool:
    """Whether the tiles run on ``kernel`` here and agree with float32 (checked once per kernel, device, dtype and
    head dim, for one sequence and for a batch of two)."""
    key = (kernel, str(device), dtype, head_dim)
    if key not in _status:
        gen = torch.Generator(device=device).manual_seed(0)
        err = 0.0
        try:
            for batch in (1, 2):
                q, k, v = (
                    torch.randn(batch, 2, 241, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3)
                )
                err = max(err, _check(kernel, q, k, v, head_dim**-0.5))
            _status[key] = err < 3e-2
            reason = f"differs from the float32 computation by {err:.3g}"
        except RuntimeError as exc:  # the kernel rejects these layouts on this GPU / build
            _status[key] = False
            reason = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if not _status[key]:
            fused_lse.logger.info(
                "causal tiles on the %s kernel are not used for %s, head dim %d: they %s; the default path runs "
                "those passes.",
                kernel,
                dtype,
                head_dim,
                reason,
            )
    return _status[key]
