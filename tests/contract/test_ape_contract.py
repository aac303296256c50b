"""Exactness contract, absolute-position embedders (the bundled all-MiniLM-L6-v2, trained window 512): every public
entry point x every method x {one text, equal lengths, mixed lengths with padding} x {inside the window, beyond it}.

Inside the window every method must give sentence-transformers' vectors; beyond it, the vector of the method's
definition (tests/contract/definitions.py) read one text at a time with an explicit mask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from longctx_plugins import LongContextEmbedder

from .conftest import APE_SCENARIOS, APE_TARGET, assert_same_vectors, scenario_texts

METHODS = ["none", "pi", "gp", "rp", "pcw"]
SCENARIOS = list(APE_SCENARIOS)


@pytest.fixture(scope="module")
def embedders():
    cache: dict = {}

    def get(method: str) -> LongContextEmbedder:
        if method not in cache:
            cache[method] = LongContextEmbedder("default", method=method, target_length=APE_TARGET, device="cpu")
        return cache[method]

    return get


def _expected(method, texts, scenario, ape_reference, sentence_transformer):
    if scenario.startswith("inside"):
        return sentence_transformer.encode(texts, normalize_embeddings=True)
    return np.stack([ape_reference["vector"](method, t) for t in texts])


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*truncated.*")  # method none beyond the window: said elsewhere
        return fn(*args)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", METHODS)
def test_encode_entry_points(method, scenario, embedders, make_text, ape_reference, sentence_transformer):
    texts = scenario_texts(make_text, APE_SCENARIOS, scenario)
    expected = _expected(method, texts, scenario, ape_reference, sentence_transformer)
    emb = embedders(method)
    calls = (emb.encode, emb.encode_queries, emb.encode_documents) if scenario.endswith("one") else (emb.encode,)
    for call in calls:
        assert_same_vectors(_quiet(call, texts), expected)
    if scenario.endswith("mixed"):  # a padded batch equals one call per text
        assert_same_vectors(np.stack([_quiet(emb.encode_queries, [t])[0] for t in texts]), expected)


@pytest.mark.parametrize("method", ["pi", "gp", "rp", "pcw"])
def test_the_references_tell_methods_apart(method, make_text, ape_reference):
    """Beyond the window every method's reference differs from the others' (the contract can fail)."""
    text = make_text(APE_SCENARIOS["beyond-one"][0], 3)
    mine = ape_reference["vector"](method, text)
    for other in {"none", "pi", "gp", "rp", "pcw"} - {method}:
        assert float(mine @ ape_reference["vector"](other, text)) < 1 - 1e-4, other


@pytest.mark.parametrize("scenario", ["inside-mixed", "beyond-mixed"])
@pytest.mark.parametrize("method", ["none", "pi", "gp", "rp"])
def test_late_chunking_entry_points(method, scenario, embedders, make_text, ape_reference):
    """token_states, encode_spans(_many) and late_chunk against the definition's token states (texts read whole up
    to target_length; ``none`` reads at most its trained window, so it is checked inside it only)."""
    texts = scenario_texts(make_text, APE_SCENARIOS, scenario)
    if method == "none" and scenario.startswith("beyond"):
        texts = [t for t in texts if len(embedders(method).tokenize([t])[0]) <= 512]
    emb = embedders(method)
    spans_per_text = []
    for text in texts:
        ref_states = ape_reference["states"](method, text).double().numpy()
        states, starts = emb.token_states(text)
        np.testing.assert_allclose(states.cpu().numpy(), ref_states, atol=2e-5, rtol=0)
        cut = text.index(" ", len(text) // 2)
        spans = [(0, len(text)), (0, cut), (cut + 1, len(text))]
        spans_per_text.append(spans)
        expected = []
        for a, b in spans:
            rows = (starts >= a) & (starts < b)
            expected.append(ref_states[rows].mean(0))
        expected = np.stack(expected)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert_same_vectors(emb.encode_spans(text, spans), expected)
    for got, text, spans in zip(emb.encode_spans_many(texts, spans_per_text), texts, spans_per_text):
        assert_same_vectors(got, emb.encode_spans(text, spans))
    for text, chunked in zip(texts, emb.late_chunk(texts, chunk_size=64)):
        assert_same_vectors(chunked["embeddings"], emb.encode_spans(text, chunked["spans"]))


def test_pcw_late_chunking_is_refused_or_exact(embedders, make_text):
    """Parallel context windows change nothing in the model: late chunking with it reads the text like ``none``."""
    text = make_text(90, 7)
    pcw, none = embedders("pcw"), embedders("none")
    assert_same_vectors(pcw.encode_spans(text, [(0, len(text))]), none.encode_spans(text, [(0, len(text))]))
