"""Causal tiles (attention/kernels/causal_tiles.py): neighbour windows and Dual Chunk Attention's chunk relations as
calls of the causal kernel, here the float32 stand-in (tests/references.py); merged parts == explicit masks. The real
kernels are checked on the GPU (tests/test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from longctx_plugins.attention.kernels import causal_tiles, fused_lse
from longctx_plugins.ops.lse import merge_pair

from .references import causal_lse_reference


@pytest.fixture(autouse=True)
def float32_kernel(monkeypatch):
    monkeypatch.setattr(fused_lse, "causal_attention_lse", causal_lse_reference)


def _merged(parts, B, H, L, D):
    out = torch.zeros(B, H, L, D)
    lse = torch.full((B, H, L), float("-inf"))
    for o, l_, rows in parts:
        out[:, :, rows], lse[..., rows] = merge_pair(out[:, :, rows], lse[..., rows], o.float(), l_)
    return out, lse


def _expected(q, k, v, allowed):
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, -1), nan=0.0) @ v, torch.logsumexp(logits, -1)


def _inputs(B=2, H=3, L=101, D=8):
    g = torch.Generator().manual_seed(L)
    return (torch.randn(B, H, L, D, generator=g) for _ in range(3))


@pytest.mark.parametrize(
    "L,h,r0", [(101, 9, 0), (101, 9, 37), (100, 9, 40), (64, 99, 0), (101, 0, 5), (50, 24, 49), (91, 9, 0), (81, 9, 12)]
)
def test_window_equals_the_band_mask(L, h, r0):
    q, k, v = _inputs(L=L)
    parts = causal_tiles.window("exact", q, k, v, q.shape[-1] ** -0.5, h, r0, L)
    assert all(p[2].start >= r0 for p in parts)
    out, lse = _merged(parts, 2, 3, L, 8)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    ref, ref_lse = _expected(q, k, v, (i - j >= 0) & (i - j <= h))
    torch.testing.assert_close(out[:, :, r0:], ref[:, :, r0:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse[..., r0:], ref_lse[..., r0:], atol=1e-5, rtol=1e-5)
    assert lse[..., :r0].isneginf().all()  # rows before r0 are not this call's


@pytest.mark.parametrize("d,shape", [(0, "causal"), (1, "full"), (2, "after"), (3, "after")])
@pytest.mark.parametrize("L,c,r0", [(101, 12, 0), (96, 12, 30), (101, 25, 60), (20, 12, 0), (97, 12, 0)])
def test_chunk_blocks_equal_their_masks(d, shape, L, c, r0):
    q, k, v = _inputs(L=L)
    parts = causal_tiles.chunk_blocks("exact", q, k, v, q.shape[-1] ** -0.5, c, d, shape, r0, L)
    out, lse = _merged(parts, 2, 3, L, 8)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    rule = i // c - j // c == d
    rule &= {"causal": j <= i, "full": rule, "after": j % c > i % c}[shape]
    ref, ref_lse = _expected(q, k, v, rule)
    seen = ~ref_lse.isneginf()
    torch.testing.assert_close(out[:, :, r0:], ref[:, :, r0:], atol=1e-5, rtol=1e-5)
    assert torch.equal(lse[..., r0:].isneginf(), ~seen[..., r0:])
    torch.testing.assert_close(
        lse[seen][..., None], ref_lse[seen][..., None], atol=1e-5, rtol=1e-5
    ) if r0 == 0 else None


def test_usable_accepts_an_exact_kernel_and_rejects_a_wrong_one(monkeypatch):
    assert causal_tiles.usable("exact", "cpu", torch.float32, 16)

    def no_causal(kernel, q, k, v, scale, causal=True):
        return causal_lse_reference(kernel, q, k, v, scale, causal=False)

    monkeypatch.setattr(fused_lse, "causal_attention_lse", no_causal)
    monkeypatch.setattr(causal_tiles, "_status", {})
    assert not causal_tiles.usable("exact", "cpu", torch.float32, 16)


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("keep", [True, False])
def test_tiles_opted_in_equal_exact_path(monkeypatch, method, keep):
    """A model with ``dense_lse_kernels`` including "tiles" (windows and chunks on the causal kernel; 77 tokens: short
    last chunks; GQA, batch 2) == the exact reference path, and the tiles ran."""
    from longctx_plugins.attention.options import configure

    from .conftest import outputs
    from .test_position_methods import method_model

    monkeypatch.setattr(fused_lse, "choose", lambda kernels, query: "exact")
    used = []
    real = causal_tiles._strictly_after
    monkeypatch.setattr(causal_tiles, "_strictly_after", lambda *a: used.append(1) or real(*a))
    _, ext = method_model("llama", method, keep=keep)
    ids = torch.randint(3, 100, (2, 77))
    with torch.no_grad():
        configure(ext, backend="sdpa")
        ref = outputs(ext, input_ids=ids)
        configure(ext, backend="flex")
        outputs(ext, input_ids=ids)
        assert not used  # opt-in
        configure(ext, backend="flex", dense_lse_kernels=("cudnn", "tiles"))
        fast = outputs(ext, input_ids=ids)
    assert used
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)
