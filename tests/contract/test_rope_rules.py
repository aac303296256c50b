"""transformers' validation contract for registered RoPE types, applied to every type this package registers: a
missing required key is a ``KeyError`` (as for ``linear``, ``yarn``, ...), a key of another type alone is a missing
key, an unknown key is warned about, a bad value is a ``ValueError`` naming key and value. The same checks hold
whichever way the parameters arrive (a config built in code, ``config.validate_rope()``, ``from_pretrained``)."""

from __future__ import annotations

import pytest
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RotaryEmbeddingConfigMixin

from longctx_plugins.positions import rope

VALID = {
    "pi": {"factor": 2.0},
    "ntk": {"factor": 2.0},
    "self_extend": {"group_size": 4, "window": 16},
    "dca": {"chunk_size": 40, "local_window": 8},
    "string": {"shift": 40, "local_window": 8},
}
BAD_VALUE = {
    "pi": ("factor", 0),
    "ntk": ("factor", -1.0),
    "self_extend": ("group_size", 0),
    "dca": ("chunk_size", -1),
    "string": ("shift", "many"),
}
OTHER_TYPES_KEYS = ("attention_factor", "beta_fast", "beta_slow", "short_factor", "long_factor", "low_freq_factor")


def test_every_registered_type_is_covered_here():
    assert set(rope.INIT_FUNCTIONS) == set(rope.VALIDATORS) == set(VALID)
    for name in VALID:
        assert name in ROPE_INIT_FUNCTIONS
        assert callable(getattr(RotaryEmbeddingConfigMixin, f"_validate_{name}_rope_parameters", None))


def _config(params: dict):
    config = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=64
    )
    config.rope_parameters = {"rope_theta": 10000.0, **params}
    return config


@pytest.mark.parametrize("name", list(VALID))
def test_missing_keys_are_key_errors(name):
    with pytest.raises(KeyError, match="missing"):
        _config({"rope_type": name}).validate_rope()
    for other in OTHER_TYPES_KEYS:  # transformers' own test: a key of another type does not stand in for ours
        with pytest.raises(KeyError):
            _config({"rope_type": name, other: True}).validate_rope()
    with pytest.raises(KeyError):  # a config built in code
        transformers.LlamaConfig(rope_parameters={"rope_type": name, "rope_theta": 10000.0})


@pytest.mark.parametrize("name", list(VALID))
def test_valid_parameters_pass_and_unknown_keys_warn(name, recwarn):
    _config({"rope_type": name, **VALID[name]}).validate_rope()
    assert not [w for w in recwarn if "rope_parameters" in str(w.message)]
    with pytest.warns(UserWarning, match=r"does not use: \['windw'\]"):
        _config({"rope_type": name, **VALID[name], "windw": 3}).validate_rope()


@pytest.mark.parametrize("name", list(VALID))
def test_bad_values_name_key_and_value(name):
    key, value = BAD_VALUE[name]
    with pytest.raises(ValueError, match=rf"\['{key}'\].*{value!r}"):
        _config({"rope_type": name, **VALID[name], key: value}).validate_rope()
