"""The flash window passes (attention/kernels/flash_window.py): how they slice and pack flash attention's calls, run on
CPU with a float32 stand-in that follows flash attention's contract (tests/references.py ``flash_reference``: packed
sequences, bottom-right windows, grouped heads, +inf on empty rows); the real kernel is checked against float32 on the
GPU (tests/test_gpu.py) and by the kernel's own check before it is used."""

from __future__ import annotations

import pytest
import torch

from longctx_plugins.attention import fast_passes
from longctx_plugins.attention.kernels import flash_window, fused_lse
from longctx_plugins.attention.options import configure

from .conftest import outputs
from .references import causal_lse_reference, flash_reference
from .test_position_methods import method_model

WITH_WINDOW = ("cudnn", "flash", "window")


@pytest.fixture
def cpu_flash(monkeypatch):
    calls = []

    def flash(q, k, v, *args, **kw):
        calls.append(kw.get("window_size_left"))
        return flash_reference(q, k, v, *args, **kw)

    monkeypatch.setattr(flash_window, "_flash_op", lambda: flash)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grouped", [False, True])
def test_window_calls_equal_float32_masks(cpu_flash, dtype, grouped):
    """Band, chunk diagonal / previous / upper triangle (with a short last chunk, batch 2) against explicit masks."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 330, 32, generator=g).to(dtype)
    k, v = (torch.randn(2, 2 if grouped else 4, 330, 32, generator=g).to(dtype) for _ in range(2))
    err = flash_window._check(q, k, v, 32**-0.5)
    assert err < (1e-5 if dtype == torch.float32 else 3e-2), err
    assert cpu_flash and -1 not in cpu_flash  # windows were used, never an unbounded left window by accident


def test_check_catches_a_wrong_kernel(monkeypatch):
    """The kernel's self-check fails when the kernel ignores its window (so a bad build is never used)."""

    def no_window(q, k, v, *args, **kw):
        return flash_reference(q, k, v, *args, **{**kw, "window_size_left": None, "window_size_right": None})

    monkeypatch.setattr(flash_window, "_flash_op", lambda: no_window)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 330, 32, generator=g) for _ in range(3))
    assert flash_window._check(q, k, v, 32**-0.5) > 1e-2


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("window", ["grouped", "repeat"])
def test_window_passes_equal_exact_path(monkeypatch, cpu_flash, method, keep, window):
    """The whole fast path with the window kernel (neighbour windows, DCA's chunk relations; 77 tokens: a short last
    chunk), GQA model, batch 2 == the exact reference path."""
    # DCA's inter pass needs the causal kernel beside the window kernel; the other methods' windows are taken by the
    # window kernel here with no causal kernel (their far passes then run on FlexAttention)
    monkeypatch.setattr(fused_lse, "choose", lambda kernels, query: "exact" if method == "dca" else None)
    monkeypatch.setattr(fused_lse, "causal_attention_lse", causal_lse_reference)
    monkeypatch.setattr(fast_passes, "_window_kernel", lambda query, key: window)
    chunk_calls = []
    real = fast_passes._fused_chunk_pass  # the default per-chunk loop: not run when the window kernel takes DCA
    monkeypatch.setattr(fast_passes, "_fused_chunk_pass", lambda *a: chunk_calls.append(1) or real(*a))
    _, ext = method_model("llama", method, keep=keep)
    assert ext.config.num_key_value_heads < ext.config.num_attention_heads
    ids = torch.randint(3, 100, (2, 77))
    with torch.no_grad():
        configure(ext, backend="sdpa")
        ref = outputs(ext, input_ids=ids)
        configure(ext, backend="flex")
        outputs(ext, input_ids=ids)
        assert not cpu_flash  # the window kernel is opt-in
        chunk_calls.clear()
        configure(ext, backend="flex", dense_lse_kernels=WITH_WINDOW)
        fast = outputs(ext, input_ids=ids)
    assert cpu_flash, "the window kernel was not used"
    assert not chunk_calls  # every pass ran on a fused or window kernel
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_dca_takes_no_per_chunk_loop_with_the_window_kernel(monkeypatch, cpu_flash):
    """With the window kernel, DCA's passes are a few packed calls, not one call per query chunk."""
    monkeypatch.setattr(fused_lse, "choose", lambda kernels, query: "exact")
    causal_calls = []
    monkeypatch.setattr(
        fused_lse, "causal_attention_lse", lambda *a, **kw: causal_calls.append(1) or causal_lse_reference(*a, **kw)
    )
    monkeypatch.setattr(fast_passes, "_window_kernel", lambda query, key: "grouped")
    _, ext = method_model("llama", "dca", keep=False)
    ids = torch.randint(3, 100, (1, 77))
    with torch.no_grad():
        configure(ext, backend="flex", dense_lse_kernels=WITH_WINDOW)
        outputs(ext, input_ids=ids)
    layers = ext.config.num_hidden_layers
    assert len(causal_calls) == layers  # the inter pass's keys at distance >= 2c: one causal call per layer
    # intra, successive, the upper triangle of chunk m - 2, and the short last chunk's keys past its length (77 = 6 x 12
    # + 5)
    assert len(cpu_flash) == 4 * layers
