"""GPU checks (H200): the FlexAttention fast paths against the exact references. `pytest -m gpu`."""

import pytest
import torch

from longctx_plugins.attention.anchor import anchor_attention_forward, anchor_mask
from longctx_plugins.attention.positional import positional_attention_forward, self_extend_mask
from longctx_plugins.ops import rope as rope_ops
from longctx_plugins.ops.masks import doc_ids_from_cu_seqlens

from .conftest import gpu
from .references import anchor_by_documents, self_extend_reference

pytestmark = [pytest.mark.gpu, gpu]
BF16_TOL = dict(atol=2e-2, rtol=2e-2)


class Cfg:
    anchor_backend = "flex"
    self_extend_backend = "flex"
    max_position_embeddings = 4096
    _attn_implementation = "self_extend"

    def __init__(self, rope_parameters=None):
        self.rope_parameters = rope_parameters or {}
        self.head_dim, self.hidden_size, self.num_attention_heads = 128, 128 * 8, 8


class Mod(torch.nn.Module):
    def __init__(self, causal=True, rope_parameters=None):
        super().__init__()
        self.is_causal, self.config, self.layer_idx = causal, Cfg(rope_parameters), 0


def random_docs(total, n_docs, gen):
    cuts = torch.sort(torch.randperm(total - 2, generator=gen)[: n_docs - 1] + 1).values
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([total - 1])]) + 1
    return torch.cat([torch.tensor([0]), bounds]).to(torch.int32)


