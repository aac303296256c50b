"""Decoding with a KV cache at long context: plain SDPA against the position methods (results/decode.json).

    python -m benchmarks.bench_decode [--contexts 32768,131072] [--layers 8] [--steps 32]

An 8-layer model of the 1.1B Llama shape (hidden 2048, 32 query / 4 KV heads of 128, random weights, bf16), trained
length 8192, each method extended to the context. Per method and cache (dynamic, static): one prefill of the context,
then greedy decode steps timed one by one (median, CUDA events; the step is what ``generate`` runs per token; the
prefill runs through ``generate``, which builds the cache). Correctness first: the first decode step's logits against the last
row of a prefill over the same tokens. With ``--profile`` one step per method is profiled (top CUDA kernels).
"""
from __future__ import annotations

import argparse
import torch

import longctx_plugins  # noqa: F401
from benchmarks._util import environment, time_ms, write_json
from longctx_plugins import extend

TRAINED = 8192
METHODS = ("sdpa", "self_extend", "dca", "string")


def model_for(layers: int, method: str, context: int, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=TRAINED,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    if method == "sdpa":
        model.set_attn_implementation("sdpa")
    else:
        extend(model, method, context + 1024)
    return model


@torch.inference_mode()
def run(model, kind, context, steps, device, profile=False):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 32000, (1, context), generator=g).to(device)
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
        times.append(time_ms(lambda: model(input_ids=tok, past_key_values=cache, use_cache=True), device,
                             warmup=0, iters=1))
    times.sort()
    prof = None
    if profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            model(input_ids=tok, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
        prof = p.key_averages().table(sort_by="cuda_time_total", row_limit=12)
    return {"step_ms_median": round(times[len(times) // 2], 3), "step_ms_min": round(times[0], 3),
            "first_step_logits_rel_err_vs_prefill": round(err, 5)}, prof


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--caches", default="dynamic,static")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = {**environment(), "layers": args.layers, "shape": "1.1B Llama (2048 hidden, 32/4 heads of 128)",
              "dtype": str(dtype).replace("torch.", ""), "trained_length": TRAINED, "cases": [], "profiles": {}}
    for context in [int(x) for x in args.contexts.split(",")]:
        base = {}
        for method in args.methods.split(","):
            model = model_for(args.layers, method, context, device, dtype)
            for kind in args.caches.split(","):
                r, prof = run(model, kind, context, args.steps, device, profile=args.profile and kind == "dynamic")
                r["decode_tokens_per_s"] = round(1000 / r["step_ms_median"], 1)
                if method == "sdpa":
                    base[kind] = r["step_ms_median"]
                r.update(method=method, cache=kind, context=context,
                         ratio_vs_sdpa=round(r["step_ms_median"] / base[kind], 3) if kind in base else None)
                print(r, flush=True)
                result["cases"].append(r)
                if prof:
                    result["profiles"][f"{method}-{context}"] = prof
                write_json(result, "decode.json")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
