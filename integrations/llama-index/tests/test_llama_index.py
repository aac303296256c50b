"""Real LlamaIndex machinery (VectorStoreIndex, retriever, Settings) with the real offline MiniLM."""

import asyncio

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding

from llama_index.embeddings.longctx import LongContextEmbedding

FACTS = {
    "lisbon": "The lighthouse keeper of Lisbon collects blue glass bottles.",
    "oslo": "The baker of Oslo sells cardamom buns shaped like whales.",
    "lima": "The gardener of Lima grows purple potatoes under the bridge.",
}
QUERIES = {
    "lisbon": "Who collects blue glass bottles?",
    "oslo": "Who sells cardamom buns shaped like whales?",
    "lima": "Who grows purple potatoes under the bridge?",
}
FILLER = " ".join(["The committee reviewed the annual report on roads, harbours and the postal service."] * 60)


def documents():
    # identical first ~700 tokens: only the end tells the documents apart
    return [Document(text=FILLER + " " + fact, doc_id=key, metadata={"city": key}) for key, fact in FACTS.items()]


def test_is_a_base_embedding_with_config_roundtrip():
    emb = LongContextEmbedding(method="pi", target_length=2048, embed_batch_size=2)
    assert isinstance(emb, BaseEmbedding) and LongContextEmbedding.class_name() == "LongContextEmbedding"
    again = LongContextEmbedding.from_dict(emb.to_dict())
    assert again.to_dict() == emb.to_dict()
    assert again._embedder is emb._embedder  # one model load per configuration


def test_batch_query_and_async():
    emb = LongContextEmbedding(method="pi", target_length=2048, embed_batch_size=2)
    texts = [d.text for d in documents()]
    batch = emb.get_text_embedding_batch(texts)
    assert len(batch) == 3 and len(batch[0]) == 384
    single = emb.get_text_embedding(texts[1])
    assert max(abs(a - b) for a, b in zip(single, batch[1])) < 1e-5
    q = emb.get_query_embedding("hello")

    async def run():
        return await asyncio.gather(emb.aget_query_embedding("hello"), emb.aget_text_embedding_batch(texts))

    aq, abatch = asyncio.run(run())
    assert max(abs(a - b) for a, b in zip(aq, q)) < 1e-6 and len(abatch) == 3


@pytest.mark.parametrize("method,expect_all", [("pi", True), ("none", False)])
def test_vector_store_index_whole_documents(method, expect_all):
    Settings.llm = None
    emb = LongContextEmbedding(method=method, target_length=2048)
    # transformations=[]: one node per whole document (no chunking)
    index = VectorStoreIndex.from_documents(documents(), embed_model=emb, transformations=[])
    assert len(index.docstore.docs) == 3
    retriever = index.as_retriever(similarity_top_k=1)
    hits = {key: retriever.retrieve(q)[0].node.metadata["city"] for key, q in QUERIES.items()}
    correct = sum(hits[k] == k for k in QUERIES)
    if expect_all:
        assert correct == 3, hits
    else:  # truncated at 512 tokens: the three documents look identical
        assert correct < 3, hits


def test_settings_embed_model_and_validation():
    Settings.embed_model = LongContextEmbedding(method="pcw", target_length=4096)
    assert len(Settings.embed_model.get_text_embedding("x")) == 384
    with pytest.raises(ValueError, match="valid methods"):
        LongContextEmbedding(method="magic")
    with pytest.raises(ValueError):
        LongContextEmbedding(target_length=0)
    emb = LongContextEmbedding(method="pi", target_length=2048)
    assert emb.get_text_embedding_batch([]) == []
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb._get_text_embeddings(["ok", 5])
