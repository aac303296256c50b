"""Chunk-level RAG retrieval over long public-domain documents with LlamaIndex and LangChain: naive chunking vs late
chunking, with the embedder at its trained length (``none``) and extended (``--method``, default ``pi`` to 8192).

Corpus: the first ``--docs`` bundled State of the Union addresses (1.2k-39k tokens), every address split into chunks
of about ``--chunk-size`` model tokens; all chunks of all addresses form one index.

Queries ("deep-sentence" queries): for each address, ``--queries-per-doc`` sentences drawn at random (seeded per
address) among those that start past the address's first 512 tokens and have 15-60 words; the query is the
sentence with its first third of words removed (a verbatim tail of the sentence, at least 10 words: no paraphrase,
but never the whole sentence). Sentences whose tail occurs more than once in the corpus are not
drawn. The gold is the location of that tail in its address (character offsets); a retrieved chunk *hits* when it
comes from that address and covers at least half of those characters, so the rule holds for any splitter (with
no overlap, one chunk per strategy can hit; two only when a chunk boundary cuts the tail exactly in half). The
queries are lexically part of their gold chunk, which
favours embedding each chunk alone; they are the same for every framework, strategy and method.

Strategies, the same splitter (same settings) for both within a framework:
  * naive: each chunk embedded alone. LlamaIndex: ``SentenceSplitter`` as the ``VectorStoreIndex`` transformation,
    ``LongContextEmbedding`` embeds the nodes. LangChain: ``RecursiveCharacterTextSplitter.split_documents`` +
    ``InMemoryVectorStore.from_documents`` with ``LongContextEmbeddings``.
  * late: each address read whole (in overlapping windows of the target length beyond it) and each chunk's vector
    the mean of its tokens' states. LlamaIndex: ``LateChunkingNodeParser(splitter=<the same SentenceSplitter>)`` as
    the ``transformations=[...]`` step. LangChain: ``add_late_chunked_documents(store, docs, <the same splitter>)``.
Splitters measure chunks in the model's tokens (``SentenceSplitter(tokenizer=ModelTokens(...))``,
``RecursiveCharacterTextSplitter.from_huggingface_tokenizer``); the LangChain one prefers paragraph, then sentence
(". ", kept at the chunk's end), then word boundaries.

Reported per framework, strategy and method: hit@1 and hit@5 (a hitting chunk among the top k) and doc@1 (the top
chunk comes from the right address).

    python examples/rag_retrieval.py --framework both --docs 16 --queries-per-doc 4 --method pi \
        --target-length 8192 --chunk-size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from bisect import bisect_left
from itertools import islice

from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed.synthetic import sotu_documents

FRAMEWORKS = ("llama-index", "langchain")
STRATEGIES = ("naive", "late")
KS = (1, 5)
DEEP_TOKENS = 512  # queries come from sentences that start past this many tokens of their address
MIN_WORDS, MAX_WORDS = 15, 60


# ------------------------------------------------------------------------------------------------ data
def corpus(n_docs: int) -> tuple[list[str], list[str]]:
    rows = sotu_documents()[:n_docs]
    return [r["id"] for r in rows], [r["text"] for r in rows]


def sentence_spans(text: str):
    """``(start, end)`` of each sentence: pieces between ``.``/``!``/``?`` followed by whitespace."""
    start = 0
    for m in re.finditer(r"(?<=[.!?])\s+", text):
        yield start, m.start()
        start = m.end()
    if start < len(text):
        yield start, len(text)


def make_queries(ids: list[str], texts: list[str], tokenizer, per_doc: int, seed: int = 0) -> list[dict]:
    """Deep-sentence queries (see the module docstring): ``{"doc", "query", "start", "end", "token"}`` with
    ``texts[doc][start:end] == query`` and ``token`` the index of the sentence's first token in its address."""
    out = []
    for doc_id, text in zip(ids, texts):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        token_starts = [a for a, _ in enc["offset_mapping"]]
        candidates = []
        for s, e in sentence_spans(text):
            token = bisect_left(token_starts, s)
            words = list(re.finditer(r"\S+", text[s:e]))
            if token < DEEP_TOKENS or not MIN_WORDS <= len(words) <= MAX_WORDS:
                continue
            qs = s + words[len(words) // 3].start()  # drop the first third of the words
            candidates.append({"doc": doc_id, "query": text[qs:e], "start": qs, "end": e, "token": token})
        random.Random(f"{seed}:{doc_id}").shuffle(candidates)  # per address: the same draw whatever --docs is
        # the first per_doc whose text has a single location in the corpus
        picked = list(islice((q for q in candidates if sum(t.count(q["query"]) for t in texts) == 1), per_doc))
        out.extend(sorted(picked, key=lambda q: q["start"]))
    return out


def hits(query: dict, doc_id: str, start: int, end: int) -> bool:
    """Does the chunk ``[start, end)`` of ``doc_id`` cover at least half of the query's characters?"""
    covered = min(end, query["end"]) - max(start, query["start"])
    return doc_id == query["doc"] and 2 * covered >= query["end"] - query["start"]


# ------------------------------------------------------------------------------------------- LlamaIndex
def llama_index_index(ids, texts, strategy, embed_model, chunk_size, chunk_overlap):
    """A ``VectorStoreIndex`` over the chunks of the addresses, naive or late-chunked (same ``SentenceSplitter``)."""
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index.embeddings.longctx import LateChunkingNodeParser, ModelTokens

    splitter = SentenceSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=ModelTokens(embed_model.embedder.tokenizer)
    )
    # no metadata on the documents: LlamaIndex would prepend it to the text the naive strategy embeds
    docs = [Document(text=t, doc_id=i) for i, t in zip(ids, texts)]
    step = splitter if strategy == "naive" else LateChunkingNodeParser(embed_model=embed_model, splitter=splitter)
    return VectorStoreIndex.from_documents(docs, embed_model=embed_model, transformations=[step])


