"""Where a decode step's time goes: one layer's attention alone, and ``generate`` as users run it, profiled
(results/decode_step_probe.json).

    python -m benchmarks.probe_decode_step [--context 32768] [--methods sdpa,self_extend,dca,string]

1. One layer's decode attention (1 query row, 32 query / 4 KV heads of 128, bf16, a static cache of ``context + 64``
   slots): plain SDPA against each method's decode path (:func:`longctx_plugins.attention.positional_decode.
   decode_forward`), eager and compiled (``torch.compile``, default mode), CUDA-event medians; each method's output
   is first checked against the float32 dense reference. Eager: one call (the values every layer of a forward shares
   already built), the first layer of a forward (they are built), 8 calls in a row per call (the layers of one
   forward), and the host's time per call without waiting for the GPU.
2. ``generate(..., cache_implementation="static")`` (transformers compiles the decode step) of the 8-layer 1.1B
   shape after ``context`` tokens: the profile of 16 new tokens (top CUDA kernels, kernel and graph-launch counts) and
   the inductor counters (CUDA-graph skips).
"""

from __future__ import annotations

import argparse
import time

import torch

import longctx_plugins  # noqa: F401
from benchmarks._util import cuda_time_ms, environment, write_json
from benchmarks.bench_decode import _generate, _ids, model_for


def _layer_case(method: str, context: int, dev: str = "cuda") -> dict:
    from transformers import LlamaConfig

    from longctx_plugins import extend
    from longctx_plugins.attention import method_layer, positional_decode
    from longctx_plugins.ops import passes as P

    cfg = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=4,
        num_hidden_layers=1,
        vocab_size=16,
        max_position_embeddings=8192,
        intermediate_size=16,
        head_dim=128,
    )
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    if method != "sdpa":
        extend(model, method, context + 1024)
    attn = model.model.layers[0].self_attn
    slots = context + 64
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, 32, 1, 128, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 4, slots, 128, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 4, slots, 128, device=dev, dtype=torch.bfloat16, generator=g)
    mask = (torch.arange(slots, device=dev) < context)[None, None, None]  # a static cache: empty slots after
    pos = torch.tensor([[context - 1]], device=dev)
    scale = 128**-0.5

    if method == "sdpa":

        def fn():
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scale, enable_gqa=True
            )
    else:

        def fn():
            return positional_decode.decode_forward(attn, q, k, v, mask, 0.0, scale, {"position_ids": pos})[0]

        params = method_layer.method_parameters(attn)
        ref = P.dense_attention(
            q.float(),
            k.float(),
            v.float(),
            pos,
            torch.arange(slots, device=dev)[None],
            positional_decode.step_passes(attn, params)[0],
            method_layer.inv_freq(attn.config, params, q.device),
            mask=mask,
            scale=scale,
        )
        err = float((fn().float().transpose(1, 2) - ref).abs().max())
        assert err < 3e-2, f"{method}: decode attention differs from the float32 reference by {err}"
    if dev != "cuda":  # a CPU smoke run: correctness only
        return {"method": method}
    from longctx_plugins.attention import decode

    def first_layer():  # nothing shared yet: what the first layer of a forward builds
        decode._FORWARD[0] = None
        return fn()

    def eight_layers():  # 8 calls in a row, as the layers of one forward (the later ones read the shared values)
        for _ in range(8):
            fn()

    with torch.inference_mode():
        eager = cuda_time_ms(fn, warmup=3, iters=20)
        first = cuda_time_ms(first_layer, warmup=3, iters=20)
        row = cuda_time_ms(eight_layers, warmup=3, iters=20) / 8
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - t0) / 200 * 1e6  # launch-side time per call (the GPU may still be busy)
        torch.cuda.synchronize()
        compiled = torch.compile(fn)
        comp = cuda_time_ms(compiled, warmup=3, iters=20)
    torch._dynamo.reset()
    return {
        "method": method,
        "eager_ms": round(eager, 4),
        "eager_first_layer_ms": round(first, 4),
        "eager_per_layer_8_in_a_row_ms": round(row, 4),
        "host_us_per_call": round(host, 1),
        "compiled_ms": round(comp, 4),
    }


def _generate_profile(method: str, context: int, new_tokens: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    model = model_for(8, method, context, torch.device("cuda"), torch.bfloat16)
    ids = _ids(model, context, torch.device("cuda"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.inference_mode():
        _generate(model, ids, new_tokens, "static", torch.device("cuda"))  # compiles
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            _generate(model, ids, new_tokens, "static", torch.device("cuda"))
            torch.cuda.synchronize()
    events = p.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    graphs = sum(e.count for e in events if e.key == "cudaGraphLaunch")
    inductor = {
        k: dict(v) for k, v in torch._dynamo.utils.counters.items() if k in ("inductor", "stats", "graph_break")
    }
    out = {
        "method": method,
        "kernel_launches": launches,
        "cuda_graph_launches": graphs,
        "counters": {
            k: {kk: vv for kk, vv in v.items() if "cudagraph" in kk or k != "inductor"} for k, v in inductor.items()
        },
        "top_kernels": p.key_averages().table(sort_by="cuda_time_total", row_limit=25),
    }
    del model
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--methods", default="sdpa,self_extend,dca,string")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of part 1's checks (no timings)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    result = {**environment(), "context": args.context, "layer": [], "generate": []}
    for m in methods:
        r = _layer_case(m, args.context, args.device)
        print(r, flush=True)
        result["layer"].append(r)
        write_json(result, "decode_step_probe.json")
    if not args.skip_generate:
        for m in methods:
            r = _generate_profile(m, args.context, args.new_tokens)
            print({k: v for k, v in r.items() if k != "top_kernels"}, flush=True)
            print(r["top_kernels"], flush=True)
            result["generate"].append(r)
            write_json(result, "decode_step_probe.json")


if __name__ == "__main__":
    main()
