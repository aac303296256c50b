"""How far context carries: the contextual task's per-query scores by the distance, in model tokens, from the
subject's name (the document's first sentence) to the fact sentence, for every run of an experiment.

Reads only the evaluator's own files: the experiment's run_config.json names its data file and each run's score
cache; the per-query scores come from the cached split entries (found by the split's data key, so an entry of other
data is never read).

    python benchmarks/results/chunk_retrieval/depth_analysis.py contextual [contextual_seeds ...]
"""
import json
import os
import sys

from transformers import AutoTokenizer

from longctx_plugins.embedder import default_model_path
from longctx_plugins.embedding.chunking import sentence_spans
from longctx_plugins.longembed.evaluate import _split_key
from longctx_plugins.longembed.tasks import Task

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKETS = (0, 128, 512, 1024, 2048, 4096, 8192)


def bucket(d: int) -> str:
    lo = max(b for b in BUCKETS if b <= d)
    hi = min((b for b in BUCKETS if b > d), default=None)
    return f"{lo}-{hi}" if hi else f">={lo}"


def analyse(experiment: str, tok) -> dict:
    folder = os.path.join(HERE, experiment)
    with open(os.path.join(folder, "run_config.json")) as f:
        config = json.load(f)
    per_run: dict = {}
    for name, info in config["cache"]["data"].items():
        if not name.startswith("contextual/"):
            continue
        with open(os.path.join(folder, "data", os.path.basename(info["path"]))) as f:
            task = Task.from_dict(json.load(f)["task"])
        for split in task.splits:
            key = _split_key(task, split)
            distance = {}
            for qid, rel in task.qrels[split].items():
                (cid,) = rel
                doc_id, start, _ = task.chunks[split][cid]
                text = task.documents[split][doc_id]
                # tokens from the end of the first sentence (the intro) to the start of the fact's chunk
                intro_end = sentence_spans(text)[0][1]
                distance[qid] = len(tok(text[intro_end:start], add_special_tokens=False)["input_ids"])
            for run, tasks in config["cache"]["scores"].items():
                if "contextual" not in tasks:
                    continue
                path = os.path.join(folder, "cache", os.path.basename(tasks["contextual"]["dir"]), "contextual",
                                    f"{split}-{key}.json")
                with open(path) as f:
                    scores = json.load(f)["per_query"]
                for qid, d in distance.items():
                    per_run.setdefault(run, {}).setdefault(bucket(d), []).append(scores[qid])
    return per_run


def main(experiments) -> int:
    tok = AutoTokenizer.from_pretrained(default_model_path())
    tok.model_max_length = 10**9
    for experiment in experiments:
        per_run = analyse(experiment, tok)
        labels = [bucket(b) for b in BUCKETS if any(bucket(b) in v for v in per_run.values())]
        print(f"### {experiment}: main score x100 by tokens between the subject's sentence and the fact's chunk\n")
        print("| run | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        counts = {lab: len(next(iter(per_run.values())).get(lab, [])) for lab in labels}
        for run, buckets in per_run.items():
            print(f"| {run} | " + " | ".join(f"{100 * sum(buckets[b]) / len(buckets[b]):.1f}" if b in buckets else "-"
                                            for b in labels) + " |")
        print("| queries | " + " | ".join(str(counts[lab]) for lab in labels) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["contextual"]))
