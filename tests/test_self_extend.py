import pytest
import torch

from longctx_plugins.ops import rope as rope_ops
from longctx_plugins.ops import self_extend as se
from longctx_plugins.ops.lse import merge_pair

from .conftest import outputs, tiny_config, tiny_model
from .references import causal_lse_reference, self_extend_reference

NESTED = {"gemma3", "modernbert"}
SE_MODELS = ["llama", "qwen3", "mistral", "gemma3", "modernbert", "nomic_bert"]


def se_params(model_type, group, window, **extra):
    """SelfExtend everywhere (the paper's definition; keep_trained_window=False) unless ``extra`` says otherwise."""
    cfg = tiny_config(model_type)
    p = {"rope_type": "self_extend", "group_size": group, "window": window, "keep_trained_window": False, **extra}
    if model_type in NESTED:
        new = {k: dict(v) for k, v in cfg.rope_parameters.items()}
        new["full_attention"].update(p)
        return new
    return {**cfg.rope_parameters, **p}


def pair(model_type, group, window, extra=None, **over):
    base = tiny_model(model_type, **over)
    ext = tiny_model(
        model_type,
        attn_implementation="self_extend",
        rope_parameters=se_params(model_type, group, window, **(extra or {})),
        **over,
    )
    ext.load_state_dict(base.state_dict())
    return base, ext


