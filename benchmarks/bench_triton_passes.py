"""The fused Triton pass kernel (attention.kernels.triton_passes) against SDPA causal attention and the current
multi-pass path (one attention per pass, merged by log-sum-exp), on the GPU (results/triton_passes.json).

    python -m benchmarks.bench_triton_passes [--methods self_extend,dca,string] [--lengths 32768,131072] [--gqa]
        [--config 128,64,8,3]

bf16, one sequence, 32 query heads x 128 (``--gqa``: 8 key heads), q/k rotated at their true positions; method
parameters as bench_self_extend picks them (trained length 4096), keep_trained_window on and off. Correctness first:
the fused kernel's first and last 1024 query rows against the exact dense reference (fails loudly above 3e-2).
``--config BLOCK_M,BLOCK_N,num_warps,num_stages`` fixes the launch parameters (else Triton autotunes; the chosen
config is reported). TFLOP/s counts causal FLOPs ``2 * 2 * B * H * L * L * D / 2``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import bench_self_extend as se_bench
from benchmarks._util import environment, time_ms, write_json
from longctx_plugins.attention import method_layer, positional
from longctx_plugins.attention.kernels import triton_passes
from longctx_plugins.ops import passes as P

H, D = se_bench.H, se_bench.D


def flops(seq_len: int, heads: int = H) -> float:
    return 2 * 2 * heads * seq_len * seq_len * D / 2


def case(method, seq_len, keep, q, k, v, pos, inv, config):
    params = se_bench.parameters(method, seq_len, keep)
    mod = se_bench.Mod(params, method)
    passes, _ = method_layer.layer_passes(se_bench._Plan(), mod, params, True, pos)

    def fused():
        return triton_passes.attention(
            q, k, v, pos, pos, passes, inv, causal=True, scale=D**-0.5, config=config, contiguous=True
        )[0]  # prefill without padding: positions are the indices

    with torch.no_grad():
        reason = triton_passes.unsupported_reason(q, k, v, passes, pos, pos)
        if reason:
            raise SystemExit(f"fused kernel unsupported for {method}: {reason}")
        out = fused()
        err = 0.0
        r = H // k.shape[1]
        for lo in (seq_len - 1024, 0):
            sl = slice(lo, lo + 1024)
            rows = torch.arange(lo, lo + 1024, device=q.device)
            mask = torch.arange(seq_len, device=q.device)[None, :] <= rows[:, None]
            ref = P.dense_attention(
                q[:, : 4 * r, sl],
                k[:, :4],
                v[:, :4],
                pos[:, sl],
                pos,
                passes,
                inv,
                mask=mask[None, None],
                scale=D**-0.5,
            )
            err = max(err, float((out[:, : 4 * r, sl].float() - ref).abs().max()))
        if not err < 3e-2:
            raise SystemExit(f"FUSED KERNEL WRONG: {method} L={seq_len} keep={keep}: max abs err {err:.4g} vs exact")
        fused_ms = time_ms(fused, q.device)
        chosen = None
        tuner = triton_passes._kernel()._tuned.get(D)
        if config is None and tuner is not None and getattr(tuner, "best_config", None) is not None:
            chosen = str(tuner.best_config)
        multi = None
        if k.shape[1] == H:  # the current path takes the model's layout (repeats kv heads itself)
            from transformers.masking_utils import causal_mask_function

            plan = positional.MASK_FUNCTIONS[method](
                1, seq_len, seq_len, config=mod.config, device=q.device, mask_function=causal_mask_function
            )
            multi = time_ms(
                lambda: positional.positional_attention_forward(mod, q, k, v, plan, scaling=D**-0.5, position_ids=pos)[
                    0
                ],
                q.device,
            )
    return {
        "method": method,
        "keep_trained_window": keep,
        "seq_len": seq_len,
        "passes": [p.name for p in passes],
        "max_abs_err_vs_exact": round(err, 5),
        "fused_ms": round(fused_ms, 3),
        "multi_pass_ms": None if multi is None else round(multi, 3),
        "fused_config": chosen or config,
        "fused_tflops": round(flops(seq_len) / fused_ms / 1e9, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="self_extend,dca,string")
    ap.add_argument("--lengths", default="32768,131072")
    ap.add_argument("--gqa", action="store_true", help="8 key/value heads (the multi-pass path is then not timed)")
    ap.add_argument("--config", default=None, help="BLOCK_M,BLOCK_N,num_warps,num_stages (default: autotune)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_triton_passes needs a CUDA GPU")
    config = None
    if args.config:
        m, n, w, s = (int(x) for x in args.config.split(","))
        config = {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
    dtype = torch.bfloat16
    result = {
        **environment(),
        "heads": H,
        "kv_heads": 8 if args.gqa else H,
        "head_dim": D,
        "dtype": "bfloat16",
        "trained_length": se_bench.TRAINED,
        "config": config,
        "cases": [],
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        raise SystemExit("triton is not installed") from None
    for seq_len in [int(x) for x in args.lengths.split(",")]:
        q, k, v, pos, inv = se_bench.inputs(seq_len, "cuda", dtype)
        if args.gqa:
            k, v = k[:, :8].contiguous(), v[:, :8].contiguous()
        base = se_bench.sdpa_ms(
            q,
            k.repeat_interleave(H // k.shape[1], 1) if args.gqa else k,
            v.repeat_interleave(H // v.shape[1], 1) if args.gqa else v,
        )
        for method in args.methods.split(","):
            for keep in (True, False):
                c = case(method, seq_len, keep, q, k, v, pos, inv, config)
                c.update(
                    sdpa_causal_ms=round(base, 3),
                    sdpa_tflops=round(flops(seq_len) / base / 1e9, 1),
                    fused_vs_sdpa=round(c["fused_ms"] / base, 3),
                    multi_pass_vs_sdpa=None if c["multi_pass_ms"] is None else round(c["multi_pass_ms"] / base, 3),
                )
                print(c, flush=True)
                result["cases"].append(c)
                write_json(result, "triton_passes.json")
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
