"""Exactness contract through the frameworks and saved checkpoints: LangChain's and LlamaIndex's query, document and
span calls, and a saved extended MiniLM called as users call it (``model(**tokenizer(...))``, without a mask, through
sentence-transformers), against the same definition references as tests/contract/test_ape_contract.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from transformers import AutoModel

from longctx_plugins import extend
from longctx_plugins.embedder import default_model_path
from longctx_plugins.positions.ape import attach

from .conftest import APE_SCENARIOS, APE_TARGET, ROPE_SCENARIOS, ROPE_TARGET, assert_same_vectors, scenario_texts

METHODS = ["pi", "gp", "rp", "pcw", "none"]
SCENARIOS = ["inside-one", "inside-mixed", "beyond-one", "beyond-mixed"]


def _expected(method, texts, scenario, ape_reference, sentence_transformer):
    if scenario.startswith("inside"):
        return sentence_transformer.encode(texts, normalize_embeddings=True)
    return np.stack([ape_reference["vector"](method, t) for t in texts])


@pytest.mark.filterwarnings("ignore:.*truncated")
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", METHODS)
def test_langchain_and_llama_index_calls(method, scenario, make_text, ape_reference, sentence_transformer):
    from langchain_longctx import LongContextEmbeddings
    from llama_index.embeddings.longctx import LongContextEmbedding

    texts = scenario_texts(make_text, APE_SCENARIOS, scenario)
    expected = _expected(method, texts, scenario, ape_reference, sentence_transformer)
    lc = LongContextEmbeddings(method=method, target_length=APE_TARGET, device="cpu")
    li = LongContextEmbedding(method=method, target_length=APE_TARGET, device="cpu")
    assert_same_vectors([lc.embed_query(texts[0])], expected[:1])
    assert_same_vectors(lc.embed_documents(texts), expected)
    assert_same_vectors([asyncio.run(lc.aembed_query(texts[0]))], expected[:1])
    assert_same_vectors([li.get_query_embedding(texts[0])], expected[:1])
    assert_same_vectors(li.get_text_embedding_batch(texts), expected)
    assert_same_vectors([asyncio.run(li.aget_query_embedding(texts[0]))], expected[:1])


@pytest.mark.parametrize("method", ["pi", "gp", "rp"])
def test_framework_span_calls(method, make_text, ape_reference, tokenizer):
    from langchain_longctx import LongContextEmbeddings
    from llama_index.embeddings.longctx import LongContextEmbedding

    lc = LongContextEmbeddings(method=method, target_length=APE_TARGET, device="cpu")
    li = LongContextEmbedding(method=method, target_length=APE_TARGET, device="cpu")
    for text in scenario_texts(make_text, APE_SCENARIOS, "beyond-mixed"):
        states = ape_reference["states"](method, text).double().numpy()
        enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        starts = np.where(
            np.asarray(enc["special_tokens_mask"]) == 1, -1, np.asarray([a for a, _ in enc["offset_mapping"]])
        )  # special tokens belong to no span
        cut = text.index(" ", len(text) // 3)
        spans = [(0, cut), (cut + 1, len(text))]
        rows = [(starts >= a) & (starts < b) for a, b in spans]
        expected = np.stack([states[r].mean(0) for r in rows])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert_same_vectors(lc.embed_document_spans(text, spans), expected)
        assert_same_vectors(li.get_span_embeddings(text, spans), expected)


@pytest.mark.filterwarnings("ignore:string with")
@pytest.mark.parametrize("method", ["self_extend", "dca", "string", "ntk"])
def test_framework_calls_on_a_rope_decoder(method, rope_checkpoints, make_text, rope_reference, tokenizer):
    from langchain_longctx import LongContextEmbeddings
    from llama_index.embeddings.longctx import LongContextEmbedding

    texts = scenario_texts(make_text, ROPE_SCENARIOS, "beyond-mixed") + [make_text(9, 1)]
    path = str(rope_checkpoints["decoder"])
    lc = LongContextEmbeddings(model_name=path, method=method, target_length=ROPE_TARGET, device="cpu")
    params = dict(lc.embedder.model.config.rope_parameters)
    expected = []
    for t in texts:
        v = rope_reference("decoder", method, params, tokenizer(t)["input_ids"])[-1].double().numpy()
        expected.append(v / np.linalg.norm(v))
    expected = np.stack(expected)
    assert_same_vectors(lc.embed_documents(texts), expected)
    assert_same_vectors([lc.embed_query(texts[-1])], expected[-1:])
    li = LongContextEmbedding(model_name=path, method=method, target_length=ROPE_TARGET, device="cpu")
    assert_same_vectors(li.get_text_embedding_batch(texts), expected)
    assert_same_vectors([li.get_query_embedding(texts[0])], expected[:1])


@pytest.fixture(scope="module")
def saved_pi_checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("minilm-pi")
    model = extend(AutoModel.from_pretrained(default_model_path()).eval(), "pi", target_length=APE_TARGET)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _mean(hidden, mask):
    m = mask[..., None].to(hidden.dtype)
    v = ((hidden * m).sum(1) / m.sum(1)).double().numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("scenario", ["inside-one", "inside-mixed", "beyond-one", "beyond-equal", "beyond-mixed"])
def test_saved_extended_checkpoint_as_users_call_it(scenario, saved_pi_checkpoint, tokenizer, make_text, ape_reference):
    from sentence_transformers import SentenceTransformer

    from longctx_plugins import LongContextEmbedder

    texts = scenario_texts(make_text, APE_SCENARIOS, scenario)
    expected = np.stack([ape_reference["vector"]("pi", t) for t in texts])
    model = attach(AutoModel.from_pretrained(saved_pi_checkpoint).eval())
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert_same_vectors(_mean(model(**batch).last_hidden_state, batch["attention_mask"]), expected)
        if len(set(map(len, tokenizer(texts)["input_ids"]))) == 1:  # no padding: no mask at all
            hidden = model(input_ids=batch["input_ids"]).last_hidden_state
            assert_same_vectors(_mean(hidden, batch["attention_mask"]), expected)
    st = SentenceTransformer(str(saved_pi_checkpoint), device="cpu")
    attach(st[0].auto_model)
    st.max_seq_length = APE_TARGET
    assert_same_vectors(st.encode(texts, normalize_embeddings=True), expected)
    emb = LongContextEmbedder(str(saved_pi_checkpoint), device="cpu")
    assert emb.method == "pi"
    assert_same_vectors(emb.encode(texts), expected)
