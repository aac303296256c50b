"""AnchorAttention's varlen form (per-document anchor copies), the layout behind ``anchor_backend="flash"``: with the
float32 varlen reference kernel it must equal the dense-mask reference, values and gradients. The flash-attn-4 kernel
itself is compared on the H200 (tests/test_gpu.py)."""

import pytest
import torch

from longctx_plugins.ops import varlen
from longctx_plugins.ops.masks import doc_ids_from_cu_seqlens

from .references import eager_attention, varlen_attention_reference
from .test_anchor import TOL, python_anchor_mask

CASES = {
    # batch 2, odd length, a padding segment at the end of row 1
    "two_rows": (2, 37, [0, 1, 9, 20, 37, 38, 50, 66, 74]),
    # row 1 has no anchor (its first segment is longer than one token): no anchor copies there
    "row_without_anchor": (2, 11, [0, 1, 5, 11, 15, 22]),
    # single-token documents, and one document filling the row
    "tiny_documents": (2, 9, [0, 1, 2, 3, 9, 10, 18]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (3, 3, 24)])
def test_varlen_form_equals_dense_reference_with_gradients(case, causal, dtype, heads, kv_heads, dim):
    torch.manual_seed(0)
    B, T, cu = CASES[case]
    doc = doc_ids_from_cu_seqlens(torch.tensor(cu), B, T)
    q = torch.randn(B, heads, T, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(B, kv_heads, T, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(B, kv_heads, T, dim, dtype=dtype, requires_grad=True)
    layout = varlen.anchor_varlen_layout(doc)
    out = varlen.anchor_varlen_attention(q, k, v, layout, dim**-0.5, causal, varlen_attention_reference)
    ref = eager_attention(q, k, v, python_anchor_mask(doc, causal), dim**-0.5).transpose(1, 2)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out.float() * g).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), atol=atol * 4, rtol=rtol * 4)


def test_layout_indices():
    doc = doc_ids_from_cu_seqlens(torch.tensor([0, 1, 4, 9, 13, 14, 20, 26]), 2, 13)
    lay = varlen.anchor_varlen_layout(doc)
    # queries: all 26 tokens in order; each anchor is a one-token segment whose only key is itself
    assert lay.cu_q.tolist() == [0, 1, 4, 9, 13, 14, 20, 26] and lay.cu_k.tolist() == [0, 1, 5, 11, 16, 17, 24, 31]
    assert (lay.max_q, lay.max_k) == (6, 7)
    # every document: its row's anchor, then its own tokens in order
    assert lay.kv_index[:11].tolist() == [0, 0, 1, 2, 3, 0, 4, 5, 6, 7, 8]
    assert lay.kv_index[16:24].tolist() == [13, 13, 14, 15, 16, 17, 18, 19]
    assert lay.cu_q.dtype == lay.cu_k.dtype == torch.int32


def test_layout_breaks_segments_at_row_starts():
    """Rows without an anchor whose documents carry the same id across the row boundary stay separate segments."""
    doc = torch.tensor([[3, 3, 4, 4], [4, 4, 5, 5]])
    lay = varlen.anchor_varlen_layout(doc)
    assert lay.cu_q.tolist() == lay.cu_k.tolist() == [0, 2, 4, 6, 8]
    assert lay.kv_index.tolist() == list(range(8))


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_form_is_exact_on_real_tokens_with_collator_padding(causal):
    """AnchorPackingCollator pads whole segments; the varlen form then equals the dense rule with the padding mask on
    every real token, values and gradients (padding rows are unspecified and carry no loss)."""
    from longctx_plugins import AnchorPackingCollator

    torch.manual_seed(0)
    docs = [{"input_ids": list(range(5, 5 + n))} for n in (5, 7, 3)]
    batch = AnchorPackingCollator(None, max_length=12, anchor_token_id=1, padding="max_length")(docs)
    B, T = batch["input_ids"].shape
    valid = batch["attention_mask"].bool()
    assert not bool(valid.all())
    doc = doc_ids_from_cu_seqlens(batch["cu_seq_lens_q"], B, T)
    assert varlen.padding_isolated(doc, valid)
    q, k, v = (torch.randn(B, h, T, 8, requires_grad=True) for h in (4, 2, 2))
    out = varlen.anchor_varlen_attention(
        q, k, v, varlen.anchor_varlen_layout(doc), 8**-0.5, causal, varlen_attention_reference
    )
    ref = eager_attention(q, k, v, python_anchor_mask(doc, causal, pad=valid), 8**-0.5).transpose(1, 2)
    rows = valid[:, :, None, None]
    torch.testing.assert_close(out * rows, ref * rows, atol=2e-5, rtol=1e-5)
    g = torch.randn_like(ref) * rows  # the loss sees real tokens only
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_padding_isolated_rejects_padding_inside_documents_and_padded_anchors():
    doc = doc_ids_from_cu_seqlens(torch.tensor([0, 1, 6, 9, 12]), 1, 12)
    real = torch.ones(1, 12, dtype=torch.bool)
    assert varlen.padding_isolated(doc, real)
    inside = real.clone()
    inside[0, 7:9] = False  # the last two tokens of the second document are padding, the segment says document
    assert not varlen.padding_isolated(doc, inside)
    no_anchor = real.clone()
    no_anchor[0, 0] = False  # real documents under a padded anchor
    assert not varlen.padding_isolated(doc, no_anchor)
    whole = real.clone()
    whole[0, 9:] = False  # a whole segment of padding: fine
    assert varlen.padding_isolated(doc, whole)