def llama_index_run(ids, texts, queries, strategy, method, target_length, chunk_size, chunk_overlap, model):
    from llama_index.embeddings.longctx import LongContextEmbedding

    embed_model = LongContextEmbedding(model_name=model, method=method, target_length=target_length)
    t0 = time.perf_counter()
    index = llama_index_index(ids, texts, strategy, embed_model, chunk_size, chunk_overlap)
    t1 = time.perf_counter()
    retriever = index.as_retriever(similarity_top_k=max(KS))
    ranked = [
        [(r.node.ref_doc_id, r.node.start_char_idx, r.node.end_char_idx) for r in retriever.retrieve(q["query"])]
        for q in queries
    ]
    return index, ranked, len(index.docstore.docs), embed_model.embedder, t1 - t0, time.perf_counter() - t1


# -------------------------------------------------------------------------------------------- LangChain
def langchain_splitter(tokenizer, chunk_size, chunk_overlap):
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        separators=["\n\n", "\n", ". ", " ", ""],
        keep_separator="end",
        add_start_index=True,
    )


def langchain_store(ids, texts, strategy, embeddings, chunk_size, chunk_overlap):
    """An ``InMemoryVectorStore`` over the chunks of the addresses, naive or late-chunked (same splitter)."""
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from langchain_longctx import add_late_chunked_documents

    splitter = langchain_splitter(embeddings.embedder.tokenizer, chunk_size, chunk_overlap)
    docs = [Document(page_content=t, metadata={"id": i}) for i, t in zip(ids, texts)]
    if strategy == "naive":
        return InMemoryVectorStore.from_documents(splitter.split_documents(docs), embeddings)
    store = InMemoryVectorStore(embedding=embeddings)
    add_late_chunked_documents(store, docs, splitter)
    return store


def langchain_run(ids, texts, queries, strategy, method, target_length, chunk_size, chunk_overlap, model):
    from langchain_longctx import LongContextEmbeddings

    embeddings = LongContextEmbeddings(model_name=model, method=method, target_length=target_length)
    t0 = time.perf_counter()
    store = langchain_store(ids, texts, strategy, embeddings, chunk_size, chunk_overlap)
    t1 = time.perf_counter()
    ranked = []
    for q in queries:
        found = store.similarity_search(q["query"], k=max(KS))
        ranked.append(
            [
                (d.metadata["id"], d.metadata["start_index"], d.metadata["start_index"] + len(d.page_content))
                for d in found
            ]
        )
    return store, ranked, len(store.store), embeddings.embedder, t1 - t0, time.perf_counter() - t1


RUNNERS = {"llama-index": llama_index_run, "langchain": langchain_run}


# ------------------------------------------------------------------------------------------------- main
def score(queries, ranked) -> dict:
    ranks = []
    for q, found in zip(queries, ranked):
        rank = next((r + 1 for r, (d, a, b) in enumerate(found) if hits(q, d, a, b)), None)
        ranks.append(rank)
    n = len(queries)
    out = {f"hit@{k}": sum(r is not None and r <= k for r in ranks) / n for k in KS}
    out["doc@1"] = sum(bool(found) and found[0][0] == q["doc"] for q, found in zip(queries, ranked)) / n
    out["ranks"] = ranks
    return out


