"""Decoding with a KV cache at long context: plain SDPA against the position methods (results/decode.json).

    python -m benchmarks.bench_decode [--contexts 32768,131072] [--layers 8] [--steps 32] [--new-tokens 64]
    python -m benchmarks.bench_decode --tiny --device cpu      # a CPU smoke run (tiny model, short contexts)

An 8-layer model of the 1.1B Llama shape (hidden 2048, 32 query / 4 KV heads of 128, random weights, bf16), trained
length 8192, each method extended to the context.

1. Correctness first (float32, a short context past the trained length, per method): greedy ``generate`` with the
   static cache compiled as transformers compiles it, the same uncompiled, with the dynamic cache, and recomputing
   the whole sequence for every token must give the same tokens.
2. What users run: ``model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False,
   cache_implementation="static")`` (transformers compiles the decode step; on CPU only with ``--tiny``, through an
   ``eager``-backend compile config) and the same with the dynamic cache (not compiled), after one warm-up generate.
   Decode tokens/s = (new tokens - 1) / (time of that generate - time of a 1-token generate, the prefill); the
   number of graphs dynamo captured during the timed generate (0: no recompile) is recorded.
3. Per-step numbers (``--steps``, 0 skips): one prefill of the context, then greedy uncompiled decode steps timed one
   by one (median, CUDA events), the first step's logits checked against the last row of a prefill over the same
   tokens. With ``--profile`` one step per method is profiled (top CUDA kernels).
"""

from __future__ import annotations

import argparse
import time

import torch

import longctx_plugins  # noqa: F401
from benchmarks._util import environment, time_ms, write_json
from longctx_plugins import extend

TRAINED = 8192
METHODS = ("sdpa", "self_extend", "dca", "string")


TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
TINY_TRAINED = 32
VOCAB = {"full": 32000, "tiny": TINY["vocab_size"]}


