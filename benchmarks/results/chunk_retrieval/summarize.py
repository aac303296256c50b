"""One table of every experiment in this folder, read from the evaluator's own outputs (results.json and
run_config.json of each sub-folder): per experiment, task and run, the settings that differ between experiments and
the main score (x100) per length, with the mean ± std over seeds where there are several.

    python benchmarks/results/chunk_retrieval/summarize.py > benchmarks/results/chunk_retrieval/summary.md
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = ("chunk_size", "chunk_overlap", "window_overlap", "target_length", "seeds", "n_queries", "n_docs")


def rows(folder: str):
    with open(os.path.join(HERE, folder, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(HERE, folder, "run_config.json")) as f:
        config = json.load(f)
    settings = {k: config.get(k) for k in SETTINGS}
    for run, by_task in results.items():
        for task, r in by_task.items():
            yield task, folder, run, settings, r


def cell(split: dict, metric: str) -> str:
    value = f"{100 * split[metric]:.1f}"
    std = split.get("main_score_std") if metric == split.get("_main") else None
    return value + (f" ± {100 * std:.1f}" if std is not None else "")


def main() -> int:
    folders = sorted(d for d in os.listdir(HERE) if os.path.isfile(os.path.join(HERE, d, "results.json")))
    by_task: dict = {}
    for folder in folders:
        for task, *rest in rows(folder):
            by_task.setdefault(task, []).append(rest)
    for task, entries in by_task.items():
        main_metric = entries[0][3]["main_metric"]
        lengths = sorted({int(s.rsplit("_", 1)[1]) for *_, r in entries for s in r["splits"]})
        for metric in dict.fromkeys((main_metric, "ndcg_at_1")):
            label = {"ndcg_at_10": "nDCG@10", "ndcg_at_1": "nDCG@1"}[metric]
            print(f"### {task}: {label} x100{' (main score)' if metric == main_metric else ''}\n")
            print("| experiment | run | chunk | window overlap | target | seeds | " + " | ".join(map(str, lengths))
                  + " |")
            print("|---|---|---|---|---|---|" + "---|" * len(lengths))
            for folder, run, st, r in entries:
                cells = []
                for n in lengths:
                    s = r["splits"].get(f"test_{n}")
                    cells.append("-" if s is None else cell({**s, "_main": main_metric}, metric))
                seeds = ",".join(map(str, st["seeds"] or []))
                overlap = st["window_overlap"] if run.startswith("late") else "-"
                overlap = "default" if overlap is None else overlap
                target = "-" if run in ("naive", "bm25") or run.endswith(":none") else st["target_length"]
                print(f"| {folder} | {run} | {st['chunk_size']} | {overlap} | {target} | {seeds} | "
                      + " | ".join(cells) + " |")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