@pytest.mark.parametrize("seq_len,n_docs", [(8192, 5), (32768, 9), (131072, 30)])
@pytest.mark.parametrize("causal", [True, False])
def test_anchor_flex_equals_reference(seq_len, n_docs, causal):
    gen = torch.Generator().manual_seed(seq_len)
    cu = random_docs(seq_len, n_docs, gen).cuda()
    H, Hkv, D = 8, 2, 128
    q = torch.randn(1, H, seq_len, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, Hkv, seq_len, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, Hkv, seq_len, D, device="cuda", dtype=torch.bfloat16)
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    mod = Mod(causal)
    mask = anchor_mask(
        1,
        seq_len,
        seq_len,
        config=mod.config,
        device="cuda",
        mask_function=causal_mask_function if causal else bidirectional_mask_function,
    )
    out, _ = anchor_attention_forward(mod, q, k, v, mask, scaling=D**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert mask.backend == "flex"
    ref = anchor_by_documents(q, k, v, doc_ids_from_cu_seqlens(cu, 1, seq_len), D**-0.5, causal)
    torch.testing.assert_close(out.float(), ref.transpose(1, 2), **BF16_TOL)


@pytest.mark.parametrize("seq_len,G,W", [(8192, 4, 1024), (32768, 16, 2048)])
@pytest.mark.parametrize("causal", [True, False])
def test_self_extend_flex_equals_reference(seq_len, G, W, causal):
    torch.manual_seed(0)
    H, Hkv, D = 4, 2, 128
    params = {
        "rope_type": "self_extend",
        "group_size": G,
        "window": W,
        "rope_theta": 10000.0,
        "keep_trained_window": False,
    }
    mod = Mod(causal, params)
    pos = torch.arange(seq_len, device="cuda")[None]
    inv = rope_ops.default_inv_freq(D, 10000.0, "cuda")
    q = rope_ops.rotate(torch.randn(1, H, seq_len, D, device="cuda"), pos, inv).to(torch.bfloat16)
    k = rope_ops.rotate(torch.randn(1, Hkv, seq_len, D, device="cuda"), pos, inv).to(torch.bfloat16)
    v = torch.randn(1, Hkv, seq_len, D, device="cuda", dtype=torch.bfloat16)
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    mask = self_extend_mask(
        1,
        seq_len,
        seq_len,
        config=mod.config,
        device="cuda",
        mask_function=causal_mask_function if causal else bidirectional_mask_function,
    )
    out, _ = positional_attention_forward(mod, q, k, v, mask, scaling=D**-0.5, position_ids=pos)
    chunk = 2048
    for a in range(0, seq_len, chunk * 4):  # reference on a sample of query blocks (dense rows of 32k keys)
        sl = slice(a, a + chunk)
        dense = torch.ones(1, 1, chunk, seq_len, dtype=torch.bool, device="cuda")
        if causal:
            dense = torch.arange(seq_len, device="cuda")[None, :] <= torch.arange(a, a + chunk, device="cuda")[:, None]
            dense = dense[None, None]
        ref = self_extend_reference(
            q[:, :, sl], k, v, pos[:, sl], pos, inv, G, W, causal=causal, mask=dense, scale=D**-0.5
        )
        torch.testing.assert_close(out[:, sl].float(), ref.transpose(1, 2), **BF16_TOL)


def _grads(model, batch):
    model.zero_grad()
    out = model(**batch, use_cache=False)
    out.loss.backward()
    return out.logits.float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def packed_training_paths(
    model_type: str,
    dtype,
    fp32_reference: bool = False,
    sdpa_with_cudnn: bool = False,
    backends=("flex", "sdpa"),
    head_dim=None,
):
    """Tiny model, packed 4k window (batch 2): ``{path: (logits, grads)}`` for the flex path and the dense SDPA path
    in ``dtype`` and, with ``fp32_reference``, the SDPA path of the same (``dtype``-rounded) weights in float32; plus
    the real-token mask. Shared with benchmarks/probe_gemma3_grads.py."""
    from longctx_plugins import AnchorPackingCollator

    from .conftest import tiny_model

    over = {"sliding_window": 512} if model_type == "gemma3" else {}
    if head_dim is not None:
        over["head_dim"] = head_dim
    model = tiny_model(model_type, attn_implementation="anchor", max_position_embeddings=8192, **over)
    model = model.to("cuda", dtype).train()
    g = torch.Generator().manual_seed(0)
    docs = [
        {"input_ids": torch.randint(3, 100, (int(n),), generator=g).tolist()}
        for n in torch.randint(64, 2500, (8,), generator=g)
    ]
    batch = AnchorPackingCollator(None, max_length=4096, anchor_token_id=1, pad_token_id=0)(docs)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    paths = {}
    for backend in backends:
        model.config.anchor_backend = backend
        paths[backend] = _grads(model, batch)
    if sdpa_with_cudnn:  # the dense path as it was: masked SDPA free to pick cuDNN
        from longctx_plugins.attention.kernels import sdpa as _sdpa

        _sdpa.AVOID_CUDNN = False
        try:
            paths["sdpa_with_cudnn"] = _grads(model, batch)
        finally:
            _sdpa.AVOID_CUDNN = True
    if fp32_reference:
        model.float()
        paths["fp32"] = _grads(model, batch)
    return paths, batch["attention_mask"].bool()


def flex_and_sdpa_training(model_type: str, dtype):
    paths, keep = packed_training_paths(model_type, dtype)
    return paths["flex"], paths["sdpa"], keep


@pytest.mark.parametrize(
    "model_type,dtype",
    [("llama", torch.float32), ("gemma3", torch.float32), ("llama", torch.bfloat16), ("gemma3", torch.bfloat16)],
)
def test_model_training_flex_equals_sdpa_path(model_type, dtype):
    """Packed 4k window, batch 2: logits and gradients of the flex path == the dense reference path."""
    (logits_f, grads_f), (logits_s, grads_s), keep = flex_and_sdpa_training(model_type, dtype)
    tol = 1e-4 if dtype == torch.float32 else 5e-2  # dtype -> tolerance (logits abs/rel, gradient relative norm)
    torch.testing.assert_close(logits_f[keep], logits_s[keep], atol=tol, rtol=tol)
    for n in grads_s:
        rel = (grads_f[n] - grads_s[n]).norm() / grads_s[n].norm().clamp(min=1e-6)
        assert rel < tol, (n, rel.item())


@pytest.mark.parametrize("model_type", ["llama", "gemma3"])
def test_bf16_training_paths_stay_close_to_float32(model_type):
    """Both bf16 paths (flex, dense SDPA) against the float32 dense path of the same weights: logits and every
    parameter gradient within bf16 tolerance (the dense path once drifted by 123% on cuDNN; see
    attention/kernels/sdpa.py)."""
    paths, keep = packed_training_paths(model_type, torch.bfloat16, fp32_reference=True)
    logits_ref, grads_ref = paths["fp32"]
    for name in ("flex", "sdpa"):
        logits, grads = paths[name]
        torch.testing.assert_close(logits[keep], logits_ref[keep], atol=5e-2, rtol=5e-2)
        for n in grads_ref:
            rel = (grads[n] - grads_ref[n]).norm() / grads_ref[n].norm().clamp(min=1e-6)
            assert rel < 5e-2, (name, n, rel.item())


def test_self_extend_flex_gradients_match_reference():
    torch.manual_seed(0)
    T, H, D, G, W = 2048, 4, 64, 4, 256
    params = {
        "rope_type": "self_extend",
        "group_size": G,
        "window": W,
        "rope_theta": 10000.0,
        "keep_trained_window": False,
    }
    mod = Mod(True, params)
    mod.config.head_dim = D
    pos = torch.arange(T, device="cuda")[None]
    inv = rope_ops.default_inv_freq(D, 10000.0, "cuda")
    q = rope_ops.rotate(torch.randn(1, H, T, D, device="cuda"), pos, inv).requires_grad_()
    k = rope_ops.rotate(torch.randn(1, H, T, D, device="cuda"), pos, inv).requires_grad_()
    v = torch.randn(1, H, T, D, device="cuda", requires_grad=True)
    from transformers.masking_utils import causal_mask_function

    mask = self_extend_mask(1, T, T, config=mod.config, device="cuda", mask_function=causal_mask_function)
    out, _ = positional_attention_forward(mod, q, k, v, mask, scaling=D**-0.5, position_ids=pos)
    dense = torch.ones(T, T, dtype=torch.bool, device="cuda").tril()[None, None]
    ref = self_extend_reference(q, k, v, pos, pos, inv, G, W, causal=True, mask=dense, scale=D**-0.5)
    _assert_values_and_grads(out, ref, (q, k, v))


class FlashCfg(Cfg):
    anchor_backend = "flash"


@pytest.mark.parametrize("seq_len,n_docs", [(8192, 5), (32768, 9), (131072, 30)])
@pytest.mark.parametrize("causal", [True, False])
def test_anchor_flash_varlen_equals_reference(seq_len, n_docs, causal):
    """anchor_backend='flash' (flash-attn-4 varlen over per-document anchor copies) against the per-document
    reference; gradients too up to 32k (against the same reference in float32)."""
    pytest.importorskip("flash_attn.cute", reason="flash-attn-4 is not installed (pip install -e '.[flash]')")
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    gen = torch.Generator().manual_seed(seq_len)
    cu = random_docs(seq_len, n_docs, gen).cuda()
    H, Hkv, D = 8, 2, 128
    grad = seq_len <= 32768
    q, k, v = (
        torch.randn(1, h, seq_len, D, device="cuda", dtype=torch.bfloat16).requires_grad_(grad) for h in (H, Hkv, Hkv)
    )
    mod = Mod(causal)
    mod.config = FlashCfg()
    mask = anchor_mask(
        1,
        seq_len,
        seq_len,
        config=mod.config,
        device="cuda",
        mask_function=causal_mask_function if causal else bidirectional_mask_function,
    )
    out, _ = anchor_attention_forward(mod, q, k, v, mask, scaling=D**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    doc = doc_ids_from_cu_seqlens(cu, 1, seq_len)
    ref = anchor_by_documents(q.float(), k.float(), v.float(), doc, D**-0.5, causal).transpose(1, 2)
    torch.testing.assert_close(out.float(), ref, **BF16_TOL)
    if grad:
        w = torch.randn_like(ref)
        ga = torch.autograd.grad((out.float() * w).sum(), (q, k, v))
        gb = torch.autograd.grad((ref * w).sum(), (q, k, v))
        for a, b in zip(ga, gb):
            rel = (a.float() - b).norm() / b.norm()
            assert rel < 2e-2, rel.item()


@pytest.mark.parametrize("model_type", ["llama", "gemma3"])
def test_flash_training_path_stays_close_to_float32(model_type, monkeypatch):
    """anchor_backend='flash' in a packed bf16 training step (batch 2, collator padding; Gemma3's sliding-window
    layers fall back to flex): the kernel runs, and logits and every gradient match the float32 dense path."""
    pytest.importorskip("flash_attn.cute", reason="flash-attn-4 is not installed (pip install -e '.[flash]')")
    from longctx_plugins.attention.kernels import flash4 as _flash

    calls, kernel = [], _flash.varlen

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(_flash, "varlen", counted)
    paths, keep = packed_training_paths(
        model_type, torch.bfloat16, fp32_reference=True, backends=("flash",), head_dim=64
    )  # a verified head dim (_flash.VERIFIED_HEAD_DIMS)
    assert calls, "the flash-attn-4 kernel never ran"
    logits_ref, grads_ref = paths["fp32"]
    logits, grads = paths["flash"]
    torch.testing.assert_close(logits[keep], logits_ref[keep], atol=5e-2, rtol=5e-2)
    for n in grads_ref:
        rel = (grads[n] - grads_ref[n]).norm() / grads_ref[n].norm().clamp(min=1e-6)
        assert rel < 5e-2, (n, rel.item())


def _method_case(method, seq_len, keep, H=4, Hkv=2, D=128, dtype=torch.bfloat16, grad=False):
    from longctx_plugins.positions import rope_methods

    trained = 4096
    p = rope_methods.ROPE_METHODS[method].defaults(trained, seq_len, {})
    params = {
        "rope_type": method,
        **p,
        "rope_theta": 10000.0,
        "keep_trained_window": keep,
        "original_max_position_embeddings": trained,
    }
    mod = Mod(True, params)
    mod.config._attn_implementation = method
    setattr(mod.config, f"{method}_backend", "flex")
    mod.config.head_dim = D
    torch.manual_seed(0)
    pos = torch.arange(seq_len, device="cuda")[None]
    inv = rope_ops.default_inv_freq(D, 10000.0, "cuda")
    q = rope_ops.rotate(torch.randn(1, H, seq_len, D, device="cuda"), pos, inv).to(dtype).requires_grad_(grad)
    k = rope_ops.rotate(torch.randn(1, Hkv, seq_len, D, device="cuda"), pos, inv).to(dtype).requires_grad_(grad)
    v = torch.randn(1, Hkv, seq_len, D, device="cuda", dtype=dtype).requires_grad_(grad)
    return mod, params, q, k, v, pos, inv


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("seq_len", [8192, 32768])
@pytest.mark.parametrize("keep", [True, False])
def test_position_method_fast_path_equals_exact_path(method, seq_len, keep):
    """The CUDA fast path (flex passes, fused-kernel passes, LSE merges; no gradients) against the exact dense path
    on a sample of query blocks, bf16."""
    from transformers.masking_utils import causal_mask_function

    from longctx_plugins.attention import method_layer, positional
    from longctx_plugins.ops import passes as P

    mod, params, q, k, v, pos, inv = _method_case(method, seq_len, keep)
    mask = positional.MASK_FUNCTIONS[method](
        1, seq_len, seq_len, config=mod.config, device="cuda", mask_function=causal_mask_function
    )
    with torch.no_grad():
        out, _ = positional_attention_forward(mod, q, k, v, mask, scaling=128**-0.5, position_ids=pos)
        assert mask.backend == "flex"
        passes, _ = method_layer.layer_passes(mask, mod, params, True, pos)
        for a in range(0, seq_len, 4096):  # dense rows of every 4096th block of 1024 queries
            sl = slice(a, a + 1024)
            dense = torch.arange(seq_len, device="cuda")[None, :] <= torch.arange(a, a + 1024, device="cuda")[:, None]
            ref = P.dense_attention(
                q[:, :, sl], k, v, pos[:, sl], pos, passes, inv, mask=dense[None, None], scale=128**-0.5
            )
            torch.testing.assert_close(out[:, sl].float(), ref.transpose(1, 2), **BF16_TOL)


@pytest.mark.parametrize("method", ["dca", "string"])
def test_position_method_flex_gradients_match_exact_path(method):
    from transformers.masking_utils import causal_mask_function

    from longctx_plugins.attention import method_layer, positional
    from longctx_plugins.ops import passes as P

    T = 6144
    mod, params, q, k, v, pos, inv = _method_case(method, T, True, D=64, dtype=torch.float32, grad=True)
    mask = positional.MASK_FUNCTIONS[method](
        1, T, T, config=mod.config, device="cuda", mask_function=causal_mask_function
    )
    out, _ = positional_attention_forward(mod, q, k, v, mask, scaling=64**-0.5, position_ids=pos)
    passes, _ = method_layer.layer_passes(mask, mod, params, True, pos)
    dense = torch.ones(T, T, dtype=torch.bool, device="cuda").tril()[None, None]
    ref = P.dense_attention(q, k, v, pos, pos, passes, inv, mask=dense, scale=64**-0.5)
    _assert_values_and_grads(out, ref, (q, k, v))


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
def test_decode_with_cache_matches_prefill_on_gpu(method):
    """bf16 model at 12k tokens (trained 4k): the first decode step's logits equal the last row of a prefill."""
    from longctx_plugins import extend

    from .conftest import tiny_model

    model = tiny_model("llama", max_position_embeddings=4096, head_dim=64, num_attention_heads=4, hidden_size=256).to(
        "cuda", torch.bfloat16
    )
    extend(model, method, 16384)
    ids = torch.randint(3, 100, (2, 12000), device="cuda")
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        step = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True).logits[:, -1].float()
        full = model(input_ids=torch.cat([ids, nxt], 1), use_cache=False).logits[:, -1].float()
    assert (step - full).abs().max() / full.abs().max() < 3e-2


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_kernel_equals_reference_on_gpu(method, dtype):
    """The split-K decode kernel at 32k slots (trained 8k, 32 query / 4 key heads of 128), batch 2 with left
    padding and empty static-cache slots, against the float32 reference."""
    from longctx_plugins.attention.kernels import decode_passes as DP
    from longctx_plugins.ops import passes as P
    from longctx_plugins.positions.rope_methods import ROPE_METHODS

    params = ROPE_METHODS[method].defaults(8192, 40960, {})
    passes = P.exact_below(ROPE_METHODS[method].passes(params, True), 8192)
    assert DP.usable("cuda", dtype, 128, 128, passes)
    gen = torch.Generator(device="cuda").manual_seed(0)
    slots, real = 32768 + 64, 32768
    k_pos = torch.arange(slots, device="cuda")[None].repeat(2, 1)
    k_pos[1] -= 100
    valid = (k_pos >= 0) & (torch.arange(slots, device="cuda")[None] < real)
    q_pos = k_pos[:, real - 1 : real]
    inv = rope_ops.default_inv_freq(128, 10000.0, "cuda")
    q = rope_ops.rotate(torch.randn(2, 32, 1, 128, device="cuda", generator=gen), q_pos, inv).to(dtype)
    k = rope_ops.rotate(torch.randn(2, 4, slots, 128, device="cuda", generator=gen), k_pos, inv).to(dtype)
    v = torch.randn(2, 4, slots, 128, device="cuda", generator=gen).to(dtype)
    out = DP.attention(q, k, v, q_pos, k_pos, passes, inv, key_valid=valid, scale=128**-0.5)
    ref = P.dense_attention(
        q.float(), k.float(), v.float(), q_pos, k_pos, passes, inv, mask=valid[:, None, None], scale=128**-0.5
    )
    assert out.dtype == dtype and (out.float().transpose(1, 2) - ref).abs().max() < 2e-2


def _assert_values_and_grads(out, ref, inputs):
    """``out`` ``[B, T, H, D]`` (fast path) against ``ref`` ``[B, H, T, D]`` (float32 reference), values and
    gradients."""
    torch.testing.assert_close(out.float(), ref.transpose(1, 2), atol=2e-3, rtol=2e-3)
    w = torch.randn_like(ref)
    ga = torch.autograd.grad((out.float() * w.transpose(1, 2)).sum(), inputs)
    gb = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("grouped", [False, True])
def test_flash_window_calls_equal_float32(dtype, head_dim, grouped):
    """The flash window kernel's band and packed chunk calls (short last chunk, batch 2) against explicit float32
    masks, and the fast path picks it up for these inputs."""
    from longctx_plugins.attention import fast_passes
    from longctx_plugins.attention.kernels import flash_window

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, 330, head_dim, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(2, 2 if grouped else 4, 330, head_dim, device="cuda", dtype=dtype, generator=g) for _ in "kv")
    assert flash_window._check(q, k, v, head_dim**-0.5) < 3e-2
    assert fast_passes._window_kernel(q, k) == ("grouped" if grouped else "repeat")
