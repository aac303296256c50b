"""Late chunking in LlamaIndex: real SentenceSplitter / IngestionPipeline / VectorStoreIndex, real offline MiniLM."""

import asyncio
import re

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import NodeParser, SentenceSplitter, TextSplitter, TokenTextSplitter
from llama_index.core.schema import NodeRelationship, TextNode

from llama_index.embeddings.longctx import LateChunkingNodeParser, LongContextEmbedding, ModelTokens
from longctx_plugins.longembed.synthetic import sotu_documents

# one model load for every test here (and the LangChain ones: same configuration, same shared embedder)
CONFIG = dict(target_length=512, overlength="windows", window_overlap=64, model_kwargs={"hidden_dropout_prob": 0.0})

HARBOUR = (
    "Port Elm is a small fishing town on a narrow bay in the north. Its harbour was rebuilt in 1931 after a "
    "winter storm destroyed the old pier. The lighthouse keeper of Port Elm collects blue glass bottles and "
    "lines the spiral stairs with them. Every spring the town holds a regatta for wooden boats, and the "
    "winning crew rings the bell at the end of the pier. The fish market opens at five in the morning and "
    "closes before noon. Most of the catch is herring and mackerel, sold to restaurants along the coast."
)
ORCHARD = (
    "The Hallow Valley orchard grows forty varieties of apples on terraces above the river. The oldest trees "
    "were planted by a monk who kept bees in clay hives. In autumn the orchard presses cider in a stone mill "
    "turned by a water wheel. The head gardener trains pear trees flat against the south wall so they ripen "
    "early. Visitors may pick cherries in July, but the apple harvest is reserved for the cider. A small "
    "museum in the barn shows grafting knives and old ladders."
)
QUERIES = {
    "Who collects blue glass bottles?": "blue glass bottles",
    "What turns the stone mill that presses the cider?": "water wheel",
    "When can visitors pick cherries?": "cherries in July",
}


def short_documents():
    return [
        Document(text=HARBOUR, doc_id="harbour", metadata={"topic": "harbour"}),
        Document(text=ORCHARD, doc_id="orchard", metadata={"topic": "orchard"}),
    ]


@pytest.fixture(scope="module")
def embed_model():
    Settings.llm = None
    return LongContextEmbedding(**CONFIG)


@pytest.fixture(scope="module")
def parser(embed_model):
    return LateChunkingNodeParser(embed_model=embed_model, chunk_size=32)


