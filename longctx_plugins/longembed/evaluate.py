"""``evaluate(embedder, tasks)``: dense retrieval scores per split and task (plus a BM25 baseline)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

from .cache import check_split_scores, read_json, write_json
from .metrics import dense_results, metric_names, per_query_scores
from .tasks import Task, get_task

logger = logging.getLogger(__name__)


class BM25:
    """Lexical BM25 baseline (``bm25s``, Lucene variant, English stop words); the same interface as a dense run."""

    name = "bm25"

    def results(self, corpus: dict, queries: dict) -> dict[str, dict[str, float]]:
        import bm25s

        # bm25s sets its own logger to DEBUG on import ("Building index from tokens" per index); keep it quiet
        logging.getLogger("bm25s").setLevel(max(logging.getLogger("bm25s").level, logging.WARNING))
        dids, qids = list(corpus), list(queries)
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize([corpus[d] for d in dids], stopwords="en", show_progress=False, return_ids=False),
            show_progress=False,
        )
        out = {}
        for q in qids:
            toks = bm25s.tokenize(queries[q], stopwords="en", show_progress=False, return_ids=False)[0]
            scores = retriever.get_scores(toks)
            out[q] = {d: float(s) for d, s in zip(dids, scores)}
        return out


def _split_key(task: Task, split: str) -> str:
    """Hash of the split's data (corpus, queries, qrels; for a chunk task also its documents and chunk spans) and the
    task's main metric."""
    h = hashlib.sha1(task.main_score.encode())
    parts = [task.corpus[split], task.queries[split], task.qrels[split]]
    if task.chunks:
        parts += [task.documents[split], task.chunks[split]]
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _check_split(task: Task, split: str):
    corpus, queries, qrels = task.corpus[split], task.queries.get(split, {}), task.qrels.get(split, {})
    judged = [q for q, rel in qrels.items() if q in queries and any(d in corpus for d in rel)]
    if not corpus or not queries or not judged:
        what = "no documents" if not corpus else "no queries" if not queries else "no query with a judged document"
        raise ValueError(f"task {task.name!r}, split {split!r}: {what}; nothing to score.")


def split_results(embedder, task: Task, split: str) -> dict[str, dict[str, float]]:
    """``{query_id: {doc_id: score}}`` of ``embedder`` on one split: every query scored against every text of the
    corpus (for a chunk task: every chunk, whatever the strategy)."""
    corpus, queries = task.corpus[split], task.queries[split]
    if isinstance(embedder, BM25):
        results = embedder.results(corpus, queries)
    else:
        dids, qids = list(corpus), list(queries)
        chunk_vectors = getattr(embedder, "chunk_vectors", None)
        if chunk_vectors is not None and not task.chunks:
            raise ValueError(
                f"{type(embedder).__name__} embeds the chunks of a chunk task; task {task.name!r} has no chunks"
            )
        if chunk_vectors is not None:  # late chunking / whole-document vectors, from the documents
            d_emb = chunk_vectors(task.documents[split], task.chunks[split], dids)
        else:  # each text of the corpus on its own (for a chunk task: naive chunking)
            d_emb = embedder.encode_documents([corpus[d] for d in dids])
        q_emb = embedder.encode_queries([queries[q] for q in qids])
        results = dense_results(q_emb, d_emb, qids, dids)
        tie_offsets = getattr(embedder, "tie_offsets", None) if chunk_vectors is not None else None
        if tie_offsets is not None:  # whole-document vectors: chunks of one document ordered by a hash, not by id
            offsets = dict(zip(dids, tie_offsets(dids)))
            results = {q: {d: s + offsets[d] for d, s in r.items()} for q, r in results.items()}
    return results


def _score_split(embedder, task: Task, split: str) -> tuple[dict, dict]:
    start = time.perf_counter()
    results = split_results(embedder, task, split)
    per_query = per_query_scores(results, task.qrels[split])
    scores = {key: float(np.mean([m[key] for m in per_query.values()])) for key in metric_names()}
    scores["main_score"] = scores[task.main_score]
    scores["evaluation_time"] = round(time.perf_counter() - start, 3)
    return scores, {q: m[task.main_score] for q, m in per_query.items()}


def _warnings_above(bar):
    """Iterate ``bar``; what is printed to stderr meanwhile (warnings) goes through ``tqdm.write``, on lines of its
    own above the bar instead of in the middle of its line."""
    import contextlib
    import sys

    from tqdm.contrib import DummyTqdmFile

    redirect = contextlib.redirect_stderr(DummyTqdmFile(sys.stderr)) if not bar.disable else contextlib.nullcontext()
    with redirect:
        yield from bar


def evaluate(
    embedder,
    tasks,
    cache_dir: str | None = None,
    progress: bool = True,
    run_name: str | None = None,
    cache_log: dict | None = None,
):
    """Score ``embedder`` (anything with ``encode_queries`` / ``encode_documents``, or :class:`BM25`, or a chunk
    scorer of :mod:`.strategies` with ``encode_queries`` / ``chunk_vectors``) on ``tasks`` (names or :class:`Task`;
    a chunk task's corpus is its chunks, so a plain embedder chunks naively). Returns ``{task: {"main_score",
    "main_metric", "splits": {split: {metric: value}},
    "per_query": {split: {query_id: main-metric value}}}}``.

    With ``cache_dir``, each split's scores are stored as soon as they exist and reused on the next run, so an
    interrupted evaluation resumes where it stopped. ``cache_dir`` must be specific to the scorer (the caller keys
    it by model, method and settings); within it, entries are keyed by the split's data. Unusable entries are
    recomputed with a :class:`~longctx_plugins.longembed.cache.CacheWarning`. ``cache_log`` (a dict) receives
    ``{task: {"from_cache": n, "computed": m, "dir": cache_dir}}``, added up over calls.
    """
    from tqdm.auto import tqdm

    tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
    names = metric_names()
    out = {}
    for task in tasks:
        splits, per_query = {}, {}
        for split in task.splits:
            _check_split(task, split)
        bar = tqdm(task.splits, desc=f"{run_name or 'eval'}:{task.name}", disable=not progress, leave=False)
        for split in _warnings_above(bar):
            path = entry = None
            if cache_dir:
                key = _split_key(task, split)
                path = os.path.join(cache_dir, task.name, f"{split}-{key}.json")
                entry = read_json(path, lambda e: check_split_scores(e, key, task.main_score, task.qrels[split], names))
            if entry is not None:
                splits[split], per_query[split] = entry["scores"], entry["per_query"]
            else:
                splits[split], per_query[split] = _score_split(embedder, task, split)
                if path:
                    write_json(path, {"key": key, "scores": splits[split], "per_query": per_query[split]})
            if cache_log is not None and cache_dir:
                log = cache_log.setdefault(task.name, {"from_cache": 0, "computed": 0, "dir": cache_dir})
                log["from_cache" if entry is not None else "computed"] += 1
        out[task.name] = {
            "main_score": float(np.mean([s["main_score"] for s in splits.values()])),
            "main_metric": task.main_score,
            "splits": splits,
            "per_query": per_query,
        }
    return out
