from llama_index.embeddings.longctx.base import LongContextEmbedding
from llama_index.embeddings.longctx.late_chunking import LateChunkingNodeParser, ModelTokens

__all__ = ["LongContextEmbedding", "LateChunkingNodeParser", "ModelTokens"]
