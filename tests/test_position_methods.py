"""Dual Chunk Attention and STRING (and what the three position methods share): definitions pair by pair, the
multi-pass reference, tiny models end to end (identity inside the trained window, padding, flex == exact path,
KV-cache generation == full recompute), extend() and configuration errors."""

import pytest
import torch

from longctx_plugins import extend
from longctx_plugins.ops import dca, string
from longctx_plugins.ops import passes as P
from longctx_plugins.ops import rope as rope_ops
from longctx_plugins.ops.dense import repeat_kv

from .conftest import outputs, tiny_config, tiny_model
from .references import (
    causal_lse_reference,
    dca_relative_position,
    masked_softmax_attention,
    string_relative_position,
)

# Worked example (trained length 8, 20 tokens): DCA with the authors' chunk_size C = 6 and local_window 2 has chunks
# of 4 tokens, i.e. chunk_size=4, local_window=2 here. Rows 0..19, the rotation distance of every causal pair.
DCA_ROWS = """0|1 0|2 1 0|3 2 1 0|4 3 2 1 0|5 4 3 2 1 0|6 5 4 3 2 1 0|6 5 4 3 3 2 1 0|6 5 4 3 4 3 2 1 0|
6 5 4 3 5 4 3 2 1 0|6 5 4 3 6 5 4 3 2 1 0|6 5 4 3 6 5 4 3 3 2 1 0|6 5 4 3 6 5 4 3 4 3 2 1 0|
6 5 4 3 6 5 4 3 5 4 3 2 1 0|6 5 4 3 6 5 4 3 6 5 4 3 2 1 0|6 5 4 3 6 5 4 3 6 5 4 3 3 2 1 0|
6 5 4 3 6 5 4 3 6 5 4 3 4 3 2 1 0|6 5 4 3 6 5 4 3 6 5 4 3 5 4 3 2 1 0|6 5 4 3 6 5 4 3 6 5 4 3 6 5 4 3 2 1 0|
6 5 4 3 6 5 4 3 6 5 4 3 6 5 4 3 3 2 1 0"""
# STRING, shift 3, local window 2: distance d below 3 kept, d >= 3 mapped to d - 1.
STRING_ROW_19 = [18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 2, 1, 0]


def pass_distances(passes, n):
    """The rotation distance each pass gives every causal pair, and which pass covers it (each pair exactly once)."""
    pos = torch.arange(n)[None]
    dist = torch.full((n, n), -1)
    owner = torch.full((n, n), -1)
    for k, p in enumerate(passes):
        covered = p.band.contains(pos, pos)[0].tril()
        assert not bool((covered & (owner >= 0)).any()), f"pass {p.name} overlaps another"
        d = p.q(pos)[0][:, None] - p.k(pos)[0][None, :]
        dist = torch.where(covered, d, dist)
        owner = torch.where(covered, torch.full_like(owner, k), owner)
    assert bool((owner >= 0)[torch.ones(n, n, dtype=torch.bool).tril()].all()), "a causal pair is in no pass"
    return dist


def test_dca_distances_match_the_definition_and_the_worked_example():
    rows = [[int(x) for x in r.split()] for r in DCA_ROWS.replace("\n", "").split("|")]
    dist = pass_distances(dca.passes(4, 2), 20)
    for i in range(20):
        assert dist[i, : i + 1].tolist() == rows[i], i
        assert all(dist[i, j] == dca_relative_position(i, j, 4, 2) for j in range(i + 1))
    assert int(dist.max()) == 6  # chunk_size + local_window: never beyond
    for chunk, local in [(5, 1), (7, 3), (3, 0)]:
        dist = pass_distances(dca.passes(chunk, local), 40)
        assert all(dist[i, j] == dca_relative_position(i, j, chunk, local) for i in range(40) for j in range(i + 1))


def test_string_distances_match_the_definition_and_the_worked_example():
    dist = pass_distances(string.passes(3, 2), 20)
    assert dist[19].tolist() == STRING_ROW_19
    for shift, window in [(3, 2), (6, 2), (10, 4)]:
        dist = pass_distances(string.passes(shift, window), 30)
        assert all(dist[i, j] == string_relative_position(i, j, shift, window) for i in range(30) for j in range(i + 1))


