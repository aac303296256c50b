"""Whole-document retrieval over long public-domain documents with LlamaIndex and LangChain: truncated vs extended.

Each document is a State of the Union address (1.2k-39k tokens, bundled); each query is a sentence taken from deep
inside one address (past its first 512 tokens), which a truncated 512-token embedder never sees.

    python examples/rag_retrieval.py --framework llama-index --method pi --target-length 8192
    python examples/rag_retrieval.py --framework langchain
"""
import argparse
import random

from longctx_plugins.embedder import get_embedder
from longctx_plugins.longembed.synthetic import sotu_documents


def corpus(n_docs):
    rows = sotu_documents()[:n_docs]
    return [r["id"] for r in rows], [r["text"] for r in rows]


def queries(ids, texts, tokenizer, target_length):
    rng = random.Random(0)
    out = []
    for doc_id, text in zip(ids, texts):
        sentences = [s for s in text.replace("\n", " ").split(". ") if len(s.split()) > 12]
        deep = [s for s in sentences if 600 < len(tokenizer(text[: text.find(s)])["input_ids"]) < target_length - 50]
        if deep:
            out.append((rng.choice(deep), doc_id))
    return out


def llama_index_run(ids, texts, qs, method, target_length):
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.embeddings.longctx import LongContextEmbedding

    Settings.llm = None
    emb = LongContextEmbedding(method=method, target_length=target_length)
    docs = [Document(text=t, doc_id=i, metadata={"id": i}) for i, t in zip(ids, texts)]
    index = VectorStoreIndex.from_documents(docs, embed_model=emb, transformations=[])  # one node per document
    retriever = index.as_retriever(similarity_top_k=1)
    return sum(retriever.retrieve(q)[0].node.metadata["id"] == d for q, d in qs)


def langchain_run(ids, texts, qs, method, target_length):
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_longctx import LongContextEmbeddings

    store = InMemoryVectorStore.from_texts(texts, LongContextEmbeddings(method=method, target_length=target_length),
                                           metadatas=[{"id": i} for i in ids])
    return sum(store.similarity_search(q, k=1)[0].metadata["id"] == d for q, d in qs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=("llama-index", "langchain"), default="llama-index")
    ap.add_argument("--method", default="pi")
    ap.add_argument("--target-length", type=int, default=8192)
    ap.add_argument("--docs", type=int, default=20)
    args = ap.parse_args()
    ids, texts = corpus(args.docs)
    tok = get_embedder("default", method="none").tokenizer
    qs = queries(ids, texts, tok, args.target_length)
    run = llama_index_run if args.framework == "llama-index" else langchain_run
    for method in ("none", args.method):
        hits = run(ids, texts, qs, method, args.target_length)
        print(f"{args.framework} {method:>5}: top-1 {hits}/{len(qs)} ({100 * hits / len(qs):.0f}%)")


if __name__ == "__main__":
    main()
