"""A checkpoint's own RoPE base survives ``from_pretrained(path, rope_parameters=...)`` / ``rope_scaling=...``.

transformers replaces the checkpoint's whole RoPE dict with the override, so ``rope_theta`` would be ``None``; the
plugin types put the checkpoint's value back (or refuse naming it), never a default base.
"""

import json
import warnings

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from .conftest import outputs, tiny_model

THETA = {"llama": 500000.0, "gemma3": 1000000.0, "modernbert": 160000.0}


def saved(tmp_path, model_type):
    if model_type == "llama":
        model = tiny_model("llama", rope_parameters={"rope_type": "default", "rope_theta": THETA["llama"]})
    else:
        model = tiny_model(model_type)  # nested: full_attention theta 1e6 (Gemma3) / 160000 (ModernBERT)
    path = tmp_path / model_type
    model.save_pretrained(path)
    return model, str(path)


def load(path, model_type, **kw):
    cls = AutoModel if model_type == "modernbert" else AutoModelForCausalLM
    return cls.from_pretrained(path, **kw).eval()


def global_params(config):
    p = config.rope_parameters
    return p["full_attention"] if "full_attention" in p else p


OVERRIDES = {
    "ntk": dict(rope_parameters={"rope_type": "ntk", "factor": 1.0}),
    "pi": dict(rope_parameters={"rope_type": "pi", "factor": 1.0}),
    "legacy_pi": dict(rope_scaling={"type": "pi", "factor": 1.0}),
    "legacy_ntk": dict(rope_scaling={"rope_type": "ntk", "factor": 1.0}),
}


@pytest.mark.parametrize("override", sorted(OVERRIDES))
def test_flat_override_keeps_checkpoint_theta(tmp_path, override):
    from longctx_plugins._compat import legacy_rope_scaling_kwarg

    original, path = saved(tmp_path, "llama")
    if "type" in OVERRIDES[override].get("rope_scaling", {}) and not legacy_rope_scaling_kwarg():
        # transformers < 5.22 does not standardise this form when set by from_pretrained: its rotary modules fail
        # for every RoPE type, its own `linear` included (the host's limit; docs/methods.md says so)
        for kwargs in (OVERRIDES[override], dict(rope_scaling={"type": "linear", "factor": 1.0})):
            with pytest.raises(KeyError, match="rope_type"):
                load(path, "llama", **kwargs)
        return
    model = load(path, "llama", **OVERRIDES[override])
    assert global_params(model.config)["rope_theta"] == THETA["llama"]
    ids = torch.randint(3, 100, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(outputs(model, input_ids=ids), outputs(original, input_ids=ids), rtol=0, atol=1e-5)
    # the restored value is what gets saved again
    model.save_pretrained(tmp_path / "again")
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"] == THETA["llama"]


POSITION_OVERRIDES = {
    "self_extend": {"group_size": 4, "window": 32},
    "dca": {"chunk_size": 32, "local_window": 8},
    "string": {"shift": 16, "local_window": 4},
}


def test_every_plugin_rope_type_is_covered():
    from longctx_plugins.positions import catalog, rope_methods
    from longctx_plugins.positions.rope import INIT_FUNCTIONS
    from longctx_plugins.positions.rope_config import PLUGIN_TYPES

    assert set(PLUGIN_TYPES) == set(INIT_FUNCTIONS) == {"pi", "ntk"} | set(POSITION_OVERRIDES)
    # the light method table (no torch import) names the same RoPE methods
    assert set(catalog.METHODS_BY_TYPE["rope"]) == {"none", *PLUGIN_TYPES}
    assert set(rope_methods.ROPE_METHODS) <= set(PLUGIN_TYPES)


@pytest.mark.parametrize("method", sorted(POSITION_OVERRIDES))
def test_position_method_override_inside_window_equals_checkpoint(tmp_path, method):
    original, path = saved(tmp_path, "llama")
    model = load(
        path, "llama", attn_implementation=method, rope_parameters={"rope_type": method, **POSITION_OVERRIDES[method]}
    )
    assert global_params(model.config)["rope_theta"] == THETA["llama"]
    ids = torch.randint(3, 100, (1, 20))  # inside the window: unextended attention
    with torch.no_grad():
        torch.testing.assert_close(outputs(model, input_ids=ids), outputs(original, input_ids=ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gemma3", "modernbert"])
@pytest.mark.parametrize("rope_type", ["ntk", "pi"])
def test_nested_override_keeps_each_layer_theta(tmp_path, model_type, rope_type):
    original, path = saved(tmp_path, model_type)
    sliding = dict(original.config.rope_parameters["sliding_attention"])
    model = load(
        path,
        model_type,
        rope_parameters={"full_attention": {"rope_type": rope_type, "factor": 1.0}, "sliding_attention": sliding},
    )
    assert model.config.rope_parameters["full_attention"]["rope_theta"] == THETA[model_type]
    ids = torch.randint(3, 100, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(outputs(model, input_ids=ids), outputs(original, input_ids=ids), rtol=0, atol=1e-5)


def test_unrecoverable_theta_is_an_error_that_says_how(tmp_path):
    from transformers import LlamaConfig

    _, path = saved(tmp_path, "llama")
    saved_config = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").unlink()  # the checkpoint's own config can no longer be read back
    config = LlamaConfig(**{k: v for k, v in saved_config.items() if k != "rope_parameters"})
    config.rope_parameters = {"rope_type": "ntk", "factor": 2.0}  # what an override leaves: no rope_theta
    config._name_or_path = path
    with pytest.raises(ValueError, match=r"no 'rope_theta'.*'rope_theta':.*extend\(model, 'ntk'"):
        AutoModelForCausalLM.from_config(config)


def test_replacing_a_checkpoint_scaling_type_says_so(tmp_path):
    model = tiny_model("llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": THETA["llama"]})
    model.save_pretrained(tmp_path / "scaled")
    with pytest.warns(UserWarning, match=r"rope_type='linear'.*replaced by rope_type='ntk'"):
        loaded = load(str(tmp_path / "scaled"), "llama", rope_parameters={"rope_type": "ntk", "factor": 2.0})
    assert global_params(loaded.config)["rope_theta"] == THETA["llama"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an override of the same base type, or a default checkpoint: silent
        load(saved(tmp_path, "llama")[1], "llama", rope_parameters={"rope_type": "ntk", "factor": 2.0})
