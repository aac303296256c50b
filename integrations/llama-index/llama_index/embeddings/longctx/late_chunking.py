"""``LateChunkingNodeParser``: split documents with any LlamaIndex splitter, embed the chunks by late chunking."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr, SerializeAsAny
from llama_index.core.node_parser import NodeParser, SentenceSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode
from llama_index.core.utils import get_tqdm_iterable

from llama_index.embeddings.longctx.base import LongContextEmbedding
from longctx_plugins.frameworks import late_chunk_pieces


class ModelTokens:
    """``text -> token ids`` of an embedding model's tokenizer, special tokens left out: the ``tokenizer=`` of
    LlamaIndex splitters, so that their chunk sizes are measured in the model's own tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


class LateChunkingNodeParser(NodeParser):
    """Split each document into chunks and embed every chunk by *late chunking*: the whole document is read once by
    the embedding model (in overlapping windows beyond ``target_length``) and each chunk's vector is the mean of its
    tokens' states, so it carries the document's context (what "it", "the company", "that year" refer to).

    The nodes come back with ``embedding`` set; ``VectorStoreIndex`` keeps a node's embedding when it has one, so
    they are not embedded again. Queries go through the same :class:`LongContextEmbedding` as usual.

    Args:
        embed_model: the :class:`LongContextEmbedding` that embeds the chunks (use the same one for queries).
        splitter: any LlamaIndex ``TextSplitter`` / ``NodeParser`` whose chunks are exact substrings of the
            document; None: ``SentenceSplitter(chunk_size, chunk_overlap)`` measured in the embedding model's
            tokens.
        chunk_size, chunk_overlap: of the default splitter, in tokens (set them on your own splitter instead).

    Node ids, ``ref_doc_id``, relationships and metadata are the splitter's (LlamaIndex's conventions);
    ``start_char_idx`` / ``end_char_idx`` are the embedded span, ``doc.text[start:end] == node.get_content()``. The
    vectors embed the chunk text alone, not the metadata (``MetadataMode.EMBED``) that ``embed_model`` would add.

    Example:
        >>> from llama_index.core import VectorStoreIndex
        >>> from llama_index.embeddings.longctx import LateChunkingNodeParser, LongContextEmbedding
        >>> embed_model = LongContextEmbedding(method="pi", target_length=8192)
        >>> parser = LateChunkingNodeParser(embed_model=embed_model, chunk_size=256)
        >>> index = VectorStoreIndex.from_documents(docs, embed_model=embed_model, transformations=[parser])
    """

    embed_model: SerializeAsAny[LongContextEmbedding] = Field(
        description="The LongContextEmbedding that embeds the chunks (and, elsewhere, the queries)."
    )
    splitter: SerializeAsAny[NodeParser] | None = Field(
        default=None,
        description="Any LlamaIndex TextSplitter / NodeParser returning exact substrings of the "
        "document; None: SentenceSplitter(chunk_size, chunk_overlap) in model tokens.",
    )
    chunk_size: int = Field(default=256, gt=0, description="Tokens per chunk of the default splitter.")
    chunk_overlap: int = Field(
        default=0, ge=0, description="Tokens shared by consecutive chunks of the default splitter."
    )

    _splitter: NodeParser = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.splitter is not None:
            given = sorted({"chunk_size", "chunk_overlap"} & self.model_fields_set)
            if given:
                raise ValueError(
                    f"{' and '.join(given)} configure the default splitter; set them on your "
                    f"{type(self.splitter).__name__} instead."
                )
            self._splitter = self.splitter
        else:
            self._splitter = SentenceSplitter(
                chunk_size=self.chunk_size,
                chunk_overlap=self.chunk_overlap,
                tokenizer=ModelTokens(self.embed_model.embedder.tokenizer),
                include_metadata=self.include_metadata,
                include_prev_next_rel=self.include_prev_next_rel,
                id_func=self.id_func,
                callback_manager=self.callback_manager,
            )

    @classmethod
    def class_name(cls) -> str:
        return "LateChunkingNodeParser"

    def _parse_nodes(self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any) -> list[BaseNode]:
        out: list[BaseNode] = []
        for node in get_tqdm_iterable(nodes, show_progress, "Late chunking"):
            out.extend(self._late_chunk(node))
        return out

    async def _aparse_nodes(
        self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any
    ) -> list[BaseNode]:
        return await asyncio.to_thread(self._parse_nodes, nodes, show_progress, **kwargs)

    def _late_chunk(self, document: BaseNode) -> list[BaseNode]:
        text = document.get_content(metadata_mode=MetadataMode.NONE)
        nodes = list(self._splitter.get_nodes_from_documents([document]))  # type: ignore[list-item]
        chunks: list[BaseNode] = []
        for k, (start, end), vector in late_chunk_pieces(
            text,
            [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
            type(self._splitter).__name__,
            self.embed_model.get_span_embeddings,
            f"document {document.node_id!r}",
        ):
            node = nodes[k]
            node.start_char_idx, node.end_char_idx = start, end  # type: ignore[attr-defined]
            node.embedding = vector
            chunks.append(node)
        return chunks

    def _postprocess_parsed_nodes(self, nodes: list[BaseNode], parent_doc_map: dict[str, Document]) -> list[BaseNode]:
        # The base class looks each node's text up again in its document and overwrites the offsets with the first
        # match after the previous node's start; keep the spans that were embedded.
        spans = [(getattr(n, "start_char_idx", None), getattr(n, "end_char_idx", None)) for n in nodes]
        nodes = super()._postprocess_parsed_nodes(nodes, parent_doc_map)
        for node, (start, end) in zip(nodes, spans):
            if start is not None:
                node.start_char_idx, node.end_char_idx = start, end  # type: ignore[attr-defined]
        return nodes
