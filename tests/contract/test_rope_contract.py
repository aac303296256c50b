"""Exactness contract, RoPE models (tiny random encoder and decoder, trained window 64, saved with a real tokenizer):
the embedder's entry points, ``extend()`` on decoders and encoders, and a saved-and-reloaded extended checkpoint x
every method x {one text, equal lengths, mixed lengths with padding} x {inside the window, beyond it}.

The reference reads each text alone through an attention that applies the method's rotation distance per pair,
written from its definition (tests/contract/definitions.py), with explicit positions and mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from longctx_plugins import LongContextEmbedder, extend

from .conftest import ROPE_SCENARIOS, ROPE_TARGET, assert_same_vectors, scenario_texts

ENCODER_METHODS = ["none", "pi", "ntk", "self_extend"]
DECODER_METHODS = ENCODER_METHODS + ["dca", "string"]
SCENARIOS = list(ROPE_SCENARIOS)
# method none reads at most the trained window: beyond it, it truncates (tested in tests/test_embedder.py)
CASES = [
    (kind, m, s)
    for kind, methods in (("encoder", ENCODER_METHODS), ("decoder", DECODER_METHODS))
    for m in methods
    for s in SCENARIOS
    if m != "none" or s.startswith("inside")
]


def _params(model) -> dict:
    params = dict(model.config.rope_parameters)
    return params if params.get("rope_type") not in (None, "default") else {}


def _reference_vectors(rope_reference, kind, method, params, ids_list):
    out = []
    for ids in ids_list:
        states = rope_reference(kind, method, params, ids).double().numpy()
        v = states[-1] if kind == "decoder" else states.mean(0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


@pytest.fixture(scope="module")
def embedders(rope_checkpoints):
    cache: dict = {}

    def get(kind: str, method: str) -> LongContextEmbedder:
        if (kind, method) not in cache:
            cache[(kind, method)] = LongContextEmbedder(
                str(rope_checkpoints[kind]), method=method, target_length=ROPE_TARGET, device="cpu"
            )
        return cache[(kind, method)]

    return get


@pytest.mark.filterwarnings("ignore:string with")
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_the_references_tell_methods_apart(kind, embedders, make_text, rope_reference):
    """Beyond the window every method's reference differs from the unextended model's (the contract can fail)."""
    ids = embedders(kind, "none").tokenize([make_text(ROPE_SCENARIOS["beyond-one"][0], 5)])[0]
    plain = rope_reference(kind, "none", {}, ids)
    for method in (ENCODER_METHODS if kind == "encoder" else DECODER_METHODS)[1:]:
        params = _params(embedders(kind, method).model)
        assert (rope_reference(kind, method, params, ids) - plain).abs().max() > 1e-3, method


@pytest.mark.filterwarnings("ignore:string with")
@pytest.mark.parametrize("kind,method,scenario", CASES)
def test_embedder_entry_points(kind, method, scenario, embedders, make_text, rope_reference):
    emb = embedders(kind, method)
    texts = scenario_texts(make_text, ROPE_SCENARIOS, scenario)
    ids = emb.tokenize(texts)
    expected = _reference_vectors(rope_reference, kind, method, _params(emb.model), ids)
    for call in (emb.encode, emb.encode_queries, emb.encode_documents):
        assert_same_vectors(call(texts), expected)
    for text, got in zip(texts, emb.encode_spans_many(texts, [[(0, len(t))] for t in texts])):
        states, starts = emb.token_states(text)
        assert_same_vectors(got, emb.encode_spans(text, [(0, len(text))]))
        ref = rope_reference(kind, method, _params(emb.model), emb.tokenize([text])[0]).double().numpy()
        np.testing.assert_allclose(states.cpu().numpy(), ref, atol=2e-5, rtol=0)


def _padded(ids_list, pad_id):
    n = max(len(x) for x in ids_list)
    input_ids = torch.full((len(ids_list), n), pad_id)
    mask = torch.zeros(len(ids_list), n, dtype=torch.long)
    for r, x in enumerate(ids_list):  # right padding: positions 0..n-1 of every row are its own
        input_ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    return input_ids, mask


def _check_model_outputs(model, kind, method, scenario, make_text, tokenizer, rope_reference):
    texts = scenario_texts(make_text, ROPE_SCENARIOS, scenario)
    ids_list = [tokenizer(t)["input_ids"] for t in texts]
    input_ids, mask = _padded(ids_list, tokenizer.pad_token_id)
    with torch.no_grad():
        if len(set(map(len, ids_list))) == 1:  # no padding: called as users do, without a mask
            out = model(input_ids=input_ids)
        else:
            out = model(input_ids=input_ids, attention_mask=mask)
    got = out.logits if kind.endswith("-lm") else out.last_hidden_state
    for r, ids in enumerate(ids_list):
        ref = rope_reference(kind, method, _params(model), ids)
        torch.testing.assert_close(got[r, : len(ids)], ref.to(got.dtype), atol=5e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:string with")
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize(
    "kind,method", [("decoder-lm", m) for m in DECODER_METHODS[1:]] + [("encoder", m) for m in ENCODER_METHODS[1:]]
)
def test_extend_on_models(kind, method, scenario, rope_checkpoints, make_text, tokenizer, rope_reference):
    cls = AutoModelForCausalLM if kind.endswith("-lm") else AutoModel
    model = extend(cls.from_pretrained(rope_checkpoints[kind]).eval(), method, ROPE_TARGET)
    _check_model_outputs(model, kind, method, scenario, make_text, tokenizer, rope_reference)


@pytest.mark.filterwarnings("ignore:string with")
@pytest.mark.parametrize("method", DECODER_METHODS[1:])
def test_saved_extended_checkpoint_reloads_exactly(
    method, rope_checkpoints, tmp_path, make_text, tokenizer, rope_reference
):
    model = extend(AutoModelForCausalLM.from_pretrained(rope_checkpoints["decoder-lm"]).eval(), method, ROPE_TARGET)
    model.save_pretrained(tmp_path)
    kwargs = {"attn_implementation": method} if method in ("self_extend", "dca", "string") else {}
    again = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs).eval()
    assert again.config.rope_parameters == model.config.rope_parameters
    for scenario in ("inside-one", "beyond-mixed"):
        _check_model_outputs(again, "decoder-lm", method, scenario, make_text, tokenizer, rope_reference)
