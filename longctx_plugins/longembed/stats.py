"""Scores with their noise: mean and spread over seeds, and bootstrap 95% intervals over queries.

The interval of a split resamples its queries (pooled over seeds, with replacement); the interval of a task's average
resamples the queries of each split independently (stratified) and averages the split means, as the average itself
does. A fixed generator seed makes every interval reproducible.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000
BOOT_SEED = 0


def bootstrap_ci(groups: list[list[float]], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float]:
    """95% percentile interval of the mean over ``groups`` of each group's mean, resampling within groups."""
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    for values in groups:
        v = np.asarray(values, dtype=np.float64)
        stats += v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    stats /= len(groups)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _std(values) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(per_seed: dict) -> dict:
    """Combine one task's :func:`~longctx_plugins.longembed.evaluate` results over seeds (``{seed: result}``; the seed
    is None for a real task) into ``{"main_score", "main_metric", "std", "ci95", "seeds", "splits", "per_seed"}``.

    ``main_score`` and each split's metrics are means over seeds; ``std`` (and each split's ``main_score_std``) is
    the sample standard deviation over seeds (None for one seed); ``ci95`` (and each split's ``main_score_ci95_low``
    / ``_high``) is the bootstrap interval over queries pooled over seeds.
    """
    results = list(per_seed.values())
    first = results[0]
    splits, pooled = {}, {}
    for split in first["splits"]:
        entries = [r["splits"][split] for r in results]
        s = {k: float(np.mean([e[k] for e in entries])) for k in entries[0] if k != "evaluation_time"}
        s["evaluation_time"] = float(sum(e.get("evaluation_time", 0.0) for e in entries))
        pooled[split] = [v for r in results for v in r["per_query"][split].values()]
        lo, hi = bootstrap_ci([pooled[split]])
        std = _std([e["main_score"] for e in entries])
        s.update(main_score_ci95_low=lo, main_score_ci95_high=hi, n_queries=len(pooled[split]), n_seeds=len(results))
        if std is not None:
            s["main_score_std"] = std
        splits[split] = s
    averages = [r["main_score"] for r in results]
    seeds = [s for s in per_seed if s is not None]
    return {
        "main_score": float(np.mean(averages)),
        "main_metric": first["main_metric"],
        "std": _std(averages),
        "ci95": list(bootstrap_ci(list(pooled.values()))),
        "seeds": seeds or None,
        "splits": splits,
        "per_seed": {
            str(seed): {"main_score": r["main_score"], "splits": {k: v["main_score"] for k, v in r["splits"].items()}}
            for seed, r in per_seed.items()
            if seed is not None
        },
    }