@pytest.mark.parametrize("model_type", SE_MODELS)
@pytest.mark.parametrize("group,window,length", [(4, 64, 40), (1, 4, 40), (3, 5, 3)])
def test_identity_when_window_covers_input_or_group_is_one(model_type, group, window, length):
    base, ext = pair(model_type, group, window, max_position_embeddings=128)
    ids = torch.randint(3, 100, (2, length))
    with torch.no_grad():
        torch.testing.assert_close(outputs(ext, input_ids=ids), outputs(base, input_ids=ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", SE_MODELS)
def test_long_input_changes_output_and_gradients_flow(model_type):
    base, ext = pair(model_type, 4, 8, max_position_embeddings=128)
    ids = torch.randint(3, 100, (2, 50))
    with torch.no_grad():
        assert (outputs(ext, input_ids=ids) - outputs(base, input_ids=ids)).abs().max() > 1e-5
    ext.train()
    out = outputs(ext, input_ids=ids)
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in ext.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def spec_distance(i, j, G, W, causal):
    """SelfExtend's distance (Jin et al. 2024; the mirrored right side for encoders), written out pair by pair."""
    if abs(i - j) < W:
        return i - j
    if j < i:
        return i // G - j // G + W - W // G
    return -(j // G - i // G + W - W // G)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (2, 2)])
@pytest.mark.parametrize("length,G,W", [(37, 3, 5), (50, 4, 8), (9, 2, 4)])
def test_reference_equals_straightforward_pairwise_implementation(causal, heads, kv_heads, length, G, W):
    torch.manual_seed(0)
    B, D = 2, 16
    inv = rope_ops.default_inv_freq(D, 10_000.0)
    q0 = torch.randn(B, heads, length, D)
    k0 = torch.randn(B, kv_heads, length, D)
    v = torch.randn(B, kv_heads, length, D)
    pos = torch.arange(length)[None].expand(B, -1)
    q, k = rope_ops.rotate(q0, pos, inv), rope_ops.rotate(k0, pos, inv)
    mask = torch.ones(B, 1, length, length, dtype=torch.bool)
    if causal:
        mask = mask.tril()
    mask[1, :, :, length - 5 :] = False  # padding keys in row 1
    out = self_extend_reference(q, k, v, pos, pos, inv, G, W, causal=causal, mask=mask, scale=D**-0.5)
    # straightforward: logit(i, j) = <rot(q0, d(i, j)), k0> for the SelfExtend distance d, one softmax
    rep = heads // kv_heads
    logits = torch.empty(B, heads, length, length)
    for i in range(length):
        for j in range(length):
            d = spec_distance(i, j, G, W, causal)
            qi = rope_ops.rotate(q0[:, :, i : i + 1], torch.full((B, 1), d), inv)
            kj = k0[:, :, j : j + 1].repeat_interleave(rep, dim=1)
            logits[:, :, i, j] = (qi * kj).sum(-1)[..., 0] * D**-0.5
    probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
    ref = probs @ v.repeat_interleave(rep, dim=1)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_with_padding_equals_single_sequences(padding_side):
    _, ext = pair("llama", 4, 8, max_position_embeddings=128)
    lengths = [50, 33]
    seqs = [torch.randint(3, 100, (n,)) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(2, T, dtype=torch.long)
    am = torch.zeros(2, T, dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(T - len(s), T) if padding_side == "left" else slice(0, len(s))
        ids[r, sl], am[r, sl] = s, 1
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = outputs(ext, input_ids=ids, attention_mask=am, position_ids=pos)
        for r, s in enumerate(seqs):
            single = outputs(ext, input_ids=s[None])[0]
            torch.testing.assert_close(batched[r][am[r].bool()], single, atol=1e-5, rtol=1e-5)


def test_generate_with_cache_equals_full_recompute():
    _, ext = pair("llama", 4, 8, max_position_embeddings=128)
    ids = torch.randint(3, 100, (2, 40))
    am = torch.ones_like(ids)
    am[1, :6] = 0  # left padding
    out = ext.generate(input_ids=ids, attention_mask=am, max_new_tokens=12, do_sample=False, pad_token_id=0)
    cur, cur_am = ids, am
    with torch.no_grad():
        for _ in range(12):
            pos = (cur_am.cumsum(-1) - 1).clamp(min=0)
            logits = ext(input_ids=cur, attention_mask=cur_am, position_ids=pos, use_cache=False).logits[:, -1]
            cur = torch.cat([cur, logits.argmax(-1, keepdim=True)], 1)
            cur_am = torch.cat([cur_am, torch.ones_like(cur_am[:, :1])], 1)
    assert torch.equal(out, cur)


def test_log_temperature_only_past_trained_window():
    _, ext = pair("llama", 4, 8, max_position_embeddings=32)
    short, long = torch.randint(3, 100, (1, 30)), torch.randint(3, 100, (1, 60))
    with torch.no_grad():
        plain_short, plain_long = outputs(ext, input_ids=short), outputs(ext, input_ids=long)
        ext.config.rope_parameters["temperature"] = "log"
        torch.testing.assert_close(outputs(ext, input_ids=short), plain_short, atol=0, rtol=0)
        assert (outputs(ext, input_ids=long) - plain_long).abs().max() > 1e-4
    expected = torch.log(torch.tensor(1000.0)) / torch.log(torch.tensor(32.0))
    assert se.temperature(torch.tensor([1000, 10]), 32).tolist() == pytest.approx([expected.item(), 1.0])


def _cause(exc):  # a bad value is a ValueError, a missing key a KeyError (transformers' rule)
    while exc is not None and not isinstance(exc, (ValueError, KeyError)):
        exc = exc.__cause__
    return exc


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"group_size": 0, "window": 8}, "'group_size'"),
        ({"group_size": 4, "window": 0}, "'window'"),
        ({"group_size": 2.5, "window": 8}, "'group_size'"),
        ({"group_size": 4, "window": "8"}, "'window'"),
        ({"group_size": 4, "window": 128}, "trained window"),
        ({"group_size": 4}, "missing 'window'"),
        ({"group_size": 4, "window": 8, "temperature": "sqrt"}, "'temperature'"),
    ],
)
def test_bad_parameters(params, needle):
    with pytest.raises(Exception) as info:
        tiny_config("llama", max_position_embeddings=128, rope_parameters={"rope_type": "self_extend", **params})
    assert needle in str(_cause(info.value))


def test_self_extend_config_under_other_attention_fails_loudly():
    with pytest.raises(ValueError, match="attn_implementation='self_extend'"):
        tiny_model(
            "llama",
            attn_implementation="sdpa",
            max_position_embeddings=128,
            rope_parameters={"rope_type": "self_extend", "group_size": 4, "window": 8},
        )


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_merge_pair_equals_one_softmax_over_all_keys(dtype, tol):
    """The log-sum-exp merge of two passes over disjoint key sets == one softmax over their union, including rows
    that see no key in one pass and a row that sees no key at all (zeros, no NaN)."""
    g = torch.Generator().manual_seed(0)
    B, H, Q, K, D = 2, 3, 9, 13, 8
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (Q, K, K))
    mask = torch.rand(B, 1, Q, K, generator=g) > 0.3
    mask[0, :, 1] = False  # no key at all
    split = torch.rand(B, 1, Q, K, generator=g) > 0.5
    split[1, :, 2] = True  # this row's keys all fall into pass a

    def attend(m):
        logits = (q @ k.transpose(-1, -2)).masked_fill(~m, float("-inf"))
        return torch.nan_to_num(torch.softmax(logits, -1)) @ v, torch.logsumexp(logits, -1)

    (oa, la), (ob, lb) = attend(mask & split), attend(mask & ~split)
    out, lse = merge_pair(oa.to(dtype), la, ob.to(dtype), lb)
    ref, ref_lse = attend(mask)
    assert out.dtype == dtype and not out.isnan().any()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    assert out[0, :, 1].abs().max() == 0 and lse[0, :, 1].isneginf().all()
    torch.testing.assert_close(lse[mask.any(-1).expand_as(lse)], ref_lse[mask.any(-1).expand_as(lse)])


