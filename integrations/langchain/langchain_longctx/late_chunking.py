"""Late-chunked ``Document``s from any LangChain ``TextSplitter``, and vector stores filled with them."""

from __future__ import annotations

import copy
from typing import Any

from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from langchain_longctx.embeddings import LongContextEmbeddings
from longctx_plugins.frameworks import late_chunk_pieces


def late_chunk_documents(
    documents: list[Document], text_splitter: Any, embeddings: LongContextEmbeddings
) -> tuple[list[Document], list[list[float]]]:
    """Split each document with ``text_splitter`` (any LangChain ``TextSplitter``: its ``split_text``) and embed
    every chunk by late chunking: the whole document is read once and each chunk's vector is the mean of its tokens'
    states (:meth:`LongContextEmbeddings.embed_document_spans`).

    Returns ``(chunks, vectors)``: one ``Document`` per chunk with a deep copy of its document's metadata plus
    ``metadata["start_index"]``, the chunk's character offset in the document (LangChain's ``add_start_index``
    convention; ``page_content == document.page_content[start_index:start_index + len(page_content)]``), and the
    chunk vectors in the same order. Whitespace-only chunks are dropped. A chunk that is not an exact substring of
    its document raises ``ValueError`` naming the splitter.
    """
    if not isinstance(embeddings, LongContextEmbeddings):
        raise TypeError(f"late chunking needs LongContextEmbeddings, got {type(embeddings).__name__}.")
    if not callable(getattr(text_splitter, "split_text", None)):
        raise TypeError(
            f"text_splitter must be a LangChain TextSplitter (with split_text), got {type(text_splitter).__name__}."
        )
    name = type(text_splitter).__name__
    chunks: list[Document] = []
    vectors: list[list[float]] = []
    for i, document in enumerate(documents):
        if not isinstance(document, Document):
            raise TypeError(f"documents[{i}] must be a langchain_core Document, got {type(document).__name__}.")
        text = document.page_content
        pieces = list(text_splitter.split_text(text))
        for k, (start, _), vector in late_chunk_pieces(
            text, pieces, name, embeddings.embed_document_spans, f"documents[{i}]"
        ):
            metadata = copy.deepcopy(document.metadata)
            metadata["start_index"] = start
            chunks.append(Document(page_content=pieces[k], metadata=metadata))
            vectors.append(vector)
    return chunks, vectors


def _store_embeddings(vector_store: VectorStore, embeddings: LongContextEmbeddings | None) -> LongContextEmbeddings:
    store_embeddings = vector_store.embeddings
    if not isinstance(store_embeddings, LongContextEmbeddings):
        raise TypeError(
            f"{type(vector_store).__name__} embeds with {type(store_embeddings).__name__}, not "
            "LongContextEmbeddings: late-chunked vectors can only go into a store that embeds its queries "
            "with the same model. Use late_chunk_documents() and the store's own way to add vectors."
        )
    if embeddings is not None and embeddings.embedder is not store_embeddings.embedder:
        raise ValueError(
            f"{type(vector_store).__name__} embeds with another LongContextEmbeddings configuration "
            "than the one given: its queries would not match the chunk vectors."
        )
    return store_embeddings


def add_late_chunked_documents(
    vector_store: VectorStore,
    documents: list[Document],
    text_splitter: Any,
    embeddings: LongContextEmbeddings | None = None,
    **kwargs: Any,
) -> list[str]:
    """Split ``documents`` with ``text_splitter``, embed the chunks by late chunking and add them to
    ``vector_store`` through its own ``add_documents`` (``kwargs`` passed on); returns the ids it gives.

    The store must embed with :class:`LongContextEmbeddings` (``vector_store.embeddings``, e.g.
    ``InMemoryVectorStore(embedding=embeddings)``): its queries then use the same model, and its ``add_documents``
    receives the late-chunked vectors through :meth:`LongContextEmbeddings.precomputed`. ``embeddings`` defaults to
    the store's; when given it must have the store's configuration.
    """
    embeddings = _store_embeddings(vector_store, embeddings)
    chunks, vectors = late_chunk_documents(documents, text_splitter, embeddings)
    if not chunks:
        return []
    with embeddings.precomputed([c.page_content for c in chunks], vectors):
        return vector_store.add_documents(chunks, **kwargs)


async def aadd_late_chunked_documents(
    vector_store: VectorStore,
    documents: list[Document],
    text_splitter: Any,
    embeddings: LongContextEmbeddings | None = None,
    **kwargs: Any,
) -> list[str]:
    """Async :func:`add_late_chunked_documents`: the model runs in a worker thread, the store's ``aadd_documents``
    adds the chunks."""
    import asyncio

    embeddings = _store_embeddings(vector_store, embeddings)
    chunks, vectors = await asyncio.to_thread(late_chunk_documents, documents, text_splitter, embeddings)
    if not chunks:
        return []
    with embeddings.precomputed([c.page_content for c in chunks], vectors):
        return await vector_store.aadd_documents(chunks, **kwargs)
