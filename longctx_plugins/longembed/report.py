"""Results tables (terminal / Markdown), mteb-format JSON files and the score-vs-length plot.

Results are ``{run: {task: summary}}`` with the summaries of :func:`~longctx_plugins.longembed.stats.summarize`
(plain :func:`~longctx_plugins.longembed.evaluate` results work too: they just have no spread or interval).
"""

from __future__ import annotations

import json

from .chunk_tasks import CHUNK_TASKS
from .files import write_text_atomic
from .tasks import MTEB_NAMES


def _length(split: str):
    tail = split.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _tasks_and_splits(all_results: dict) -> list[tuple[str, list[str]]]:
    tasks = []
    for res in all_results.values():
        for t in res:
            if t not in tasks:
                tasks.append(t)
    out = []
    for t in tasks:
        splits = []
        for res in all_results.values():
            for s in res.get(t, {}).get("splits", {}):
                if s not in splits:
                    splits.append(s)
        out.append((t, splits))
    return out


def _score(mean, std=None) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _interval(lo, hi) -> str:
    return "-" if lo is None else f"{100 * lo:.1f}-{100 * hi:.1f}"


METRIC_LABELS = {"ndcg_at_1": "nDCG@1", "ndcg_at_10": "nDCG@10"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _main_metrics(all_results: dict) -> dict[str, str]:
    """``{task: its main metric}``, in the order the tasks first appear."""
    out = {}
    for res in all_results.values():
        for t, r in res.items():
            out.setdefault(t, r.get("main_metric", "ndcg_at_1"))
    return out


def scores_note(all_results: dict) -> str:
    """The line saying which metric each task's scores are, e.g. "Scores: main score x100 (nDCG@1 for passkey,
    needle; nDCG@10 for contextual)."."""
    by_metric: dict[str, list[str]] = {}
    for t, m in _main_metrics(all_results).items():
        by_metric.setdefault(metric_label(m), []).append(t)
    parts = "; ".join(f"{m} for {', '.join(ts)}" for m, ts in by_metric.items())
    return f"Scores: main score x100 ({parts})."


def table_rows(
    all_results: dict, intervals: bool = False, metric: str | None = None
) -> tuple[list[str], list[list[list[str]]]]:
    """One block per task, one row per run; columns: the task's splits then the average main score (x100):
    ``mean`` or ``mean ± std over seeds``; with ``intervals`` the bootstrap 95% intervals instead. With ``metric``:
    that metric (mean over seeds) for the tasks whose main metric it is not. A chunk task's run column is headed
    ``strategy`` (its runs are strategies), and every task cell names the metric."""
    layout = _tasks_and_splits(all_results)
    mains = _main_metrics(all_results)
    blocks = []
    for t, splits in layout:
        if metric is not None and mains[t] == metric:
            continue
        shown = metric or mains[t]
        block = [
            ["task", "strategy" if t in CHUNK_TASKS else "method"] + [str(_length(s) or s) for s in splits] + ["avg"]
        ]
        for run, res in all_results.items():
            if t not in res:
                continue
            r = res[t]
            label = f"{t} [{metric_label(shown)}]"
            if metric is not None:
                values = [r["splits"][s][metric] for s in splits if s in r["splits"]]
                cells = [_score(r["splits"][s][metric]) if s in r["splits"] else "-" for s in splits]
                block.append([label, run] + cells + [_score(sum(values) / len(values))])
                continue
            if intervals:
                if "ci95" not in r:
                    continue
                cells = [
                    _interval(r["splits"][s].get("main_score_ci95_low"), r["splits"][s].get("main_score_ci95_high"))
                    if s in r["splits"]
                    else "-"
                    for s in splits
                ] + [_interval(*r["ci95"])]
            else:
                cells = [
                    _score(r["splits"][s]["main_score"], r["splits"][s].get("main_score_std"))
                    if s in r["splits"]
                    else "-"
                    for s in splits
                ] + [_score(r["main_score"], r.get("std"))]
            block.append([label, run] + cells)
        if len(block) > 1:
            blocks.append(block)
    return [t for t, _ in layout], blocks


def _render(blocks, markdown: bool) -> list[str]:
    out = []
    for block in blocks:
        widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
        for n, row in enumerate(block):
            cells = [c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            out.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
            if n == 0:
                out.append(
                    ("|" + "|".join("-" * (w + 2) for w in widths) + "|")
                    if markdown
                    else "  ".join("-" * w for w in widths)
                )
        out.append("")
    return out


def format_table(all_results: dict, markdown: bool = False) -> str:
    """The scores table (``mean ± std`` over seeds when there are several), then the 95% bootstrap intervals."""
    _, blocks = table_rows(all_results)
    out = _render(blocks, markdown)
    _, ci_blocks = table_rows(all_results, intervals=True)
    if ci_blocks:
        seeds = max((len(r.get("seeds") or [None]) for res in all_results.values() for r in res.values()), default=1)
        pooled = f", pooled over {seeds} seeds" if seeds > 1 else ""
        out.append(
            f"{'**' if markdown else ''}95% bootstrap intervals over queries{pooled} (x100){'**' if markdown else ''}"
        )
        out.append("")
        out += _render(ci_blocks, markdown)
    _, other = table_rows(all_results, metric="ndcg_at_1")
    if other:
        out.append(
            f"{'**' if markdown else ''}nDCG@1 x100 of the tasks scored by another main metric (mean over "
            f"seeds){'**' if markdown else ''}"
        )
        out.append("")
        out += _render(other, markdown)
    return "\n".join(out)


def write_mteb_json(path: str, task_name: str, result: dict, evaluation_time: float, mteb_version: str | None):
    """An mteb ``TaskResult`` file. Beside mteb's metrics, each split's entry carries the evaluator's
    ``main_score_ci95_low`` / ``main_score_ci95_high``, ``n_queries``, ``n_seeds`` and (several seeds)
    ``main_score_std`` (scalars, which mteb loads as further scores)."""
    scores = {}
    for split, s in result["splits"].items():
        entry = {k: v for k, v in s.items() if k != "evaluation_time"}
        entry.update(hf_subset="default", languages=["eng-Latn"])
        scores[split] = [entry]
    doc = {
        "dataset_revision": "longctx-plugins-local",
        "task_name": MTEB_NAMES.get(task_name, task_name),
        "mteb_version": mteb_version or "n/a",
        "scores": scores,
        "evaluation_time": evaluation_time,
        "kg_co2_emissions": None,
    }
    write_text_atomic(path, json.dumps(doc, indent=2))


def plot(all_results: dict, path: str, title: str = "") -> str | None:
    """Score vs length per run: the mean line and a shaded band for its bootstrap 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthetic = [(t, s) for t, s in _tasks_and_splits(all_results) if any(_length(x) for x in s)]
    mains = _main_metrics(all_results)
    if not synthetic:
        return None
    fig, axes = plt.subplots(1, len(synthetic), figsize=(5.5 * len(synthetic), 4), squeeze=False)
    for ax, (t, _) in zip(axes[0], synthetic):
        for run, res in all_results.items():
            if t not in res:
                continue
            pts = sorted((_length(s), v) for s, v in res[t]["splits"].items() if _length(s))
            xs = [p[0] for p in pts]
            (line,) = ax.plot(
                xs,
                [100 * p[1]["main_score"] for p in pts],
                marker="o",
                label=run,
                linestyle="--" if run == "bm25" else "-",
                color="gray" if run == "bm25" else None,
            )
            if all("main_score_ci95_low" in p[1] for p in pts):
                ax.fill_between(
                    xs,
                    [100 * p[1]["main_score_ci95_low"] for p in pts],
                    [100 * p[1]["main_score_ci95_high"] for p in pts],
                    color=line.get_color(),
                    alpha=0.15,
                    linewidth=0,
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel(f"{metric_label(mains[t])} (x100), band: bootstrap 95%")
        ax.set_ylim(-2, 102)
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
