"""Chunk-level retrieval tasks: ``contextual``, ``passkey_chunks``, ``needle_chunks``.

A task's documents are split into chunks by the task itself, with one chunker for every strategy: the sentence-aware
token chunker of the embedder (:func:`longctx_plugins.embedding.chunking.chunk_spans`) over the evaluated model's
token starts, ``chunk_size`` tokens at most (default 128), consecutive chunks sharing up to ``chunk_overlap`` tokens of
whole sentences (default 0). The corpus of split ``test_<L>`` is every chunk of every document of length L; the
relevant chunks of a query are those that hold (part of) its key sentence: the fact (``contextual``), the pass-key
sentences (``passkey_chunks``) or the needle (``needle_chunks``). Every strategy ranks this identical set of chunks.

Besides ``corpus`` / ``queries`` / ``qrels`` a chunk task carries ``documents`` (split -> {doc_id: text}) and
``chunks`` (split -> {chunk_id: [doc_id, start, end]}, character offsets; ``corpus[chunk_id]`` is
``documents[doc_id][start:end]``), which late chunking and whole-document runs read. Main score: nDCG@10.
"""

from __future__ import annotations

import random

import numpy as np

CHUNK_TASKS = ("contextual", "passkey_chunks", "needle_chunks")
DEFAULT_CHUNK_SIZE = 128
DEFAULT_CHUNK_OVERLAP = 0
MAIN_SCORE = "ndcg_at_10"


class Chunker:
    """``chunker(text) -> [(start, end), ...]``: the task's chunks of ``text`` (character spans)."""

    def __init__(self, tokenizer, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP):
        from ..embedding.chunking import chunk_spans

        chunk_spans("x", np.zeros(1, dtype=np.int64), chunk_size, chunk_overlap)  # validates the sizes now
        self.tokenizer, self.chunk_size, self.chunk_overlap = tokenizer, chunk_size, chunk_overlap
        self._spans = chunk_spans

    def __call__(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        starts = np.asarray([a for a, _ in enc["offset_mapping"]], dtype=np.int64)
        return self._spans(text, starts, self.chunk_size, self.chunk_overlap)


def contextual_split(tokenizer, length: int, n_queries: int, n_docs: int, seed: int, chunker: Chunker):
    """The ``contextual`` documents of one length (:class:`.contextual.ContextualDoc`, ``text`` filled in) and the
    indices of the documents that get a query."""
    from .contextual import build_document, make_subjects_and_facts
    from .synthetic import _Counter, sotu_sentences

    rng = random.Random(f"contextual:{seed}:{length}")
    count, sentences = _Counter(tokenizer), sotu_sentences()
    docs = make_subjects_and_facts(rng, n_docs)
    for d in docs:
        d.text = build_document(rng, sentences, d, length, count, chunker)
    return docs, rng.sample(range(n_docs), n_queries)


def _contextual(tokenizer, length: int, n_queries: int, n_docs: int, seed: int, chunker: Chunker):
    split = f"test_{length}"
    docs, picked = contextual_split(tokenizer, length, n_queries, n_docs, seed, chunker)
    ids = [f"{split}_doc{i}" for i in range(n_docs)]
    return (
        {i: d.text for i, d in zip(ids, docs)},
        {i: d.fact for i, d in zip(ids, docs)},
        {f"{split}_q{i}": docs[i].query for i in picked},
        {f"{split}_q{i}": ids[i] for i in picked},
    )


def generate(
    name: str,
    tokenizer,
    lengths,
    n_queries: int,
    n_docs: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
):
    """``(corpus, queries, qrels, documents, chunks)`` per split ``test_<L>`` of chunk task ``name``."""
    from .synthetic import generate_with_needles

    if name not in CHUNK_TASKS:
        raise ValueError(f"unknown chunk task {name!r}; expected one of {CHUNK_TASKS}")
    if n_queries > n_docs:
        raise ValueError("n_queries must not exceed n_docs (each query has one relevant document).")
    chunker = Chunker(tokenizer, chunk_size, chunk_overlap)
    per_split = {}
    if name == "contextual":
        for length in lengths:
            per_split[f"test_{length}"] = _contextual(tokenizer, length, n_queries, n_docs, seed, chunker)
    else:
        c, q, r, needles = generate_with_needles(name[: -len("_chunks")], tokenizer, lengths, n_queries, n_docs, seed)
        for split in c:
            per_split[split] = (
                c[split],
                needles[split],
                q[split],
                {qid: next(iter(rel)) for qid, rel in r[split].items()},
            )
    corpus, queries, qrels, documents, chunks = {}, {}, {}, {}, {}
    for split, (docs, keys, qs, gold_doc) in per_split.items():
        corpus[split], chunks[split], gold = {}, {}, {}
        for doc_id, text in docs.items():
            a = text.index(keys[doc_id])
            b = a + len(keys[doc_id])
            gold[doc_id] = []
            for j, (s, e) in enumerate(chunker(text)):
                cid = f"{doc_id}_c{j:03d}"
                corpus[split][cid], chunks[split][cid] = text[s:e], [doc_id, s, e]
                if s < b and a < e:
                    gold[doc_id].append(cid)
        documents[split], queries[split] = dict(docs), dict(qs)
        qrels[split] = {qid: {cid: 1 for cid in gold[d]} for qid, d in gold_doc.items()}
    return corpus, queries, qrels, documents, chunks


def check_entry(t: dict, name: str, lengths, n_queries: int, n_docs: int) -> str | None:
    """The problem with a cached chunk task (``Task.to_dict()`` form), or None."""
    if t["name"] != name or t["main_score"] != MAIN_SCORE:
        return f"it holds task {t['name']!r} scored by {t['main_score']!r}"
    splits = [f"test_{n}" for n in lengths]
    for part in ("corpus", "queries", "qrels", "documents", "chunks"):
        if not isinstance(t.get(part), dict) or list(t[part]) != splits:
            return f"its {part} splits are not {', '.join(splits)}"
    for split in splits:
        corpus, queries, qrels = t["corpus"][split], t["queries"][split], t["qrels"][split]
        docs, chunks = t["documents"][split], t["chunks"][split]
        if not all(isinstance(x, dict) for x in (corpus, queries, qrels, docs, chunks)):
            return f"split {split} is not made of JSON objects"
        if len(docs) != n_docs or len(queries) != n_queries:
            return f"split {split} has {len(docs)} documents and {len(queries)} queries"
        if not all(isinstance(v, str) and v for v in (*docs.values(), *queries.values())):
            return f"split {split} has a text that is not a non-empty string"
        if set(chunks) != set(corpus):
            return f"split {split}: its chunk table and its corpus name different chunks"
        for cid, span in chunks.items():
            ok = (
                isinstance(span, list)
                and len(span) == 3
                and span[0] in docs
                and all(isinstance(v, int) and not isinstance(v, bool) for v in span[1:])
                and 0 <= span[1] < span[2] <= len(docs[span[0]])
            )
            if not ok or docs[span[0]][span[1] : span[2]] != corpus[cid]:
                return f"split {split}: chunk {cid} is not the text of its span"
        if set(qrels) != set(queries) or not all(
            isinstance(rel, dict) and rel and set(rel) <= set(corpus) and set(rel.values()) == {1}
            for rel in qrels.values()
        ):
            return f"split {split} has judgements that do not match its queries and chunks"
    return None
