import pytest
import torch
import transformers

from longctx_plugins.ops import rope as rope_ops

from .conftest import ROPE_MODELS, inv_freqs, outputs, tiny_config, tiny_model

NESTED = {"gemma3", "modernbert"}


def rope_params(model_type, rope_type, factor):
    cfg = tiny_config(model_type)
    params = cfg.rope_parameters
    if model_type in NESTED:  # per-layer: change the global (full) layers, keep the local ones
        new = {k: dict(v) for k, v in params.items()}
        new["full_attention"].update(rope_type=rope_type, factor=factor)
        return new
    return {**params, "rope_type": rope_type, "factor": factor}


def head_dim(cfg):
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def theta_of(cfg, layer="full_attention"):
    p = cfg.rope_parameters
    return (p[layer] if layer in p else p)["rope_theta"]


@pytest.mark.parametrize("model_type", ROPE_MODELS)
@pytest.mark.parametrize("rope_type", ["pi", "ntk"])
def test_matrix_forward_and_frequencies(model_type, rope_type):
    factor = 4.0
    model = tiny_model(model_type, rope_parameters=rope_params(model_type, rope_type, factor))
    cfg = model.config
    d = int(
        head_dim(cfg)
        * (cfg.rope_parameters.get("partial_rotary_factor", 1.0) if "rope_type" in cfg.rope_parameters else 1.0)
    )
    base = theta_of(cfg)
    expected = (
        rope_ops.pi_inv_freq(d, base, factor)
        if rope_type == "pi"
        else rope_ops.default_inv_freq(d, base * factor ** (d / (d - 2)))
    )
    freqs = inv_freqs(model)
    key = next(k for k in freqs if "full_attention" in k) if model_type in NESTED else next(iter(freqs))
    torch.testing.assert_close(freqs[key].float().cpu(), expected, rtol=1e-6, atol=0)
    if model_type in NESTED:  # local layers untouched
        local = next(k for k in freqs if "sliding_attention" in k)
        torch.testing.assert_close(freqs[local], rope_ops.default_inv_freq(d, theta_of(cfg, "sliding_attention")))
    ids = torch.randint(3, 100, (2, 24))
    with torch.no_grad():
        out = outputs(model, input_ids=ids)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model_type", ROPE_MODELS)
@pytest.mark.parametrize("rope_type", ["pi", "ntk"])
def test_factor_one_is_default_rope(model_type, rope_type):
    default = tiny_model(model_type)
    plugin = tiny_model(model_type, rope_parameters=rope_params(model_type, rope_type, 1.0))
    plugin.load_state_dict(default.state_dict())
    for k, v in inv_freqs(default).items():
        assert torch.equal(inv_freqs(plugin)[k], v)
    ids = torch.randint(3, 100, (2, 30))
    with torch.no_grad():
        assert torch.equal(outputs(plugin, input_ids=ids), outputs(default, input_ids=ids))


def test_ntk_formula_uses_model_theta():
    assert rope_ops.ntk_base(10_000.0, 8.0, 64) == pytest.approx(10_000 * 8 ** (64 / 62))
    cfg = tiny_config("llama", rope_parameters={"rope_type": "ntk", "factor": 2.0, "rope_theta": 500_000.0})
    inv, scale = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["ntk"](cfg)
    d = 16
    assert scale == 1.0
    torch.testing.assert_close(inv, 1.0 / (500_000.0 * 2 ** (d / (d - 2))) ** (torch.arange(0, d, 2).float() / d))


def test_pi_equals_transformers_linear():
    a = tiny_model("llama", rope_parameters={"rope_type": "pi", "factor": 3.0})
    b = tiny_model("llama", rope_parameters={"rope_type": "linear", "factor": 3.0})
    assert torch.equal(inv_freqs(a)["model.rotary_emb.inv_freq"], inv_freqs(b)["model.rotary_emb.inv_freq"])
    ids = torch.randint(3, 100, (1, 40))
    with torch.no_grad():
        assert torch.equal(outputs(a, input_ids=ids), outputs(b, input_ids=ids))


