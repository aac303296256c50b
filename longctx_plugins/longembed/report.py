"""Results tables (terminal / Markdown), mteb-format JSON files and the score-vs-length plot."""
from __future__ import annotations

import json
import os

from .tasks import MTEB_NAMES


def _length(split: str):
    tail = split.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def table_rows(all_results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per (task, run); columns: the task's splits then the average main score (x100)."""
    tasks = []
    for res in all_results.values():
        for t in res:
            if t not in tasks:
                tasks.append(t)
    blocks = []
    for t in tasks:
        splits = []
        for res in all_results.values():
            for s in res.get(t, {}).get("splits", {}):
                if s not in splits:
                    splits.append(s)
        cols = [str(_length(s) or s) for s in splits]
        block = [["task", "method"] + cols + ["avg"]]
        for run, res in all_results.items():
            if t not in res:
                continue
            r = res[t]
            block.append([t, run] + [f"{100 * r['splits'][s]['main_score']:.1f}" if s in r["splits"] else "-"
                                     for s in splits] + [f"{100 * r['main_score']:.1f}"])
        blocks.append(block)
    return tasks, blocks


def format_table(all_results: dict, markdown: bool = False) -> str:
    _, blocks = table_rows(all_results)
    out = []
    for block in blocks:
        widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
        for n, row in enumerate(block):
            cells = [c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            out.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
            if n == 0:
                out.append(("|" + "|".join("-" * (w + 2) for w in widths) + "|") if markdown
                           else "  ".join("-" * w for w in widths))
        out.append("")
    return "\n".join(out)


def write_mteb_json(path: str, task_name: str, result: dict, evaluation_time: float, mteb_version: str | None):
    scores = {}
    for split, s in result["splits"].items():
        entry = {k: v for k, v in s.items() if k != "evaluation_time"}
        entry.update(hf_subset="default", languages=["eng-Latn"])
        scores[split] = [entry]
    doc = {"dataset_revision": "longctx-plugins-local", "task_name": MTEB_NAMES.get(task_name, task_name),
           "mteb_version": mteb_version or "n/a", "scores": scores, "evaluation_time": evaluation_time,
           "kg_co2_emissions": None}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def plot(all_results: dict, path: str, title: str = "") -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, _ = table_rows(all_results)
    synthetic = [t for t in tasks if any(_length(s) for r in all_results.values() for s in r.get(t, {}).get("splits", {}))]
    if not synthetic:
        return None
    fig, axes = plt.subplots(1, len(synthetic), figsize=(5.5 * len(synthetic), 4), squeeze=False)
    for ax, t in zip(axes[0], synthetic):
        for run, res in all_results.items():
            if t not in res:
                continue
            pts = sorted((_length(s), 100 * v["main_score"]) for s, v in res[t]["splits"].items() if _length(s))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run,
                    linestyle="--" if run == "bm25" else "-", color="gray" if run == "bm25" else None)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel("nDCG@1 (x100)")
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
