"""Why late chunking loses to naive chunking on long documents here: its chunk vectors collapse towards their
document. For the first few documents of each length of an experiment's contextual data, the mean cosine between
two chunks of the same document and between chunks of different documents, per strategy (naive: each chunk alone;
late:<method>: late chunking with the model extended to --target-length, as the evaluator's runs do).

    python benchmarks/results/chunk_retrieval/collapse.py contextual 3 none,pi,gp,rp 8192 > collapse.md
"""
import json
import os
import sys

import numpy as np

from longctx_plugins import LongContextEmbedder
from longctx_plugins.longembed.strategies import LateChunking
from longctx_plugins.longembed.tasks import Task

HERE = os.path.dirname(os.path.abspath(__file__))


def main(experiment: str, n_docs: int, methods: list[str], target: int) -> int:
    folder = os.path.join(HERE, experiment)
    with open(os.path.join(folder, "run_config.json")) as f:
        config = json.load(f)
    path = os.path.basename(config["cache"]["data"]["contextual/seed0"]["path"])
    with open(os.path.join(folder, "data", path)) as f:
        task = Task.from_dict(json.load(f)["task"])
    scorers = {"naive": LongContextEmbedder("default", method="none", show_progress_bar=False)}
    for m in methods:
        scorers[f"late:{m}"] = LateChunking(LongContextEmbedder("default", method=m, target_length=target,
                                                                show_progress_bar=False))
    print(f"### Mean cosine between chunk vectors ({experiment}, seed 0, first {n_docs} documents of each length, "
          f"target length {target})\n")
    print("| length | run | same document | different documents | ratio |")
    print("|---|---|---|---|---|")
    for split in task.splits:
        docs = list(task.documents[split])[:n_docs]
        ids = [c for c, v in task.chunks[split].items() if v[0] in docs]
        owner = np.array([task.chunks[split][c][0] for c in ids])
        same = (owner[:, None] == owner[None, :]) & ~np.eye(len(ids), dtype=bool)
        other = owner[:, None] != owner[None, :]
        for name, scorer in scorers.items():
            if name == "naive":
                vecs = scorer.encode_documents([task.corpus[split][c] for c in ids])
            else:
                vecs = scorer.chunk_vectors({d: task.documents[split][d] for d in docs}, task.chunks[split], ids)
            cos = vecs @ vecs.T
            print(f"| {split.split('_')[1]} | {name} | {cos[same].mean():.3f} | {cos[other].mean():.3f} | "
                  f"{cos[same].mean() / cos[other].mean():.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.exit(main(a[0] if a else "contextual", int(a[1]) if len(a) > 1 else 3,
                  (a[2] if len(a) > 2 else "none,pi,gp,rp").split(","), int(a[3]) if len(a) > 3 else 8192))