def test_reference_kernel_is_bottom_right_causal():
    """Query i of a document with n queries and n + 1 keys sees keys 0..i+1 (flash-attn's alignment)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 4), torch.randn(4, 1, 4), torch.eye(4)[:, None, :]
    cu_q, cu_k = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([0, 4], dtype=torch.int32)
    out = varlen_attention_reference(q, k, v, cu_q, cu_k, 3, 4, 1.0, True)[:, 0]
    assert torch.all(out[0, 2:] == 0) and torch.all(out[1, 3:] == 0) and torch.all(out[2] > 0)


def _plan(backend, q_len=2048, kv_len=2048, dropout=0.0, name="anchor"):
    from longctx_plugins.attention import options
    from longctx_plugins.attention.plan import AttentionPlan

    plan = AttentionPlan(name, 1, q_len, kv_len)
    plan.options, plan.dropout = options.make_options(name, backend), dropout
    return plan


def test_flash_backend_is_refused_off_cuda_and_for_position_methods():
    import types

    from longctx_plugins.attention import options
    from longctx_plugins.attention.plan import choose_backend

    cpu_query = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.bfloat16, shape=(1, 4, 2048, 64))
    with pytest.raises(RuntimeError, match="cannot run: tensors are not on CUDA"):
        choose_backend(_plan("flash"), cpu_query, lambda: None)
    with pytest.raises(ValueError, match="self_extend backend must be one of"):
        options.make_options("self_extend", "flash")

    class Cfg:
        self_extend_backend = "flash"

    with pytest.raises(ValueError, match="read from config.self_extend_"):
        options.options_for(types.SimpleNamespace(config=Cfg()), "self_extend")


def test_backend_choice_logic(monkeypatch):
    """plan.choose_backend with the device facts set by hand (no CUDA here): explicit 'flash' runs when everything
    allows it and falls back (with a visible warning, once per reason) when the forward cannot use it; 'auto' takes
    flash only on sm90; the plan check (a host sync) runs only when everything else allows the kernel; decoding and
    short inputs go to the dense path."""
    import types

    from longctx_plugins.attention import plan as plans
    from longctx_plugins.attention.kernels import flash4

    query = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, shape=(1, 4, 2048, 64))
    monkeypatch.setattr(flash4, "unavailable_reason", lambda index: None)
    monkeypatch.setattr(flash4, "call_reason", lambda q, dropout: None)
    verified = [True]
    monkeypatch.setattr(flash4, "verified_device", lambda index: verified[0])
    asked = []

    def reason(r):
        return lambda: asked.append(r) or r

    choose = plans.choose_backend
    assert choose(_plan("flash"), query, reason(None)) == "flash"
    assert choose(_plan("auto"), query, reason(None)) == "flash"
    assert choose(_plan("flex"), query, reason(None)) == "flex" and len(asked) == 2
    assert choose(_plan("auto", q_len=1, kv_len=2048), query, reason(None)) == "sdpa"  # decoding
    assert choose(_plan("auto", q_len=512, kv_len=512), query, reason(None)) == "sdpa"  # short
    assert choose(_plan("auto", dropout=0.1), query, reason(None)) == "sdpa"  # dropout: the exact path has it
    with pytest.raises(ValueError, match="no attention dropout"):
        choose(_plan("flex", dropout=0.1), query, reason(None))
    plans._fallbacks_warned.clear()
    with pytest.warns(UserWarning, match="these layers use FlexAttention"):
        assert choose(_plan("flash"), query, reason("a sliding/chunked window layer")) == "flex"
    verified[0] = False  # Blackwell: not verified here, so only on explicit request
    assert choose(_plan("auto"), query, reason(None)) == "flex"
    assert choose(_plan("flash"), query, reason(None)) == "flash"
    monkeypatch.setattr(flash4, "call_reason", lambda q, dropout: "attention dropout")
    asked.clear()
    with pytest.warns(UserWarning, match="attention dropout; these layers use the dense SDPA path"):
        assert choose(_plan("flash", dropout=0.1), query, reason(None)) == "sdpa"
    assert not asked
    monkeypatch.setattr(flash4, "unavailable_reason", lambda index: "flash-attn-4 is not importable")
    with pytest.raises(RuntimeError, match="not importable"):
        choose(_plan("flash"), query, reason(None))
    assert choose(_plan("auto"), query, reason(None)) == "flex"


def test_flash_call_reason_keeps_unverified_head_dims_off_the_kernel():
    import types

    from longctx_plugins.attention.kernels import flash4 as _flash

    def q(dim, dtype=torch.bfloat16, device="cuda"):
        return types.SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(1, 4, 128, dim))

    assert all(_flash.call_reason(q(d), 0.0) is None for d in (32, 64, 96, 128, 256))
    assert "head dim 16" in _flash.call_reason(q(16), 0.0)  # flash-attn-4 4.0.0b36's sm90 backward is wrong there
    assert "head dim 80" in _flash.call_reason(q(80), 0.0)  # never verified
    assert "dtype" in _flash.call_reason(q(64, torch.float32), 0.0)
    assert _flash.call_reason(q(64), 0.1) == "attention dropout"
    assert _flash.call_reason(q(64, device="cpu"), 0.0) == "tensors are not on CUDA"
