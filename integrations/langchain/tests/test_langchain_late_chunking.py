"""Late chunking in LangChain: real RecursiveCharacterTextSplitter / InMemoryVectorStore, real offline MiniLM."""

import asyncio

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import CharacterTextSplitter, RecursiveCharacterTextSplitter
from pydantic import ValidationError

from langchain_longctx import (
    LongContextEmbeddings,
    aadd_late_chunked_documents,
    add_late_chunked_documents,
    late_chunk_documents,
)
from longctx_plugins.longembed.synthetic import sotu_documents

# the LlamaIndex tests' configuration: one shared model load for both
CONFIG = dict(target_length=512, overlength="windows", window_overlap=64, model_kwargs={"hidden_dropout_prob": 0.0})

HARBOUR = (
    "Port Elm is a small fishing town on a narrow bay in the north. Its harbour was rebuilt in 1931 after a "
    "winter storm destroyed the old pier.\n\nThe lighthouse keeper of Port Elm collects blue glass bottles "
    "and lines the spiral stairs with them. Every spring the town holds a regatta for wooden boats, and the "
    "winning crew rings the bell at the end of the pier.\n\nThe fish market opens at five in the morning and "
    "closes before noon. Most of the catch is herring and mackerel, sold to restaurants along the coast."
)
ORCHARD = (
    "The Hallow Valley orchard grows forty varieties of apples on terraces above the river. The oldest trees "
    "were planted by a monk who kept bees in clay hives.\n\nIn autumn the orchard presses cider in a stone "
    "mill turned by a water wheel. The head gardener trains pear trees flat against the south wall so they "
    "ripen early.\n\nVisitors may pick cherries in July, but the apple harvest is reserved for the cider. A "
    "small museum in the barn shows grafting knives and old ladders."
)
QUERIES = {
    "Who collects blue glass bottles?": "blue glass bottles",
    "What turns the stone mill that presses the cider?": "water wheel",
    "When can visitors pick cherries?": "cherries in July",
}


def documents():
    return [
        Document(page_content=HARBOUR, metadata={"topic": "harbour", "tags": ["sea"]}),
        Document(page_content=ORCHARD, metadata={"topic": "orchard", "tags": ["fruit"]}),
    ]


@pytest.fixture(scope="module")
def embeddings():
    return LongContextEmbeddings(**CONFIG)


@pytest.fixture(scope="module")
def splitter():
    return RecursiveCharacterTextSplitter(chunk_size=160, chunk_overlap=40)


def test_embed_document_spans_equals_encode_spans(embeddings):
    text = sotu_documents()[0]["text"]  # ~1.6k tokens: read in windows of 512
    assert len(embeddings.embedder.tokenize([text])[0]) > 512
    spans = [(0, 58), (59, 900), (4000, 4500), (len(text) - 300, len(text))]
    got = embeddings.embed_document_spans(text, spans)
    assert isinstance(got, list) and isinstance(got[0], list) and isinstance(got[0][0], float)
    np.testing.assert_allclose(np.array(got), embeddings.embedder.encode_spans(text, spans), rtol=0, atol=1e-6)
    assert asyncio.run(embeddings.aembed_document_spans(text, spans[:1])) == got[:1]


def test_bad_spans_surface_the_core_error(embeddings):
    with pytest.raises(ValueError, match=r"spans\[1\] = \(5, 9999\) lies outside the text"):
        embeddings.embed_document_spans(HARBOUR, [(0, 5), (5, 9999)])
    with pytest.raises(ValueError, match=r"spans\[0\] = \(7, 7\) is empty or reversed"):
        embeddings.embed_document_spans(HARBOUR, [(7, 7)])


def test_late_chunk_documents_follows_add_start_index(embeddings, splitter):
    chunks, vectors = late_chunk_documents(documents(), splitter, embeddings)
    # the same chunks and metadata as LangChain's own split_documents with add_start_index=True
    reference = RecursiveCharacterTextSplitter(chunk_size=160, chunk_overlap=40, add_start_index=True).split_documents(
        documents()
    )
    assert [(c.page_content, c.metadata) for c in chunks] == [(r.page_content, r.metadata) for r in reference]
    assert len(chunks) == len(vectors) >= 6
    for doc in documents():
        mine = [(c, v) for c, v in zip(chunks, vectors) if c.metadata["topic"] == doc.metadata["topic"]]
        spans = [(c.metadata["start_index"], c.metadata["start_index"] + len(c.page_content)) for c, _ in mine]
        assert all(doc.page_content[s:e] == c.page_content for (s, e), (c, _) in zip(spans, mine))
        np.testing.assert_allclose(
            np.array([v for _, v in mine]), embeddings.embedder.encode_spans(doc.page_content, spans), rtol=0, atol=1e-6
        )
    chunks[0].metadata["tags"].append("x")  # metadata is copied, not shared
    assert documents()[0].metadata["tags"] == ["sea"] and chunks[1].metadata["tags"] == ["sea"]


