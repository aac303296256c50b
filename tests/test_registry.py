import os
import subprocess
import sys

import pytest
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RotaryEmbeddingConfigMixin

import longctx_plugins


def snapshot():
    return (
        dict(AttentionInterface._global_mapping),
        dict(AttentionMaskInterface._global_mapping),
        dict(ROPE_INIT_FUNCTIONS),
        {k: v for k, v in vars(RotaryEmbeddingConfigMixin).items() if k.startswith("_validate_")},
    )


def test_import_registers_everything():
    assert longctx_plugins.is_registered()
    for name in ("anchor", "self_extend"):
        assert name in AttentionInterface._global_mapping
        assert name in AttentionMaskInterface._global_mapping
    for name in ("pi", "ntk", "self_extend"):
        assert name in ROPE_INIT_FUNCTIONS
        assert hasattr(RotaryEmbeddingConfigMixin, f"_validate_{name}_rope_parameters")


def test_register_twice_changes_nothing():
    before = snapshot()
    longctx_plugins.register()
    longctx_plugins.register()
    assert snapshot() == before


def test_unregister_restores_exactly_and_roundtrips():
    registered = snapshot()
    longctx_plugins.unregister()
    try:
        gone = snapshot()
        for name in ("anchor", "self_extend"):
            assert name not in gone[0] and name not in gone[1]
        for name in ("pi", "ntk", "self_extend"):
            assert name not in gone[2]
            assert f"_validate_{name}_rope_parameters" not in gone[3]
        longctx_plugins.unregister()  # when not registered: no error, no change
        assert snapshot() == gone
    finally:
        longctx_plugins.register()
    assert snapshot() == registered


def test_builtin_names_are_never_overwritten():
    longctx_plugins.unregister()
    sentinel = object()
    ROPE_INIT_FUNCTIONS["pi"] = sentinel  # somebody else's "pi"
    try:
        with pytest.warns(UserWarning, match="'pi' already exists in transformers and is not overwritten"):
            longctx_plugins.register()
        assert ROPE_INIT_FUNCTIONS["pi"] is sentinel
        assert "ntk" in ROPE_INIT_FUNCTIONS
        longctx_plugins.unregister()
        assert ROPE_INIT_FUNCTIONS["pi"] is sentinel  # restored exactly, not deleted
    finally:
        ROPE_INIT_FUNCTIONS.pop("pi", None)
        longctx_plugins.unregister()
        longctx_plugins.register()
    assert ROPE_INIT_FUNCTIONS["pi"] is not sentinel
    # built-ins stay what transformers made them
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward


def test_disable_env_skips_registration():
    code = (
        "import longctx_plugins as p; from transformers import AttentionInterface as A;"
        "from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS as R;"
        "print(p.is_registered(), 'anchor' in A._global_mapping, 'ntk' in R)"
    )
    env = {**os.environ, "LONGCTX_PLUGINS_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_version_check_messages():
    from longctx_plugins import _compat

    with pytest.raises(ImportError, match="transformers >= 5.17"):
        _compat.check_versions("2.13.0", "4.57.0")
    with pytest.warns(RuntimeWarning, match="tested with transformers"):
        _compat.check_versions("2.13.0", "6.1.0")
    with pytest.raises(ImportError, match="torch >= 2.5"):
        _compat.check_versions("2.4.1", "5.24.0")
    _compat.check_versions("2.13.0+cpu", "5.24.0")  # the installed pair passes
