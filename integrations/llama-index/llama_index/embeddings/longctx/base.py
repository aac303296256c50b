"""LlamaIndex ``BaseEmbedding`` over :class:`longctx_plugins.LongContextEmbedder` (no model logic of its own)."""
from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr


class LongContextEmbedding(BaseEmbedding):
    """Embed whole long documents with a training-free extended embedding model.

    Example:
        >>> from llama_index.embeddings.longctx import LongContextEmbedding
        >>> embed_model = LongContextEmbedding(model_name="default", method="pi", target_length=8192)
    """

    model_name: str = Field(default="default", description="Local folder, hub id, or 'default' (all-MiniLM-L6-v2).")
    method: str = Field(default="auto", description="none | auto | pi | gp | rp | pcw | ntk | self_extend")
    target_length: int = Field(default=8192, gt=0, description="Longest input, in tokens, read whole.")
    pooling: Optional[str] = Field(default=None, description="mean | cls | lasttoken | max; None: from the model folder.")
    normalize: bool = Field(default=True, description="L2-normalise embeddings.")
    query_instruction: Optional[str] = Field(default=None, description="Prefix for queries (None: model's prompt).")
    text_instruction: Optional[str] = Field(default=None, description="Prefix for documents (None: model's prompt).")
    device: Optional[str] = Field(default=None, description="cpu, cuda, cuda:1, ...; None picks CUDA when present.")
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, le=2048)

    _embedder: Any = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from longctx_plugins.embedder import get_embedder

        self._embedder = get_embedder(self.model_name, method=self.method, target_length=self.target_length,
                                      device=self.device, pooling=self.pooling, normalize=self.normalize,
                                      query_prompt=self.query_instruction, document_prompt=self.text_instruction)

    @classmethod
    def class_name(cls) -> str:
        return "LongContextEmbedding"

    # sync -----------------------------------------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> List[float]:
        return self._embedder.encode_queries([query], batch_size=self.embed_batch_size)[0].tolist()

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        if not texts:
            return []
        return self._embedder.encode_documents(list(texts), batch_size=self.embed_batch_size).tolist()

    # async: run the blocking model call in a worker thread so the event loop stays free -------------------
    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
