from langchain_longctx.embeddings import LongContextEmbeddings

__all__ = ["LongContextEmbeddings"]
