"""LlamaIndex ``BaseEmbedding`` over :class:`longctx_plugins.LongContextEmbedder` (no model logic of its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator

from longctx_plugins.frameworks import EmbedderFields

# which field sets which ``LongContextEmbedder`` parameter (the rest: longctx_plugins.frameworks.EMBEDDER_FIELDS)
_FIELDS = EmbedderFields(document_prompt="text_instruction", batch_size="embed_batch_size")


class LongContextEmbedding(BaseEmbedding):
    """Embed whole long documents with a training-free extended embedding model.

    Example:
        >>> from llama_index.embeddings.longctx import LongContextEmbedding
        >>> embed_model = LongContextEmbedding(model_name="default", method="pi", target_length=8192)

    Late chunking (chunk vectors that saw the whole document): :meth:`get_span_embeddings`, or
    :class:`~llama_index.embeddings.longctx.LateChunkingNodeParser` as an ingestion step.
    """

    model_name: str = Field(default="default", description="Local folder, hub id, or 'default' (all-MiniLM-L6-v2).")
    method: str = Field(default="auto", description="none | auto | pi | gp | rp | pcw | ntk | self_extend")
    target_length: int = Field(default=8192, gt=0, description="Longest input, in tokens, read whole.")
    pooling: str | None = Field(default=None, description="mean | cls | lasttoken | max; None: from the model folder.")
    normalize: bool = Field(default=True, description="L2-normalise embeddings.")
    query_instruction: str | None = Field(default=None, description="Prefix for queries (None: model's prompt).")
    text_instruction: str | None = Field(default=None, description="Prefix for documents (None: model's prompt).")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1, ...; None picks CUDA when present.")
    overlength: Literal["truncate", "error", "windows"] = Field(
        default="truncate",
        description="Texts longer than target_length: 'truncate' (with a warning), 'error', or "
        "'windows' (read whole in overlapping windows, mean of the window vectors).",
    )
    window_overlap: int | None = Field(
        default=None, ge=0, description="Tokens shared by consecutive windows (None: target_length // 4)."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the model's from_pretrained (revision, trust_remote_code, "
        "attn_implementation, ...); also dtype, max_batch_tokens of the embedder.",
    )
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, le=2048)

    _embedder: Any = PrivateAttr(default=None)

    @field_validator("model_kwargs")
    @classmethod
    def _no_shadowed_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        return dict(_FIELDS.check_model_kwargs(value))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._embedder = self._load()  # now: bad settings fail here, not at the first call

    def _load(self) -> Any:
        return _FIELDS.load(self)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the model (LlamaIndex would otherwise pickle it whole, 90 MB for MiniLM, for every batch
        it sends to a worker of ``IngestionPipeline(num_workers=N)``): unpickling re-runs ``__init__`` (LlamaIndex's
        convention), so each worker process loads the model once from the settings and reuses it for every batch."""
        saved = self.__pydantic_private__
        object.__setattr__(self, "__pydantic_private__", {**(saved or {}), "_embedder": None})
        try:  # a concurrent call meanwhile finds no model and takes the shared one again (embedder property)
            return super().__getstate__()
        finally:
            object.__setattr__(self, "__pydantic_private__", saved)

    @classmethod
    def class_name(cls) -> str:
        return "LongContextEmbedding"

    @property
    def embedder(self) -> Any:
        """The shared :class:`longctx_plugins.LongContextEmbedder` behind this model (loaded in this process on
        first use after unpickling)."""
        if self._embedder is None:
            self._embedder = self._load()
        return self._embedder

    # late chunking ----------------------------------------------------------------------------------------
    def get_span_embeddings(self, text: str, spans: Sequence[tuple[int, int]]) -> list[list[float]]:
        """Late chunking: one vector per character span ``[start, end)`` of ``text``, each the mean of its tokens'
        states after one read of the whole text (with the document prompt; texts longer than ``target_length`` are
        read in overlapping windows). Bad spans raise the core's ``ValueError``."""
        return self.embedder.encode_spans(text, list(spans)).tolist()

    async def aget_span_embeddings(self, text: str, spans: Sequence[tuple[int, int]]) -> list[list[float]]:
        return await asyncio.to_thread(self.get_span_embeddings, text, spans)

    # sync -----------------------------------------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> list[float]:
        return self.embedder.encode_queries([query], batch_size=self.embed_batch_size)[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.embedder.encode_documents(list(texts), batch_size=self.embed_batch_size).tolist()

    # async: run the blocking model call in a worker thread so the event loop stays free -------------------
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
