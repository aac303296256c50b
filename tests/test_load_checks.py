"""Configurations are checked where users pass them: ``from_pretrained`` keyword arguments (``rope_parameters=``
and the legacy ``rope_scaling=``), a saved ``config.json``, a config built in code and ``extend()`` all go through the
same validators, at load time, with messages that name the key, the value and the fix."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from longctx_plugins import AnchorPackingCollator, extend
from longctx_plugins.attention.support import UnsupportedModelError

from .conftest import tiny_model

BAD = [  # (rope_parameters, attention, what the error must say)
    ({"rope_type": "ntk", "factor": 0}, None, r"\['factor'\] for rope_type='ntk' must be >= 1.0, got 0"),
    ({"rope_type": "ntk", "factor": -1}, None, r"\['factor'\] for rope_type='ntk' must be >= 1.0, got -1"),
    ({"rope_type": "pi", "factor": -2}, None, r"\['factor'\] for rope_type='pi' must be >= 1.0, got -2"),
    ({"rope_type": "pi", "factor": "two"}, None, r"\['factor'\] for rope_type='pi' must be a number >= 1.0, got 'two'"),
    ({"rope_type": "self_extend", "group_size": -4, "window": 8}, "self_extend", r"\['group_size'\].*got -4"),
    ({"rope_type": "self_extend", "group_size": 0, "window": 8}, "self_extend", r"\['group_size'\].*got 0"),
    (
        {"rope_type": "self_extend", "group_size": 4, "windw": 8},
        "self_extend",
        r"missing 'window'.*does not use: \['windw'\]; a misspelling",
    ),
    ({"rope_type": "dca", "chunk_size": -1, "local_window": 4}, "dca", r"\['chunk_size'\].*got -1"),
]


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_model("llama", max_position_embeddings=64).save_pretrained(path)
    return path


@pytest.mark.parametrize("params,attention,message", BAD)
@pytest.mark.parametrize("via", ["rope_parameters", "rope_scaling"])
def test_from_pretrained_keyword_arguments_are_validated(llama_path, params, attention, message, via):
    kwargs = {via: dict(params)}
    if attention:
        kwargs["attn_implementation"] = attention
    with pytest.raises((ValueError, KeyError), match=message):
        transformers.AutoModelForCausalLM.from_pretrained(llama_path, **kwargs)


@pytest.mark.parametrize("params,attention,message", BAD[:3])
def test_a_saved_config_json_is_validated(llama_path, tmp_path, params, attention, message):
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_path)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {**cfg["rope_parameters"], **params}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=message):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_unknown_keys_are_warned_at_load(llama_path):
    with pytest.warns(UserWarning, match=r"keys it does not use: \['foo'\]"):
        transformers.AutoModelForCausalLM.from_pretrained(
            llama_path, rope_parameters={"rope_type": "pi", "factor": 2.0, "foo": 1}
        )


def test_valid_keyword_arguments_still_load(llama_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        llama_path,
        rope_parameters={"rope_type": "self_extend", "group_size": 4, "window": 16},
        attn_implementation="self_extend",
    )
    assert model.config.rope_parameters["rope_theta"] == 10000.0
    assert torch.isfinite(model(torch.randint(3, 100, (1, 100))).logits).all()


@pytest.mark.parametrize("attention", ["self_extend", "dca", "string"])
def test_a_position_attention_on_a_model_without_its_rope_type_fails(attention):
    bert = tiny_model("bert", attn_implementation=attention)
    with pytest.raises(UnsupportedModelError, match="no RoPE parameters.*extend\\(model, 'pi'"):
        bert(torch.randint(3, 100, (1, 10)))
    llama = tiny_model("llama", attn_implementation=attention)
    with pytest.raises(
        UnsupportedModelError, match=f"needs rope_parameters with rope_type='{attention}'.*rope_type='default'"
    ):
        llama(torch.randint(3, 100, (1, 10)))
    from longctx_plugins.attention.support import check_attention

    with pytest.raises(UnsupportedModelError, match="rope_type='default'"):
        check_attention(llama)


def test_extend_refuses_what_it_cannot_extend():
    with pytest.raises(TypeError, match="takes a loaded transformers model.*got NoneType"):
        extend(None, "pi", 1024)
    model = tiny_model("llama", max_position_embeddings=64)
    for method in ("pi", "self_extend"):
        with pytest.raises(ValueError, match="target_length=1000000000000 is beyond the longest input"):
            extend(model, method, target_length=10**12)


def test_collator_names_bad_features():
    from .test_collator import Tok

    collator = AnchorPackingCollator(Tok(), max_length=16)
    with pytest.raises(ValueError, match=r"feature 0 has no 'input_ids' \(keys: \['text'\]\)"):
        collator([{"text": "hello"}])
    with pytest.raises(ValueError, match="feature 1 must be token ids.*got str 'raw text'"):
        collator([[5, 6], "raw text"])
    batch = collator([torch.tensor([5, 6, 7]), {"input_ids": [8, 9]}])  # tensors and mappings still work
    assert batch["input_ids"][0, :6].tolist() == [1, 5, 6, 7, 8, 9]