def test_in_memory_vector_store_filled_and_searched(embeddings, splitter):
    store = InMemoryVectorStore(embedding=embeddings)
    ids = add_late_chunked_documents(store, documents(), splitter)
    chunks, vectors = late_chunk_documents(documents(), splitter, embeddings)
    assert len(ids) == len(chunks)
    for id_, vector in zip(ids, vectors):  # stored as computed by late chunking
        assert store.store[id_]["vector"] == vector
    for query, fact in QUERIES.items():
        hit = store.similarity_search(query, k=1)[0]
        assert fact in hit.page_content, query
        source = HARBOUR if hit.metadata["topic"] == "harbour" else ORCHARD
        start = hit.metadata["start_index"]
        assert source[start : start + len(hit.page_content)] == hit.page_content
    # outside add_late_chunked_documents the store embeds as usual (whole texts)
    plain_id = store.add_texts(["A lone sentence."])[0]
    np.testing.assert_allclose(
        store.store[plain_id]["vector"], embeddings.embed_documents(["A lone sentence."])[0], atol=1e-6
    )


def test_async_fill(embeddings, splitter):
    store = InMemoryVectorStore(embedding=embeddings)
    ids = asyncio.run(aadd_late_chunked_documents(store, documents()[:1], splitter, embeddings=embeddings))
    chunks, vectors = late_chunk_documents(documents()[:1], splitter, embeddings)
    assert [store.store[i]["vector"] for i in ids] == vectors


def test_store_and_splitter_checks(embeddings, splitter):
    with pytest.raises(TypeError, match="embeds with DeterministicFakeEmbedding, not LongContextEmbeddings"):
        add_late_chunked_documents(InMemoryVectorStore(DeterministicFakeEmbedding(size=8)), documents(), splitter)
    # a real LangChain splitter that changes the text: pieces re-joined with the literal regex
    changing = CharacterTextSplitter(
        separator=r"\s+", is_separator_regex=True, keep_separator=False, chunk_size=60, chunk_overlap=0
    )
    with pytest.raises(ValueError, match="CharacterTextSplitter returned a chunk that is not part of the document"):
        late_chunk_documents(documents(), changing, embeddings)
    assert late_chunk_documents([Document(page_content="  ")], splitter, embeddings) == ([], [])


def test_precomputed_vectors(embeddings):
    with pytest.raises(ValueError, match="other than the next precomputed ones"):
        with embeddings.precomputed(["a", "b"], [[0.0] * 384, [1.0] * 384]):
            embeddings.embed_documents(["b"])
    with pytest.raises(RuntimeError, match="embedded 1 of the 2 texts"):
        with embeddings.precomputed(["a", "b"], [[0.0] * 384, [1.0] * 384]):
            assert embeddings.embed_documents(["a"]) == [[0.0] * 384]
    with embeddings.precomputed(["a", "b"], [[0.0] * 384, [1.0] * 384]):
        assert embeddings.embed_documents(["a"]) + embeddings.embed_documents(["b"]) == [[0.0] * 384, [1.0] * 384]


def test_fields_reach_the_embedder(embeddings):
    embedder = embeddings.embedder
    assert (embedder.overlength, embedder.window_overlap, embedder.target_length) == ("windows", 64, 512)
    assert embedder.model.config.hidden_dropout_prob == 0.0  # model_kwargs went to from_pretrained (MiniLM: 0.1)
    assert LongContextEmbeddings(**CONFIG).embedder is embedder
    with pytest.raises(ValidationError, match="set the field 'target_length' instead"):
        LongContextEmbeddings(model_kwargs={"target_length": 4})
    with pytest.raises(ValidationError):
        LongContextEmbeddings(overlength="cut")