@pytest.mark.parametrize("model_type", ["llama", "nomic_bert"])
def test_fused_kernel_grouped_passes_slice_and_merge_exactly(monkeypatch, model_type):
    """The CUDA fast path's grouped passes (a fused causal kernel over shifted row/key ranges; reversed for keys right
    of the query in encoders), run here through the whole flex path with an exact float32 causal kernel in place of
    cuDNN/flash, merged into the neighbour pass == the exact reference path."""
    from longctx_plugins.attention.kernels import fused_lse

    calls = []

    def exact_causal_lse(kernel, q, k, v, scale, causal=True):
        calls.append(kernel)
        return causal_lse_reference(kernel, q, k, v, scale, causal)

    monkeypatch.setattr(fused_lse, "choose", lambda kernels, query: "exact")
    monkeypatch.setattr(fused_lse, "causal_attention_lse", exact_causal_lse)
    _, ext = pair(model_type, 3, 7, max_position_embeddings=128)
    ids = torch.randint(3, 100, (2, 45))
    with torch.no_grad():
        ext.config.self_extend_backend = "flex"
        fast = outputs(ext, input_ids=ids)
        ext.config.self_extend_backend = "sdpa"
        ref = outputs(ext, input_ids=ids)
    assert calls and set(calls) == {"exact"}
    assert len(calls) == ext.config.num_hidden_layers * (1 if model_type == "llama" else 2)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "nomic_bert"])
def test_reference_over_query_chunks_equals_one_call(monkeypatch, model_type):
    """Without gradients, long inputs run the exact reference over query-row chunks (bounded memory): same outputs,
    with padding, for decoders and encoders (mirrored right-hand passes)."""
    from longctx_plugins.attention import method_layer as se_attn

    _, ext = pair(model_type, 4, 8, max_position_embeddings=128)
    ids = torch.randint(3, 100, (2, 61))
    am = torch.ones_like(ids)
    am[1, 45:] = 0
    with torch.no_grad():
        whole = outputs(ext, input_ids=ids, attention_mask=am)
        calls = []
        real = se_attn.P.dense_attention
        monkeypatch.setattr(se_attn, "REFERENCE_CHUNK_ELEMENTS", 2 * 4 * 61 * 7)  # ~7 query rows per chunk
        monkeypatch.setattr(se_attn.P, "dense_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
        chunked = outputs(ext, input_ids=ids, attention_mask=am)
    assert len(calls) > ext.config.num_hidden_layers  # really chunked
    keep = am.bool()
    torch.testing.assert_close(chunked[keep], whole[keep], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gemma3", "nomic_bert"])
def test_keep_trained_window_is_exact_inside_and_extends_beyond(model_type):
    """Default keep_trained_window: inputs no longer than the trained window equal the unextended model; past it,
    decoders keep every row before the trained length exact and change the rows after; encoders change as a whole."""
    base, ext = pair(model_type, 4, 8, extra={"keep_trained_window": True}, max_position_embeddings=48)
    _, paper = pair(model_type, 4, 8, max_position_embeddings=48)
    inside, beyond = torch.randint(3, 100, (2, 48)), torch.randint(3, 100, (2, 70))
    with torch.no_grad():
        torch.testing.assert_close(
            outputs(ext, input_ids=inside), outputs(base, input_ids=inside), atol=1e-5, rtol=1e-5
        )
        assert (outputs(paper, input_ids=inside) - outputs(base, input_ids=inside)).abs().max() > 1e-4
        out, ref = outputs(ext, input_ids=beyond), outputs(base, input_ids=beyond)
        if model_type == "nomic_bert":
            assert (out - ref).abs().max() > 1e-4
            torch.testing.assert_close(out, outputs(paper, input_ids=beyond), atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(out[:, :48], ref[:, :48], atol=1e-5, rtol=1e-5)
            assert (out[:, 48:] - ref[:, 48:]).abs().max() > 1e-4


def test_keep_trained_window_flex_and_fused_paths_equal_reference(monkeypatch):
    """The row-restricted passes (plain rows below the trained length, SelfExtend rows after) on the flex path and on
    the fused-kernel path (an exact float32 causal kernel standing in for cuDNN/flash) == the exact reference."""
    from longctx_plugins.attention.kernels import fused_lse

    _, ext = pair("llama", 3, 7, extra={"keep_trained_window": True}, max_position_embeddings=40)
    ids = torch.randint(3, 100, (2, 101))
    with torch.no_grad():
        ext.config.self_extend_backend = "sdpa"
        ref = outputs(ext, input_ids=ids)
        ext.config.self_extend_backend = "flex"
        torch.testing.assert_close(outputs(ext, input_ids=ids), ref, atol=2e-5, rtol=1e-5)

        monkeypatch.setattr(fused_lse, "choose", lambda kernels, query: "exact")
        monkeypatch.setattr(fused_lse, "causal_attention_lse", causal_lse_reference)
        torch.testing.assert_close(outputs(ext, input_ids=ids), ref, atol=2e-5, rtol=1e-5)
