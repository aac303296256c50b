"""Uncompiled decode steps build what every layer shares (positions, masks, settings, the kernel's inputs) once per
forward pass (:func:`longctx_plugins.attention.decode.per_forward`): once per forward, rebuilt for anything new, and
with the same results as building it in every layer."""

from __future__ import annotations

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
    assert [decode.per_forward((mask, pos), "k", build) for _ in range(3)] == [1, 1, 1]
    assert decode.per_forward((mask, pos), "other", build) == 2  # another key: its own value
    assert decode.per_forward((mask, pos.clone()), "k", build) == 3  # another position tensor: another forward
    same = decode.per_forward((mask, pos), "k", build)
    assert same == 4  # back to the first tensors: the slot holds one forward only, built again
    pos.add_(1)  # changed in place (its version moves): built again
    assert decode.per_forward((mask, pos), "k", build) == 5
    mask[..., 0] = False
    assert decode.per_forward((mask, pos), "k", build) == 6
    assert [decode.per_forward((None, None), "k", build) for _ in range(2)] == [7, 8]  # nothing identifies it


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
    monkeypatch.setattr(decode, "per_forward", lambda anchors, key, build: build())
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