def table(runs: list[dict], n_queries: int) -> str:
    head = ("framework", "strategy", "method", "reach", "chunks", "hit@1", "hit@5", "doc@1", "index s")
    rows = [head]
    for r in runs:
        rows.append(
            (
                r["framework"],
                r["strategy"],
                r["method"],
                str(r["reach"]),
                str(r["chunks"]),
                *(f"{round(r[m] * n_queries)}/{n_queries} {100 * r[m]:.0f}%" for m in ("hit@1", "hit@5", "doc@1")),
                f"{r['index_seconds']:.0f}",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--framework", choices=(*FRAMEWORKS, "both"), default="both")
    ap.add_argument("--docs", type=int, default=16, help="the first N bundled addresses (at most 39)")
    ap.add_argument("--queries-per-doc", type=int, default=4)
    ap.add_argument("--method", default="pi", help="extension method compared with 'none' (e.g. pi, gp, rp)")
    ap.add_argument("--target-length", type=int, default=8192)
    ap.add_argument("--no-baseline", action="store_true", help="skip the 'none' runs (the model's trained window)")
    ap.add_argument("--chunk-size", type=int, default=256, help="model tokens per chunk")
    ap.add_argument("--chunk-overlap", type=int, default=0)
    ap.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    ap.add_argument("--model", default="default", help="embedding model (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the configuration, queries and results here")
    args = ap.parse_args(argv)
    for name in ("docs", "queries_per_doc", "target_length", "chunk_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.chunk_overlap < args.chunk_size:
        ap.error("--chunk-overlap must be in [0, chunk size)")
    return args


def main(argv=None) -> dict:
    """Run the comparison; prints the table and returns ``{"config", "queries", "runs", "table"}`` (what ``--json``
    writes) and ``"indexes"``: ``{(framework, strategy, method): VectorStoreIndex | InMemoryVectorStore}``."""
    args = parse_args(argv)
    ids, texts = corpus(args.docs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path() if args.model == "default" else args.model)
    tokenizer.model_max_length = 10**9  # whole addresses are tokenised to place the queries (no model input)
    queries = make_queries(ids, texts, tokenizer, args.queries_per_doc, args.seed)
    if not queries:
        raise SystemExit("no deep-sentence queries in these addresses")
    frameworks = FRAMEWORKS if args.framework == "both" else (args.framework,)
    methods = list(dict.fromkeys((args.method,) if args.no_baseline else ("none", args.method)))
    runs, indexes = [], {}
    for framework in frameworks:
        for method in methods:
            for strategy in args.strategies:
                print(
                    f"[{framework} {strategy} {method}] indexing {len(ids)} addresses ...", file=sys.stderr, flush=True
                )
                index, ranked, n_chunks, embedder, index_s, query_s = RUNNERS[framework](
                    ids,
                    texts,
                    queries,
                    strategy,
                    method,
                    args.target_length,
                    args.chunk_size,
                    args.chunk_overlap,
                    args.model,
                )
                indexes[framework, strategy, method] = index
                runs.append(
                    {
                        "framework": framework,
                        "strategy": strategy,
                        "method": method,
                        "reach": embedder.target_length,
                        "chunks": n_chunks,
                        **score(queries, ranked),
                        "index_seconds": round(index_s, 1),
                        "query_seconds": round(query_s, 1),
                    }
                )
                print(
                    f"[{framework} {strategy} {method}] "
                    + ", ".join(f"{m} {runs[-1][m]:.3f}" for m in ("hit@1", "hit@5", "doc@1"))
                    + f" ({index_s:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    lengths = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    result = {
        "config": {
            **vars(args),
            "documents": ids,
            "document_tokens": lengths,
            "deep_tokens": DEEP_TOKENS,
            "query_words": [MIN_WORDS, MAX_WORDS],
            "ks": list(KS),
        },
        "queries": queries,
        "runs": runs,
        "table": table(runs, len(queries)),
    }
    print(
        f"{len(queries)} deep-sentence queries over {len(ids)} addresses ({min(lengths)}-{max(lengths)} tokens), "
        f"chunks of {args.chunk_size} tokens"
    )
    print(result["table"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    result["indexes"] = indexes
    return result


if __name__ == "__main__":
    main()
