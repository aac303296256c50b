"""``evaluate(embedder, tasks)``: dense retrieval scores per split and task (plus a BM25 baseline)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

from .metrics import dense_results, retrieval_scores
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
        retriever.index(bm25s.tokenize([corpus[d] for d in dids], stopwords="en", show_progress=False,
                                       return_ids=False), show_progress=False)
        out = {}
        for q in qids:
            toks = bm25s.tokenize(queries[q], stopwords="en", show_progress=False, return_ids=False)[0]
            scores = retriever.get_scores(toks)
            out[q] = {d: float(s) for d, s in zip(dids, scores)}
        return out


def _split_key(task: Task, split: str) -> str:
    h = hashlib.sha1()
    for part in (task.corpus[split], task.queries[split], task.qrels[split]):
        h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def evaluate(embedder, tasks, cache_dir: str | None = None, progress: bool = True, run_name: str | None = None):
    """Score ``embedder`` (anything with ``encode_queries`` / ``encode_documents``, or :class:`BM25`) on ``tasks``
    (names or :class:`Task`). Returns ``{task: {"main_score", "splits": {split: {metric: value}}}}``.

    With ``cache_dir``, each split's scores are stored as soon as they exist and reused on the next run, so an
    interrupted evaluation resumes where it stopped.
    """
    from tqdm.auto import tqdm

    tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
    out = {}
    for task in tasks:
        splits = {}
        bar = tqdm(task.splits, desc=f"{run_name or 'eval'}:{task.name}", disable=not progress, leave=False)
        for split in bar:
            path = None
            if cache_dir:
                path = os.path.join(cache_dir, task.name, f"{split}-{_split_key(task, split)}.json")
                if os.path.exists(path):
                    with open(path) as f:
                        splits[split] = json.load(f)
                    continue
            start = time.perf_counter()
            corpus, queries, qrels = task.corpus[split], task.queries[split], task.qrels[split]
            if isinstance(embedder, BM25):
                results = embedder.results(corpus, queries)
            else:
                dids, qids = list(corpus), list(queries)
                d_emb = embedder.encode_documents([corpus[d] for d in dids])
                q_emb = embedder.encode_queries([queries[q] for q in qids])
                results = dense_results(q_emb, d_emb, qids, dids)
            scores = retrieval_scores(results, qrels)
            scores["main_score"] = scores[task.main_score]
            scores["evaluation_time"] = round(time.perf_counter() - start, 3)
            splits[split] = scores
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(scores, f)
                os.replace(tmp, path)
        out[task.name] = {"main_score": float(np.mean([s["main_score"] for s in splits.values()])),
                          "main_metric": task.main_score, "splits": splits}
    return out
