from llama_index.embeddings.longctx.base import LongContextEmbedding

__all__ = ["LongContextEmbedding"]
