from langchain_longctx.embeddings import LongContextEmbeddings
from langchain_longctx.late_chunking import (
    aadd_late_chunked_documents,
    add_late_chunked_documents,
    late_chunk_documents,
)

__all__ = ["LongContextEmbeddings", "late_chunk_documents", "add_late_chunked_documents", "aadd_late_chunked_documents"]
