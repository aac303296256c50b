"""Real LangChain machinery (InMemoryVectorStore) and the langchain-tests standard suites, offline MiniLM."""

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from langchain_longctx import LongContextEmbeddings

FILLER = " ".join(["The committee reviewed the annual report on roads, harbours and the postal service."] * 60)
FACTS = [
    "The lighthouse keeper of Lisbon collects blue glass bottles.",
    "The baker of Oslo sells cardamom buns shaped like whales.",
    "The gardener of Lima grows purple potatoes under the bridge.",
]


class _Params:
    @property
    def embeddings_class(self):
        return LongContextEmbeddings

    @property
    def embedding_model_params(self):
        return {"method": "pi", "target_length": 2048}


class TestUnit(_Params, EmbeddingsUnitTests):
    @property
    def init_from_env_params(self):
        return (
            {"LONGCTX_EMBEDDINGS_MODEL": "default"},
            {"method": "pi", "target_length": 2048},
            {"model_name": "default"},
        )


class TestIntegration(_Params, EmbeddingsIntegrationTests):
    pass


def test_in_memory_vector_store_whole_documents():
    texts = [FILLER + " " + f for f in FACTS]
    extended = InMemoryVectorStore.from_texts(
        texts, LongContextEmbeddings(method="pi", target_length=2048), metadatas=[{"i": i} for i in range(3)]
    )
    truncated = InMemoryVectorStore.from_texts(
        texts, LongContextEmbeddings(method="none"), metadatas=[{"i": i} for i in range(3)]
    )
    queries = [
        "Who collects blue glass bottles?",
        "Who sells cardamom buns shaped like whales?",
        "Who grows purple potatoes under the bridge?",
    ]
    ext_hits = [extended.similarity_search(q, k=1)[0].metadata["i"] for q in queries]
    trunc_hits = [truncated.similarity_search(q, k=1)[0].metadata["i"] for q in queries]
    assert ext_hits == [0, 1, 2]
    assert trunc_hits != [0, 1, 2]


def test_validation_and_bad_input():
    emb = LongContextEmbeddings(method="pi", target_length=2048)
    assert isinstance(emb, Embeddings)
    with pytest.raises(ValidationError):
        LongContextEmbeddings(unknown_field=1)
    with pytest.raises(ValueError, match="valid methods"):
        LongContextEmbeddings(method="magic")
    assert emb.embed_documents([]) == []
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed_documents(["ok", None])
    with pytest.raises(TypeError, match="expects a str"):
        emb.embed_query(3)