@pytest.fixture(scope="module")
def long_document():
    # the first bundled State of the Union address (~1.6k tokens) with a fact of ours in its middle
    text = sotu_documents()[0]["text"]
    cut = text.index(". ", len(text) // 2) + 2
    text = text[:cut] + "The lighthouse keeper of Port Elm collects blue glass bottles. " + text[cut:]
    return Document(text=text, doc_id="sotu-1790", metadata={"year": 1790, "source": "sotu"})


@pytest.fixture(scope="module")
def long_nodes(embed_model, long_document):
    return LateChunkingNodeParser(embed_model=embed_model, chunk_size=128).get_nodes_from_documents([long_document])


def spans_of(nodes):
    return [(n.start_char_idx, n.end_char_idx) for n in nodes]


def test_long_document_nodes_are_late_chunked(embed_model, long_document, long_nodes):
    text = long_document.text
    embedder = embed_model.embedder
    assert len(embedder.tokenize([text])[0]) > 3 * embedder.target_length == 3 * 512  # read in windows
    assert len(long_nodes) > 5 and all(isinstance(n, TextNode) for n in long_nodes)
    for node in long_nodes:
        assert text[node.start_char_idx : node.end_char_idx] == node.get_content()
        assert node.ref_doc_id == "sotu-1790"
        assert node.metadata == {"year": 1790, "source": "sotu"}
    starts = [s for s, _ in spans_of(long_nodes)]
    assert starts == sorted(starts)
    vectors = np.array([n.embedding for n in long_nodes], dtype=np.float32)
    np.testing.assert_allclose(vectors, embedder.encode_spans(text, spans_of(long_nodes)), rtol=0, atol=1e-6)
    # the chunk alone reads differently: these vectors saw the whole document
    alone = np.array(embed_model.get_text_embedding(long_nodes[3].get_content()))
    assert np.abs(alone - vectors[3]).max() > 1e-3
    # the chunk stating our fact is found among ~17 chunks of the address
    index = VectorStoreIndex(long_nodes, embed_model=embed_model)
    assert "blue glass bottles" in top_chunk(index, "What does the lighthouse keeper of Port Elm collect?").text


def test_same_chunks_ids_and_relationships_as_llama_index_sentence_splitter(embed_model, long_document, long_nodes):
    plain = SentenceSplitter(chunk_size=128, chunk_overlap=0, tokenizer=ModelTokens(embed_model.embedder.tokenizer))
    reference = plain.get_nodes_from_documents([long_document])
    assert [n.get_content() for n in long_nodes] == [n.get_content() for n in reference]
    assert spans_of(long_nodes) == spans_of(reference)  # LlamaIndex's own offsets agree
    for i, (ours, theirs) in enumerate(zip(long_nodes, reference)):
        assert ours.metadata == theirs.metadata and ours.ref_doc_id == theirs.ref_doc_id
        assert set(ours.relationships) == set(theirs.relationships)
        assert ours.relationships[NodeRelationship.SOURCE].node_id == "sotu-1790"
        if i:
            assert ours.relationships[NodeRelationship.PREVIOUS].node_id == long_nodes[i - 1].node_id
        assert theirs.embedding is None and ours.embedding is not None


def test_user_splitter_overlap_and_repeated_text(embed_model):
    # a LlamaIndex TokenTextSplitter with overlap, over text whose sentences repeat: every chunk is found at its own
    # place, in order, and embedded from the whole text
    text = " ".join(["The tide comes in.", "The tide goes out.", "Gulls circle the pier."] * 12)
    splitter = TokenTextSplitter(chunk_size=24, chunk_overlap=6, tokenizer=ModelTokens(embed_model.embedder.tokenizer))
    parser = LateChunkingNodeParser(embed_model=embed_model, splitter=splitter)
    nodes = parser.get_nodes_from_documents([Document(text=text, doc_id="tide")])
    assert len(nodes) > 3
    spans = spans_of(nodes)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 <= e0 + 1  # overlapping or adjacent: never jumping ahead to a later repetition
    assert all(text[s:e] == n.get_content() for (s, e), n in zip(spans, nodes))
    np.testing.assert_allclose(
        np.array([n.embedding for n in nodes]), embed_model.embedder.encode_spans(text, spans), rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError, match="chunk_size configure the default splitter; set them on your TokenText"):
        LateChunkingNodeParser(embed_model=embed_model, splitter=splitter, chunk_size=64)


class Shouting(TextSplitter):
    """A real LlamaIndex TextSplitter that changes the text (upper case)."""

    def split_text(self, text: str) -> list[str]:
        return [part.upper() for part in re.split(r"(?<=\.) ", text)]


def test_splitter_that_changes_the_text_is_named(embed_model):
    parser = LateChunkingNodeParser(embed_model=embed_model, splitter=Shouting())
    with pytest.raises(ValueError, match="Shouting returned a chunk that is not part of the document text"):
        parser.get_nodes_from_documents(short_documents())


def test_bad_spans_surface_the_core_error(embed_model):
    with pytest.raises(ValueError, match=r"spans\[1\] = \(5, 999\) lies outside the text"):
        embed_model.get_span_embeddings(HARBOUR, [(0, 5), (5, 999)])
    with pytest.raises(ValueError, match=r"spans\[0\] = \(9, 4\) is empty or reversed"):
        embed_model.get_span_embeddings(HARBOUR, [(9, 4)])
    gap = HARBOUR.index(" ")
    with pytest.raises(ValueError, match=r"spans\[0\] = .* holds no token"):
        embed_model.get_span_embeddings(HARBOUR, [(gap, gap + 1)])
    assert embed_model.get_span_embeddings(HARBOUR, []) == []


def top_chunk(index, query):
    return index.as_retriever(similarity_top_k=1).retrieve(query)[0].node


def test_ingestion_pipeline_then_vector_store_index_keeps_the_vectors(embed_model, parser):
    nodes = IngestionPipeline(transformations=[parser]).run(documents=short_documents())
    assert {n.ref_doc_id for n in nodes} == {"harbour", "orchard"} and len(nodes) >= 6
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    for node in nodes:  # stored as computed by late chunking, not embedded again by the index
        assert index.vector_store.get(node.node_id) == node.embedding
    for doc in short_documents():
        mine = [n for n in nodes if n.ref_doc_id == doc.doc_id]
        np.testing.assert_allclose(
            np.array([n.embedding for n in mine]),
            embed_model.embedder.encode_spans(doc.text, spans_of(mine)),
            rtol=0,
            atol=1e-6,
        )
    for query, fact in QUERIES.items():
        assert fact in top_chunk(index, query).get_content(), query


def test_vector_store_index_from_documents_with_the_parser(embed_model, parser):
    index = VectorStoreIndex.from_documents(short_documents(), embed_model=embed_model, transformations=[parser])
    nodes = list(index.docstore.docs.values())
    assert {n.ref_doc_id for n in nodes} == {"harbour", "orchard"}
    for doc in short_documents():
        mine = [n for n in nodes if n.ref_doc_id == doc.doc_id]
        assert all(doc.text[n.start_char_idx : n.end_char_idx] == n.get_content() for n in mine)
        np.testing.assert_allclose(
            np.array([index.vector_store.get(n.node_id) for n in mine]),
            embed_model.get_span_embeddings(doc.text, spans_of(mine)),
            rtol=0,
            atol=1e-6,
        )
    for query, fact in QUERIES.items():
        hit = top_chunk(index, query)
        assert fact in hit.get_content() and hit.metadata["topic"] in ("harbour", "orchard"), query


def test_async_parsing_matches(embed_model, parser):
    docs = short_documents()[:1]
    sync = parser.get_nodes_from_documents(docs)
    got = asyncio.run(parser.aget_nodes_from_documents(docs))
    assert spans_of(got) == spans_of(sync)
    np.testing.assert_array_equal(np.array([n.embedding for n in got]), np.array([n.embedding for n in sync]))


def test_parser_is_a_llama_index_node_parser(parser, embed_model):
    assert isinstance(parser, NodeParser) and LateChunkingNodeParser.class_name() == "LateChunkingNodeParser"
    data = parser.to_dict()  # what IngestionPipeline's cache hashes
    assert data["class_name"] == "LateChunkingNodeParser" and data["chunk_size"] == 32
    assert data["embed_model"]["class_name"] == "LongContextEmbedding"
    assert data["embed_model"]["overlength"] == "windows" and data["splitter"] is None
    assert parser.get_nodes_from_documents([Document(text="", doc_id="empty")]) == []


def test_embedding_fields_reach_the_embedder(embed_model):
    embedder = embed_model.embedder
    assert (embedder.overlength, embedder.window_overlap, embedder.target_length) == ("windows", 64, 512)
    assert embedder.model.config.hidden_dropout_prob == 0.0  # model_kwargs went to from_pretrained (MiniLM: 0.1)
    assert LongContextEmbedding(**CONFIG).embedder is embedder  # one model load per configuration
    with pytest.raises(ValueError, match="model_kwargs\\['device'\\]: set the field 'device' instead"):
        LongContextEmbedding(model_kwargs={"device": "cpu"})
    with pytest.raises(ValueError, match="overlength"):
        LongContextEmbedding(overlength="cut")


def test_worker_processes_get_the_settings_not_the_model(embed_model):
    """``IngestionPipeline(num_workers=N)`` pickles the transformations for each worker: the embedding model goes
    without its weights (each worker process loads it once) and gives the same vectors there."""
    import pickle

    parser = LateChunkingNodeParser(embed_model=embed_model, chunk_size=64)
    blob = pickle.dumps(parser)
    assert len(blob) < 5_000_000, len(blob)  # the MiniLM weights alone are ~90 MB
    again = pickle.loads(blob)  # in this process: the shared model again, not a copy
    assert again.embed_model.embedder is embed_model.embedder
    text = short_documents()[0].text
    np.testing.assert_allclose(
        again.embed_model.get_span_embeddings(text, [(0, 60)]),
        embed_model.get_span_embeddings(text, [(0, 60)]),
        atol=1e-6,
    )


def test_ingestion_pipeline_with_two_workers_equals_one(embed_model):
    parser = LateChunkingNodeParser(embed_model=embed_model, chunk_size=64)
    docs = short_documents()

    def spans(nodes):
        return {(n.ref_doc_id, n.start_char_idx, n.end_char_idx): np.asarray(n.embedding) for n in nodes}

    one = spans(IngestionPipeline(transformations=[parser]).run(documents=docs))
    two = spans(IngestionPipeline(transformations=[parser]).run(documents=docs, num_workers=2))
    assert one.keys() == two.keys() and len(one) > 2
    for key in one:
        np.testing.assert_allclose(two[key], one[key], atol=1e-5)
