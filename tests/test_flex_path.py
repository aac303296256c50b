"""The FlexAttention path (block masks built from boundaries / positions) against the exact SDPA reference path.

Runs on CPU under no_grad with the eager flex op (CPU flex is inference-only); the same code runs compiled on
CUDA (tests/test_gpu.py)."""

import pytest
import torch

from longctx_plugins import AnchorPackingCollator
from longctx_plugins.ops import blocks, masks

from .conftest import outputs, tiny_config, tiny_model


def run(model, backend_attr, backend, **inputs):
    setattr(model.config, backend_attr, backend)
    with torch.no_grad():
        return outputs(model, **inputs)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "bert", "nomic_bert"])
def test_anchor_flex_equals_sdpa_path(model_type):
    g = torch.Generator().manual_seed(1)
    docs = [
        {"input_ids": torch.randint(3, 100, (int(n),), generator=g).tolist()}
        for n in torch.randint(5, 200, (9,), generator=g)
    ]
    batch = AnchorPackingCollator(None, max_length=333, anchor_token_id=1, pad_token_id=0)(docs)
    assert batch["input_ids"].shape[0] >= 2 and batch["attention_mask"].min() == 0  # batch > 1 with padding
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if model_type in ("llama", "qwen3"):
        inputs["use_cache"] = False
    model = tiny_model(model_type, attn_implementation="anchor", max_position_embeddings=512)
    flex = run(model, "anchor_backend", "flex", **inputs)
    ref = run(model, "anchor_backend", "sdpa", **inputs)
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(flex[keep], ref[keep], atol=2e-5, rtol=1e-5)


def se_model(model_type, G, W, **over):
    cfg = tiny_config(model_type)
    p = {"rope_type": "self_extend", "group_size": G, "window": W, "keep_trained_window": False}
    params = {**cfg.rope_parameters, **p} if "rope_type" in cfg.rope_parameters else None
    return tiny_model(
        model_type, attn_implementation="self_extend", rope_parameters=params, max_position_embeddings=256, **over
    )


@pytest.mark.parametrize("model_type", ["llama", "nomic_bert"])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_self_extend_flex_equals_reference(model_type, padding):
    model = se_model(model_type, 4, 40)
    ids = torch.randint(3, 100, (2, 301))
    am = torch.ones_like(ids)
    if padding == "left" and model_type == "llama":
        am[1, :57] = 0
    elif padding:
        am[1, 230:] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0) if model_type == "llama" else None
    kw = dict(input_ids=ids, attention_mask=am) | ({"position_ids": pos} if pos is not None else {})
    flex = run(model, "self_extend_backend", "flex", **kw)
    ref = run(model, "self_extend_backend", "sdpa", **kw)
    keep = am.bool()
    torch.testing.assert_close(flex[keep], ref[keep], atol=3e-5, rtol=1e-5)


def test_block_maps_are_exact_supersets():
    """Block classification vs the dense rule: every allowed pair lies in an 'any' block; 'full' blocks are all True."""
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 1, 100, 101, 390, 500, 501, 700, 900, 1000], dtype=torch.int32)
    doc = masks.doc_ids_from_cu_seqlens(cu, 2, 500)
    for causal in (True, False):
        dense = masks.dense_mask(masks.anchor_mod(doc, causal), 2, 500, 500, "cpu")[:, 0]
        any_, full = blocks.anchor_blocks(doc, 64, causal)
        _check(dense, any_, full, 64)
    pos = torch.sort(torch.randint(0, 400, (2, 333), generator=g)).values
    valid = torch.ones(2, 333, dtype=torch.bool)
    valid[1, 300:] = False
    from longctx_plugins.ops.passes import Band

    idx = torch.arange(333)
    for causal in (True, False):
        c = (idx[None, :] <= idx[:, None]) if causal else torch.ones(333, 333, dtype=torch.bool)
        d = pos[:, :, None] - pos[:, None, :]
        dc = pos[:, :, None] // 50 - pos[:, None, :] // 50
        rules = {
            Band(-36, 36): d.abs() < 37,
            Band(lo=37): d >= 37,
            Band(hi=-37): -d >= 37,
            Band(0, 0, 50, 50): dc == 0,
            Band(1, 1, 50, 50): dc == 1,
            Band(lo=2, q_div=50, k_div=50): dc >= 2,
        }
        for band, rule in rules.items():
            _check(rule & c & valid[:, None, :], *blocks.band_blocks(pos, pos, valid, 64, band, causal), 64)


def _check(dense, any_, full, block):
    b, t, _ = dense.shape
    nb = -(-t // block)
    pad = nb * block - t
    d = torch.nn.functional.pad(dense, (0, pad, 0, pad)).view(b, nb, block, nb, block)
    real = torch.nn.functional.pad(torch.ones(t, t, dtype=torch.bool), (0, pad, 0, pad)).view(nb, block, nb, block)
    has = d.any(-1).any(2)
    all_ = (d | ~real).all(-1).all(2)
    assert not bool((has & ~any_).any()), "an allowed pair fell into an empty block"
    assert not bool((full & ~all_).any()), "a 'full' block contains a masked pair"


def test_flex_kernel_options_user_setting_wins_and_cpu_gets_torch_defaults():
    from longctx_plugins.attention.kernels.flex import kernel_options

    q = torch.zeros(1, 2, 8, 64)
    assert kernel_options(None, q) is None  # CPU: torch's own choice
    mine = {"BLOCK_M": 64}
    got = kernel_options(mine, q)
    assert got == mine and got is not mine  # a copy: the kernel call never mutates the setting
    assert kernel_options({}, q) is None


@pytest.mark.parametrize("with_position_ids", [True, False])
def test_self_extend_block_masks_built_once_per_forward(monkeypatch, with_position_ids):
    """Every layer of one forward reuses the block masks (they cost host syncs and argsorts to build)."""
    from longctx_plugins.attention import fast_passes

    built = []
    real = fast_passes._pass_layout
    monkeypatch.setattr(fast_passes, "_pass_layout", lambda *a: built.append(1) or real(*a))
    model = se_model("llama", 4, 40)
    assert model.config.num_hidden_layers >= 2
    ids = torch.randint(3, 100, (1, 301))
    kw = {"position_ids": torch.arange(301)[None]} if with_position_ids else {}
    run(model, "self_extend_backend", "flex", input_ids=ids, **kw)
    assert len(built) == 1


def test_anchor_flex_expand_kv_option_gives_identical_outputs():
    """anchor_flex_expand_kv (KV heads copied per query head on the flex path) is a speed option: same outputs."""
    g = torch.Generator().manual_seed(3)
    docs = [{"input_ids": torch.randint(3, 100, (int(n),), generator=g).tolist()} for n in (70, 150, 40)]
    from longctx_plugins import AnchorPackingCollator

    batch = AnchorPackingCollator(None, max_length=300, anchor_token_id=1, pad_token_id=0)(docs)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model = tiny_model("llama", attn_implementation="anchor", max_position_embeddings=512)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query heads
    plain = run(model, "anchor_backend", "flex", **inputs)
    model.config.anchor_flex_expand_kv = True
    expanded = run(model, "anchor_backend", "flex", **inputs)
    torch.testing.assert_close(expanded, plain, atol=1e-6, rtol=1e-6)
