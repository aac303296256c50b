"""Multi-GPU figures -> results/multi_gpu.json (run on a machine with >= 2 GPUs; see run_multi_gpu.sh).

    python -m benchmarks.bench_multi_gpu --embed --model PATH --runs DIR

``--embed``: LongContextEmbedder.encode of a 1,000-document corpus (256-32k tokens, log-uniform) on one GPU and on
all GPUs (``devices=[...]``); checks the embeddings are equal first, then reports tokens/s and the speed-up.
``--runs DIR``: collects the JSON files that tests/sp_equality.py and examples/train_anchor_sp.py wrote into DIR.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import time

import numpy as np
import torch

from benchmarks._util import environment, write_json
from benchmarks.bench_embedder import text_of
from longctx_plugins import LongContextEmbedder


def embed_scaling(model: str) -> dict:
    n_gpu = torch.cuda.device_count()
    emb = LongContextEmbedder(model, method="pi", target_length=32768, device="cuda:0", dtype=torch.float16)
    emb.batch_size = 16
    rng = random.Random(0)
    lengths = [int(math.exp(rng.uniform(math.log(256), math.log(32768)))) for _ in range(1000)]
    corpus = [text_of(emb.tokenizer, n, i) for i, n in enumerate(lengths)]
    tokens = sum(len(t) for t in emb.tokenize(corpus))
    out = {"documents": len(corpus), "tokens": tokens, "length_range": [256, 32768], "dtype": "float16", "runs": []}
    ref = None
    for devices in ([f"cuda:{i}" for i in range(k)] for k in sorted({1, n_gpu})):
        emb.encode(corpus[:32], devices=devices, show_progress_bar=False)  # warm-up: replicas, kernels
        for d in devices:
            torch.cuda.synchronize(d)
        t = time.perf_counter()
        got = emb.encode(corpus, devices=devices, show_progress_bar=False)
        for d in devices:
            torch.cuda.synchronize(d)
        s = time.perf_counter() - t
        ref = got if ref is None else ref
        run = {
            "gpus": len(devices),
            "seconds": round(s, 2),
            "tokens_per_s": round(tokens / s),
            "max_abs_diff_vs_one_gpu": float(np.abs(got - ref).max()),
        }
        out["runs"].append(run)
        print(run, flush=True)
    assert all(r["max_abs_diff_vs_one_gpu"] < 2e-3 for r in out["runs"]), out
    out["speedup"] = round(out["runs"][-1]["tokens_per_s"] / out["runs"][0]["tokens_per_s"], 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed", action="store_true")
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", default=None, help="folder with the JSON of the equality / training runs")
    args = ap.parse_args()
    path = os.path.join(
        os.environ.get("BENCH_OUT") or os.path.join(os.path.dirname(__file__), "results"), "multi_gpu.json"
    )
    result = json.load(open(path)) if os.path.exists(path) else {}
    result.update(environment())
    for pkg in ("deepspeed", "accelerate"):
        try:
            result[pkg] = __import__(pkg).__version__
        except ImportError:
            result[pkg] = None
    result["gpu_count"] = torch.cuda.device_count()
    if args.runs:
        for f in sorted(glob.glob(os.path.join(args.runs, "*.json"))):
            name = os.path.basename(f)[:-5]
            section = "equality" if name.startswith("equality") else "training"
            result.setdefault(section, {})[name] = json.load(open(f))
    if args.embed:
        result["embedder"] = embed_scaling(args.model)
    write_json(result, "multi_gpu.json")


if __name__ == "__main__":
    main()