def test_legacy_rope_scaling_dict():
    cfg = tiny_config("llama", rope_scaling={"type": "ntk", "factor": 2.0}, rope_theta=50_000.0)
    assert cfg.rope_parameters["rope_type"] == "ntk"
    assert cfg.rope_parameters["rope_theta"] == 50_000.0
    model = transformers.LlamaForCausalLM(cfg)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, rope_ops.ntk_inv_freq(16, 50_000.0, 2.0))


def test_save_reload_and_from_pretrained_override(tmp_path):
    model = tiny_model("llama", rope_parameters={"rope_type": "ntk", "factor": 4.0})
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.rope_parameters["rope_type"] == "ntk"
    ids = torch.randint(3, 100, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(outputs(again, input_ids=ids), outputs(model, input_ids=ids))
    plain = tiny_model("llama")
    plain.save_pretrained(tmp_path / "plain")
    pi = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "plain", rope_parameters={"rope_type": "pi", "factor": 2.0, "rope_theta": 10000.0}
    )
    torch.testing.assert_close(pi.model.rotary_emb.inv_freq, rope_ops.pi_inv_freq(16, 10000.0, 2.0))


def _cause(exc):
    """transformers' strict configs wrap validator errors; the ValueError (KeyError: a missing key) is the cause."""
    while exc is not None and not isinstance(exc, (ValueError, KeyError)):
        exc = exc.__cause__
    return exc


@pytest.mark.parametrize("rope_type", ["pi", "ntk"])
@pytest.mark.parametrize(
    "factor,needle",
    [
        (0.5, ">= 1.0"),
        ("4", "must be a number"),
        (None, "missing 'factor'"),
        (float("nan"), "must be a number"),
        (True, "must be a number"),
    ],
)
def test_bad_factor_raises_valueerror_naming_key(rope_type, factor, needle):
    params = {"rope_type": rope_type}
    if factor is not None:
        params["factor"] = factor
    with pytest.raises(Exception) as info:
        tiny_config("llama", rope_parameters=params)
    err = _cause(info.value)
    assert isinstance(err, KeyError if factor is None else ValueError)  # transformers' rule: missing key = KeyError
    assert "'factor'" in str(err) and needle in str(err)


def test_unknown_keys_warn():
    with pytest.warns(UserWarning, match=r"does not use: \['alpha'\]"):
        tiny_config("llama", rope_parameters={"rope_type": "ntk", "factor": 2.0, "alpha": 3})


def test_checkpoint_with_plugin_type_needs_the_import(tmp_path):
    import subprocess
    import sys

    tiny_model("llama", rope_parameters={"rope_type": "ntk", "factor": 4.0}).save_pretrained(tmp_path)
    code = f"import transformers; transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0 and "ntk" in res.stderr
    res = subprocess.run([sys.executable, "-c", "import longctx_plugins;" + code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("model_type", ["gemma3", "modernbert", "llama"])
def test_nested_rope_keys_fallback_matches_transformers(model_type):
    """transformers 5.17 has no ``config.nested_rope_parameter_keys``; the fallback (keys that are layer types) must
    find the same keys as the method, or ``extend`` writes flat keys into a nested dict (5.17: AttributeError in
    ``validate_rope``)."""
    import types

    from longctx_plugins._compat import nested_rope_keys

    cfg = tiny_config(model_type)
    params = cfg.rope_parameters
    without_method = types.SimpleNamespace(layer_types=getattr(cfg, "layer_types", None))
    if hasattr(cfg, "nested_rope_parameter_keys"):
        expected = cfg.nested_rope_parameter_keys(params)
    else:  # transformers 5.17: what later releases return for these configs
        expected = [k for k in params if k in ("full_attention", "sliding_attention")] if model_type in NESTED else []
    assert nested_rope_keys(without_method, params) == expected == nested_rope_keys(cfg, params)
    assert bool(expected) == (model_type in NESTED)