def model_for(layers: int, method: str, context: int, device, dtype, tiny: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = (
        TINY
        if tiny
        else dict(
            hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000
        )
    )
    cfg = LlamaConfig(
        num_hidden_layers=layers,
        max_position_embeddings=TINY_TRAINED if tiny else TRAINED,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **shape,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    if method == "sdpa":
        model.set_attn_implementation("sdpa")
    else:
        extend(model, method, context + (64 if tiny else 1024))
    return model


def _ids(model, context, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.config.vocab_size, (1, context), generator=g).to(device)


def _compile_config(device):
    """None on CUDA (transformers' own default: inductor, reduce-overhead); elsewhere an eager-backend config that
    lets generate compile on any device (transformers compiles only on accelerators by default)."""
    if device.type == "cuda":
        return None
    from transformers import CompileConfig

    cfg = CompileConfig(backend="eager", fullgraph=True, mode=None)
    cfg._compile_all_devices = True
    return cfg


def _generate(model, ids, new_tokens, cache, device, compile_config=None, disable_compile=False):
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    if compile_config is not None:
        kw["compile_config"] = compile_config
    return model.generate(
        ids,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        disable_compile=disable_compile,
        **kw,
    )


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@torch.inference_mode()
def check_tokens(model, context, new_tokens, device):
    """Greedy tokens of compiled-static, uncompiled-static and dynamic-cache generate and of recomputing the whole
    sequence per token; raises if any differs. Returns the case's record."""
    ids = _ids(model, context, device, seed=2)
    torch._dynamo.reset()
    before = _graphs()
    compiled = _generate(model, ids, new_tokens, "static", device, _compile_config(device))
    graphs = _graphs() - before
    plain = _generate(model, ids, new_tokens, "static", device, disable_compile=True)
    dynamic = _generate(model, ids, new_tokens, "dynamic", device)
    seq = ids
    for _ in range(new_tokens):
        nxt = model(input_ids=seq, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    torch._dynamo.reset()
    rec = {
        "context": context,
        "new_tokens": new_tokens,
        "graphs_captured_by_compiled_generate": graphs,
        **{
            f"tokens_equal_{k}": bool(torch.equal(v, seq))
            for k, v in (("compiled_static", compiled), ("uncompiled_static", plain), ("dynamic", dynamic))
        },
    }
    if not all(v for k, v in rec.items() if k.startswith("tokens_equal")):
        raise AssertionError(f"tokens differ from a full recompute: {rec}")
    return rec


@torch.inference_mode()
def generate_speed(model, cache, context, new_tokens, device):
    """Tokens/s of ``generate`` as users call it (static: compiled by transformers), after one warm-up."""
    ids = _ids(model, context, device)
    cfg = _compile_config(device) if cache == "static" else None
    torch._dynamo.reset()
    before = _graphs()
    _generate(model, ids, new_tokens, cache, device, cfg)  # warm-up (compiles the decode step)
    graphs_warm = _graphs()

    def timed(n):
        _sync(device)
        t = time.perf_counter()
        out = _generate(model, ids, n, cache, device, cfg)
        _sync(device)
        return time.perf_counter() - t, out

    total, out = timed(new_tokens)
    graphs_timed = _graphs() - graphs_warm
    prefill, _ = timed(1)
    decode = max(total - prefill, 1e-9)
    torch._dynamo.reset()
    return {
        "generate_s": round(total, 4),
        "prefill_s": round(prefill, 4),
        "generate_decode_tokens_per_s": round((new_tokens - 1) / decode, 1),
        "generate_tokens_per_s_incl_prefill": round(new_tokens / total, 2),
        "graphs_compiled_in_warmup": graphs_warm - before,
        "graphs_compiled_in_timed_run": graphs_timed,
        "new_tokens": int(out.shape[1] - ids.shape[1]),
    }


@torch.inference_mode()
def run(model, kind, context, steps, device, profile=False):
    ids = _ids(model, context, device)
    kw = {}
    if kind == "static":
        from transformers import StaticCache

        kw["past_key_values"] = StaticCache(config=model.config, max_cache_len=context + steps + 8)
    # prefill through generate, then the per-token steps generate runs, timed one by one
    gen = model.generate(ids, max_new_tokens=1, do_sample=False, return_dict_in_generate=True, **kw)
    cache, tok = gen.past_key_values, gen.sequences[:, -1:]
    first = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[0, -1].float()
    # correctness: the same tokens in one prefill
    full = model(input_ids=gen.sequences, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    err = float((first - full).abs().max() / full.abs().max())
    assert err < 0.05, f"{kind} cache at {context}: first decode step differs from the prefill by {err:.3f} (relative)"
    tok = first.argmax().view(1, 1)
    times = []
    for _ in range(steps):
        times.append(
            time_ms(lambda: model(input_ids=tok, past_key_values=cache, use_cache=True), device, warmup=0, iters=1)
        )
    times.sort()
    prof = None
    if profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            model(input_ids=tok, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
        prof = p.key_averages().table(sort_by="cuda_time_total", row_limit=12)
    return {
        "step_ms_median": round(times[len(times) // 2], 3),
        "step_ms_min": round(times[0], 3),
        "first_step_logits_rel_err_vs_prefill": round(err, 5),
    }, prof


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--contexts", default=None, help="comma-separated prompt lengths (default 32768,131072; --tiny: 48,96)"
    )
    ap.add_argument("--layers", type=int, default=None, help="default 8 (--tiny: 2)")
    ap.add_argument("--steps", type=int, default=32, help="per-step timed decode steps (0: skip that part)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens each timed generate makes")
    ap.add_argument(
        "--check-context",
        type=int,
        default=None,
        help="context of the token check (default trained length + 256; --tiny: 40)",
    )
    ap.add_argument("--check-tokens", type=int, default=16)
    ap.add_argument(
        "--check-methods",
        default=None,
        help="methods whose tokens are checked first (default: every timed method; 'none': timings only)",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--caches", default="dynamic,static")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random Llama (hidden 64, trained length 32): a CPU smoke run of the whole benchmark",
    )
    ap.add_argument("--out", default="decode.json", help="file name under benchmarks/results (or $BENCH_OUT)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layers = args.layers or (2 if args.tiny else 8)
    contexts = [int(x) for x in (args.contexts or ("48,96" if args.tiny else "32768,131072")).split(",")]
    trained = TINY_TRAINED if args.tiny else TRAINED
    check_context = args.check_context or (40 if args.tiny else trained + 256)
    methods, caches = args.methods.split(","), args.caches.split(",")
    result = {
        **environment(),
        "layers": layers,
        "shape": "tiny Llama (64 hidden, 4/2 heads)" if args.tiny else "1.1B Llama (2048 hidden, 32/4 heads of 128)",
        "dtype": str(dtype).replace("torch.", ""),
        "trained_length": trained,
        "generate": {
            "new_tokens": args.new_tokens,
            "compile": "transformers' default (inductor, reduce-overhead)"
            if device.type == "cuda"
            else "eager backend, fullgraph",
        },
        "token_checks": [],
        "generate_cases": [],
        "cases": [],
        "profiles": {},
    }
    # 1. correctness first: float32, a short context past the trained length
    checked = methods if args.check_methods is None else [m for m in args.check_methods.split(",") if m != "none"]
    for method in checked:
        model = model_for(layers, method, check_context, device, torch.float32, tiny=args.tiny)
        rec = check_tokens(model, check_context, args.check_tokens, device)
        rec["method"] = method
        print(rec, flush=True)
        result["token_checks"].append(rec)
        write_json(result, args.out)
        del model
    # 2. generate as users run it; 3. per-step numbers
    for context in contexts:
        base, base_gen = {}, {}
        for method in methods:
            model = model_for(layers, method, context, device, dtype, tiny=args.tiny)
            for kind in caches:
                g = generate_speed(model, kind, context, args.new_tokens, device)
                if method == "sdpa":
                    base_gen[kind] = g["generate_decode_tokens_per_s"]
                g.update(
                    method=method,
                    cache=kind,
                    context=context,
                    speed_vs_sdpa=round(g["generate_decode_tokens_per_s"] / base_gen[kind], 3)
                    if kind in base_gen
                    else None,
                )
                print(g, flush=True)
                result["generate_cases"].append(g)
                write_json(result, args.out)
                if args.steps <= 0:
                    continue
                r, prof = run(model, kind, context, args.steps, device, profile=args.profile and kind == "dynamic")
                r["decode_tokens_per_s"] = round(1000 / r["step_ms_median"], 1)
                if method == "sdpa":
                    base[kind] = r["step_ms_median"]
                r.update(
                    method=method,
                    cache=kind,
                    context=context,
                    ratio_vs_sdpa=round(r["step_ms_median"] / base[kind], 3) if kind in base else None,
                )
                print(r, flush=True)
                result["cases"].append(r)
                if prof:
                    result["profiles"][f"{method}-{context}"] = prof
                write_json(result, args.out)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