def pairwise(q, k, v, distance, inv_freq, scale, mask):
    """Straight from a definition: each pair's logit with the query rotated by the pair's distance and the key at 0."""
    B, H, n, D = q.shape
    kk = repeat_kv(k, H // k.shape[1])
    logits = torch.full((B, H, n, n), float("-inf"))
    for i in range(n):
        for j in range(i + 1):
            qi = rope_ops.rotate(q[:, :, i : i + 1], torch.full((B, 1), distance(i, j)), inv_freq)
            logits[:, :, i, j] = (qi[:, :, 0] * kk[:, :, j]).sum(-1) * scale
    return masked_softmax_attention(logits, mask, v)


@pytest.mark.parametrize(
    "method,params,dist",
    [
        ("dca", (4, 2), lambda i, j: dca_relative_position(i, j, 4, 2)),
        ("string", (5, 2), lambda i, j: string_relative_position(i, j, 5, 2)),
    ],
)
def test_reference_equals_the_pairwise_definition(method, params, dist):
    torch.manual_seed(0)
    B, H, Hkv, n, D = 2, 4, 2, 23, 8
    inv = rope_ops.default_inv_freq(D, 10000.0)
    pos = torch.arange(n)[None].expand(B, -1)
    q0, k0, v = torch.randn(B, H, n, D), torch.randn(B, Hkv, n, D), torch.randn(B, Hkv, n, D)
    q, k = rope_ops.rotate(q0, pos, inv), rope_ops.rotate(k0, pos, inv)  # as the model hands them over
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(B, 1, n, n)
    passes = (dca.passes if method == "dca" else string.passes)(*params)
    got = P.dense_attention(q, k, v, pos, pos, passes, inv, mask=mask, scale=D**-0.5)
    # the definition rotates the unrotated query by the pair distance against the unrotated key
    ref = pairwise(q0, k0, v, dist, inv, D**-0.5, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


METHOD_PARAMS = {
    "dca": {"chunk_size": 12, "local_window": 4},
    "string": {"shift": 10, "local_window": 3},
    "self_extend": {"group_size": 3, "window": 8},
}


def method_model(model_type, method, keep=True, **over):
    cfg = tiny_config(model_type)
    p = {"rope_type": method, **METHOD_PARAMS[method], "keep_trained_window": keep}
    params = (
        {k: dict(v) for k, v in cfg.rope_parameters.items()}
        if "full_attention" in cfg.rope_parameters
        else {**cfg.rope_parameters, **p}
    )
    if "full_attention" in params:
        params["full_attention"].update(p)
    base = tiny_model(model_type, max_position_embeddings=32, **over)
    ext = tiny_model(model_type, attn_implementation=method, rope_parameters=params, max_position_embeddings=32, **over)
    ext.load_state_dict(base.state_dict())
    return base, ext


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("method", ["dca", "string"])
def test_inside_the_trained_window_equals_the_unextended_model(model_type, method):
    base, ext = method_model(model_type, method)
    ids = torch.randint(3, 100, (2, 32))
    long = torch.randint(3, 100, (2, 70))
    with torch.no_grad():
        torch.testing.assert_close(outputs(ext, input_ids=ids), outputs(base, input_ids=ids), atol=1e-5, rtol=1e-5)
        out, ref = outputs(ext, input_ids=long), outputs(base, input_ids=long)
    torch.testing.assert_close(out[:, :32], ref[:, :32], atol=1e-5, rtol=1e-5)  # rows inside stay exact
    assert (out[:, 32:] - ref[:, 32:]).abs().max() > 1e-4  # rows past it are extended


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("keep", [True, False])
def test_flex_path_equals_exact_path_with_left_padding(method, keep):
    _, ext = method_model("llama", method, keep=keep)
    ids = torch.randint(3, 100, (2, 90))
    am = torch.ones_like(ids)
    am[1, :23] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        setattr(ext.config, f"{method}_backend", "sdpa")
        ref = outputs(ext, input_ids=ids, attention_mask=am, position_ids=pos)
        setattr(ext.config, f"{method}_backend", "flex")
        flex = outputs(ext, input_ids=ids, attention_mask=am, position_ids=pos)
        # a padded row equals the same tokens alone
        alone = outputs(ext, input_ids=ids[1:, 23:])
    keep_rows = am.bool()
    torch.testing.assert_close(flex[keep_rows], ref[keep_rows], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ref[1, 23:], alone[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_kv_cache_equals_full_recompute(method, cache):
    """Greedy generation with a KV cache (dynamic or static, batch 2 with left padding) gives exactly the tokens of
    recomputing the whole sequence at every step."""
    _, ext = method_model("llama", method)
    prompt = torch.randint(3, 100, (2, 40))
    am = torch.ones_like(prompt)
    am[1, :5] = 0
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.no_grad():
        gen = ext.generate(prompt, attention_mask=am, max_new_tokens=12, do_sample=False, min_new_tokens=12, **kw)
        seq, mask = prompt, am
        for _ in range(12):  # greedy, recomputing the whole sequence every step
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = outputs(ext, input_ids=seq, attention_mask=mask, position_ids=pos, use_cache=False)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert torch.equal(gen, seq)


def test_gradients_flow_through_every_method():
    for method in ("dca", "string"):
        _, ext = method_model("llama", method)
        ext.train()
        out = outputs(ext, input_ids=torch.randint(3, 100, (2, 60)))
        out.float().pow(2).mean().backward()
        grads = [p.grad for p in ext.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_extend_picks_parameters_and_reports_the_reach():
    model = tiny_model("llama", max_position_embeddings=64)
    extend(model, "dca", 256)
    p = model.config.rope_parameters
    assert (p["rope_type"], p["chunk_size"], p["local_window"], p["original_max_position_embeddings"]) == (
        "dca",
        40,
        8,
        64,
    )
    assert model.config._attn_implementation == "dca" and model.config.max_position_embeddings == 256
    model = tiny_model("llama", max_position_embeddings=64)
    extend(model, "string", 100)
    p = model.config.rope_parameters
    assert (p["shift"], p["local_window"]) == (44, 8)  # 100 - 64 + 8: every distance stays trained
    with pytest.warns(UserWarning, match="only up to 119 tokens, less than target_length=256"):
        extend(tiny_model("llama", max_position_embeddings=64), "string", 256)
    with pytest.raises(TypeError, match="unexpected parameters for 'dca': \\['shift'\\]"):
        extend(tiny_model("llama", max_position_embeddings=64), "dca", 256, shift=3)
    with pytest.raises(ValueError, match="unknown method 'chunkllama'"):
        extend(tiny_model("llama", max_position_embeddings=64), "chunkllama", 256)


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"rope_type": "dca", "chunk_size": 30, "local_window": 8}, "must not exceed the trained window"),
        ({"rope_type": "dca", "chunk_size": 0, "local_window": 8}, "'chunk_size'.*integer >= 1"),
        ({"rope_type": "dca", "local_window": 8}, "missing 'chunk_size'"),
        ({"rope_type": "string", "shift": 32, "local_window": 8}, "smaller than the trained window"),
        ({"rope_type": "string", "shift": 8, "local_window": 8}, "smaller than shift=8"),
        ({"rope_type": "string", "shift": 8, "local_window": 2, "keep_trained_window": "yes"}, "True or False"),
    ],
)
def test_bad_parameters_fail_when_the_config_is_built(params, needle):
    import re

    with pytest.raises(Exception) as info:  # transformers wraps the validator's ValueError in its own error
        tiny_config("llama", max_position_embeddings=32, rope_parameters={**params, "rope_theta": 10000.0})
    err = info.value
    while not isinstance(err, (ValueError, KeyError)) and err.__cause__ is not None:
        err = err.__cause__
    # a missing key is a KeyError (transformers' rule for every RoPE type), a bad value a ValueError
    assert isinstance(err, KeyError if needle.startswith("missing") else ValueError), type(err)
    assert re.search(needle, str(err)), str(err)


def test_method_under_another_attention_or_in_an_encoder_fails_when_built():
    params = {"rope_type": "dca", "chunk_size": 12, "local_window": 4, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="needs attn_implementation='dca'"):
        tiny_model("llama", attn_implementation="sdpa", max_position_embeddings=32, rope_parameters=params)
    with pytest.raises(ValueError, match="needs attn_implementation='string'"):
        tiny_model(
            "llama",
            attn_implementation="dca",
            max_position_embeddings=32,
            rope_parameters={"rope_type": "string", "shift": 10, "local_window": 3, "rope_theta": 10000.0},
        )
    cfg = tiny_config("nomic_bert")
    with pytest.raises(ValueError, match="defined for causal decoders"):
        tiny_model(
            "nomic_bert",
            attn_implementation="dca",
            max_position_embeddings=32,
            rope_parameters={**cfg.rope_parameters, **params},
        )


@pytest.mark.parametrize("method", ["dca", "string", "self_extend"])
@pytest.mark.parametrize("keep", [True, False])
def test_fused_kernel_passes_equal_exact_path(monkeypatch, method, keep):
    """The CUDA fast path's fused-kernel passes (distance bands sliced into causal attention; DCA's chunks one query
    chunk at a time), run on CPU with an exact float32 kernel standing in for cuDNN/flash, == the exact path."""
    from longctx_plugins.attention.kernels import fused_lse

    calls = []

    def exact_lse(kernel, q, k, v, scale, causal=True):
        calls.append(causal)
        return causal_lse_reference(kernel, q, k, v, scale, causal)

    _, ext = method_model("llama", method, keep=keep)
    ids = torch.randint(3, 100, (2, 77))
    with torch.no_grad():
        setattr(ext.config, f"{method}_backend", "sdpa")
        ref = outputs(ext, input_ids=ids)
        monkeypatch.setattr(fused_lse, "choose", lambda kernels, query: "exact")
        monkeypatch.setattr(fused_lse, "causal_attention_lse", exact_lse)
        setattr(ext.config, f"{method}_backend", "flex")
        fast = outputs(ext, input_ids=ids)
    assert calls and (method != "dca" or False in calls)  # DCA's successive / inter chunks ran on the kernel
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)
