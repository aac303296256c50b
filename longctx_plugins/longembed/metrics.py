"""Retrieval metrics with mteb's conventions (pytrec_eval semantics; ties broken by doc id, descending)."""

from __future__ import annotations

import math

import numpy as np

K_VALUES = (1, 3, 5, 10, 20, 100)


def metric_names(k_values=K_VALUES) -> tuple[str, ...]:
    """The keys :func:`query_metrics` returns."""
    return tuple(f"{m}_at_{k}" for k in k_values for m in ("ndcg", "recall", "precision", "mrr", "map"))


def rank(scores: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def query_metrics(ranking: list[str], relevant: dict[str, int], k_values=K_VALUES) -> dict[str, float]:
    rel = {d: r for d, r in relevant.items() if r > 0}
    out = {}
    ideal = sorted(rel.values(), reverse=True)
    for k in k_values:
        top = ranking[:k]
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
        out[f"ndcg_at_{k}"] = dcg / idcg if idcg else 0.0
        hits = sum(1 for d in top if d in rel)
        out[f"recall_at_{k}"] = hits / len(rel) if rel else 0.0
        out[f"precision_at_{k}"] = hits / k
        rr = 0.0
        for i, d in enumerate(top):
            if d in rel:
                rr = 1.0 / (i + 1)
                break
        out[f"mrr_at_{k}"] = rr
        ap, found = 0.0, 0
        for i, d in enumerate(top):
            if d in rel:
                found += 1
                ap += found / (i + 1)
        out[f"map_at_{k}"] = ap / len(rel) if rel else 0.0
    return out


def per_query_scores(
    results: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k_values=K_VALUES
) -> dict[str, dict[str, float]]:
    """``{query_id: {metric: value}}`` for every query of ``qrels`` (the values :func:`retrieval_scores` averages)."""
    return {q: query_metrics(rank(results.get(q, {})), rel, k_values) for q, rel in qrels.items()}


def retrieval_scores(
    results: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k_values=K_VALUES
) -> dict[str, float]:
    """Average per-query metrics over the queries that have relevant documents (as mteb does)."""
    per_query = list(per_query_scores(results, qrels, k_values).values())
    if not per_query:
        return {}
    return {key: float(np.mean([m[key] for m in per_query])) for key in per_query[0]}


def dense_results(q_emb: np.ndarray, d_emb: np.ndarray, qids, dids) -> dict[str, dict[str, float]]:
    sims = q_emb.astype(np.float32) @ d_emb.astype(np.float32).T
    return {q: {d: float(s) for d, s in zip(dids, row)} for q, row in zip(qids, sims)}
