"""Uncompiled decode steps build what every layer shares (positions, masks, settings, the kernel's inputs) once per
forward pass (:func:`longctx_plugins.attention.decode.per_forward`): once per forward, rebuilt for anything new, and
with the same results as building it in every layer."""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import DynamicCache

from longctx_plugins.attention import decode, positional_decode

from .test_position_methods import method_model


@pytest.fixture(autouse=True)
def fresh_slot():
    decode._FORWARD[0] = None
    yield
    decode._FORWARD[0] = None


def test_per_forward_builds_once_and_again_for_anything_new():
    built = []

    def build():
        built.append(1)
        return len(built)

    mask, pos = torch.ones(1, 1, 1, 5, dtype=torch.bool), torch.tensor([[4]])
    state = {"pos": pos}

    def get(layer, key="k", anchor=None, held=(mask,)):
        return decode.per_forward(state["pos"] if anchor is None else anchor, layer, (key,), held, build)

    assert [get(0), get(0, "other"), get(1), get(2), get(2, "other")] == [1, 2, 1, 1, 2]  # layers 1, 2 read
    assert get(3, held=(mask.clone(),)) == 3  # another mask in the same forward: its own value
    assert get(1) == 4  # a lower layer index: a new forward
    assert get(1) == 5  # the same layer asking again: a new forward (a one-layer model)
    assert get(2, anchor=pos.clone()) == 6  # another position tensor: another forward
    assert get(3) == 7 and get(4) == 7
    pos.add_(1)  # changed in place (its version moves): a new forward, even at a higher layer
    assert get(5) == 8
    assert [decode.per_forward(None, 0, ("k",), (), build) for _ in range(2)] == [9, 10]  # nothing identifies it
    assert [decode.per_forward(pos, None, ("k",), (), build) for _ in range(2)] == [11, 12]  # no layer index
    del pos, state["pos"]
    gc.collect()
    assert decode._FORWARD[0] is None  # the values go with the forward's tensor


def test_per_forward_under_inference_mode():
    """Inference tensors carry no version: the layer order alone tells forwards apart."""
    built = []
    with torch.inference_mode():
        pos = torch.tensor([[4]])
        for layer in range(3):
            decode.per_forward(pos, layer, ("k",), (), lambda: built.append(1))
        pos.add_(1)  # not seen (no version), but the next forward starts again at layer 0
        decode.per_forward(pos, 0, ("k",), (), lambda: built.append(1))
    assert len(built) == 2


def _decode_step(model, method_calls: dict):
    """Prefill 40 tokens (trained 32; batch 2, the second row left padded), then one decode step: its logits."""
    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[1, :5] = 0
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=am,
            position_ids=(am.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
        )
        tok = out.logits[:, -1:].argmax(-1)
        method_calls.clear()
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        return model(
            input_ids=tok,
            attention_mask=am,
            position_ids=am.sum(-1, keepdim=True) - 1,
            past_key_values=cache,
            use_cache=True,
        ).logits


@pytest.mark.parametrize("method", ["self_extend", "dca", "string"])
def test_layers_of_a_decode_step_share_one_build_and_equal_building_per_layer(method, monkeypatch):
    _, model = method_model("llama", method, num_hidden_layers=4)
    calls: dict = {}
    real_positions, real_settings = decode.positions, positional_decode.step_passes

    def positions(*a, **k):
        calls["positions"] = calls.get("positions", 0) + 1
        return real_positions(*a, **k)

    def passes(*a, **k):
        calls["settings"] = calls.get("settings", 0) + 1
        return real_settings(*a, **k)

    monkeypatch.setattr(decode, "positions", positions)
    monkeypatch.setattr(positional_decode, "step_passes", passes)
    shared = _decode_step(model, calls)
    assert calls == {"positions": 1, "settings": 1}  # four layers, one build
    monkeypatch.setattr(decode, "per_forward", lambda anchor, layer, key, held, build: build())
    per_layer = _decode_step(model, calls)
    assert calls == {"positions": 4, "settings": 4}
    torch.testing.assert_close(shared, per_layer, atol=0, rtol=0)


def test_parameters_changed_in_place_are_read_even_with_the_same_tensors():
    """The same mask and position tensors (one forward's anchors) with the layer's RoPE dict changed in place: the
    step is built again from the new parameters."""
    _, model = method_model("llama", "self_extend")
    attn = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 1, 16, generator=g)
    k, v = torch.randn(1, 4, 60, 16, generator=g), torch.randn(1, 4, 60, 16, generator=g)
    mask = torch.ones(1, 1, 1, 60, dtype=torch.bool)
    kwargs = {"position_ids": torch.tensor([[59]])}
    params = attn.config.rope_parameters
    with torch.no_grad():
        before = positional_decode.decode_forward(attn, q, k, v, mask, 0.0, 0.25, kwargs)[0]
        params["group_size"] = 5
        after = positional_decode.decode_forward(attn, q, k, v, mask, 0.0, 0.25, kwargs)[0]
        decode._FORWARD[0] = None
        fresh = positional_decode.decode_forward(attn, q, k, v, mask, 0.0, 0.25, kwargs)[0]
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)


def test_generate_under_inference_mode_equals_no_grad():
    _, model = method_model("llama", "self_extend", num_hidden_layers=3)
    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(ids)
    am[1, :4] = 0
    kw = dict(attention_mask=am, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
    with torch.inference_mode():
        out = model.generate(ids, **kw)
    assert torch.equal(out, ref)


def test_layers_with_other_shapes_or_masks_get_their_own_values(monkeypatch):
    """One forward's anchor shared by layers whose caches differ in length (or whose masks differ, as Gemma3's sliding
    and full layers): each shape and mask builds its own positions and settings."""
    _, model = method_model("llama", "self_extend", num_hidden_layers=3)
    built = []
    real = positional_decode._build_step
    monkeypatch.setattr(positional_decode, "_build_step", lambda *a: built.append(a[4].shape) or real(*a))
    g = torch.Generator().manual_seed(1)
    pos = torch.tensor([[79]])
    q = torch.randn(1, 4, 1, 16, generator=g)
    outs = []
    with torch.no_grad():
        for layer, kv in ((0, 40), (1, 80), (2, 80)):
            k, v = torch.randn(1, 4, kv, 16, generator=g), torch.randn(1, 4, kv, 16, generator=g)
            mask = torch.ones(1, 1, 1, kv, dtype=torch.bool)
            attn = model.model.layers[layer].self_attn
            outs.append(positional_decode.decode_forward(attn, q, k, v, mask, 0.0, 0.25, {"position_ids": pos})[0])
            decode._FORWARD[0], kept = None, decode._FORWARD[0]
            fresh = positional_decode.decode_forward(attn, q, k, v, mask, 0.0, 0.25, {"position_ids": pos})[0]
            decode._FORWARD[0] = kept
            torch.testing.assert_close(outs[-1], fresh, atol=0, rtol=0)
    assert len(built) == 3 + 3  # every call had another shape or mask (each once more for the fresh reference)


def test_hybrid_layers_share_per_mask():
    """Gemma3 (sliding and full layers, two masks): one positions build per mask and step, not one per layer."""
    types = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    _, model = method_model("gemma3", "self_extend", num_hidden_layers=6, layer_types=types)
    calls: dict = {}
    real = decode.positions

    def positions(*a, **k):
        calls["positions"] = calls.get("positions", 0) + 1
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode, "positions", positions)
        _decode_step(model, calls)
    assert calls == {"positions": 2}  # six layers, two masks
