"""Position methods' prefill on the GPU (SelfExtend, DCA, STRING): correctness first, then forward timings against
SDPA causal attention of the same shape (results/self_extend.json, ``cases``: method, seq_len, ratio).

    python -m benchmarks.bench_self_extend [--methods self_extend,dca,string] [--lengths 32768,131072]

32 heads x 128, bf16, one sequence; q/k rotated at their true positions as a model hands them over. The trained
length is 4096 (the methods' parameters follow from it as ``extend`` picks them for each length, except self_extend's
window, fixed at 2048 where ``extend`` would pick 1024); the default keeps
inputs inside the trained window exact (``keep_trained_window``), and each case also runs the methods everywhere
(``keep_trained_window=False``). Correctness: the last and the first 1024 query rows against the exact dense path.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

import longctx_plugins  # noqa: F401
from benchmarks._util import environment, time_ms, write_json
from longctx_plugins.attention import fast_passes, method_layer, positional
from longctx_plugins.attention.kernels import fused_lse
from longctx_plugins.ops import passes as P
from longctx_plugins.ops import rope as rope_ops
from longctx_plugins.positions import rope_methods

H, D, TRAINED = 32, 128, 4096


class Cfg:
    max_position_embeddings = TRAINED
    head_dim, hidden_size, num_attention_heads = D, D * H, H

    def __init__(self, params, name):
        self.rope_parameters = params
        self._attn_implementation = name
        setattr(self, f"{name}_backend", "flex")


class Mod(torch.nn.Module):
    def __init__(self, params, name):
        super().__init__()
        self.is_causal, self.layer_idx, self.config = True, 0, Cfg(params, name)


def parameters(method: str, seq_len: int, keep: bool) -> dict:
    spec = rope_methods.ROPE_METHODS[method]
    p = spec.defaults(TRAINED, seq_len, {"window": 2048} if method == "self_extend" else {})
    return {
        "rope_type": method,
        **p,
        "rope_theta": 10000.0,
        "keep_trained_window": keep,
        "original_max_position_embeddings": TRAINED,
    }


def inputs(seq_len, device, dtype):
    pos = torch.arange(seq_len, device=device)[None]
    inv = rope_ops.default_inv_freq(D, 10000.0, device)
    torch.manual_seed(0)
    q = rope_ops.rotate(torch.randn(1, H, seq_len, D, device=device), pos, inv).to(dtype)
    k = rope_ops.rotate(torch.randn(1, H, seq_len, D, device=device), pos, inv).to(dtype)
    v = torch.randn(1, H, seq_len, D, device=device, dtype=dtype)
    return q, k, v, pos, inv


def case(method, seq_len, keep, q, k, v, pos, inv):
    from transformers.masking_utils import causal_mask_function

    params = parameters(method, seq_len, keep)
    mod = Mod(params, method)

    def plan():
        return positional.MASK_FUNCTIONS[method](
            1, seq_len, seq_len, config=mod.config, device=q.device, mask_function=causal_mask_function
        )

    shared = plan()  # one plan serves every layer of a forward: what a layer's call costs once it is built

    def run(mask=shared):
        return positional.positional_attention_forward(mod, q, k, v, mask, scaling=D**-0.5, position_ids=pos)[0]

    with torch.no_grad():
        out = run()
        passes, _ = method_layer.layer_passes(_Plan(), mod, params, True, pos)
        err = 0.0
        for lo in (seq_len - 1024, 0):  # the last query block (farthest distances) and the first
            sl = slice(lo, lo + 1024)
            mask = (
                torch.arange(seq_len, device=q.device)[None, :] <= torch.arange(lo, lo + 1024, device=q.device)[:, None]
            )
            ref = P.dense_attention(
                q[:, :8, sl], k[:, :8], v[:, :8], pos[:, sl], pos, passes, inv, mask=mask[None, None], scale=D**-0.5
            )
            err = max(err, float((out[:, sl, :8].float() - ref.transpose(1, 2)).abs().max()))
        assert err < 3e-2, (method, seq_len, err)
        ms = time_ms(run, q.device)
        first = time_ms(lambda: run(plan()), q.device, warmup=1, iters=3)  # a fresh plan: + block masks, layout checks
        opt_in = {}
        real = fast_passes._opted
        try:
            for variant in ("tiles", "window"):  # the same run with each opt-in kernel (the plan decides once)
                fast_passes._opted = lambda kernels, name, variant=variant: name == variant
                other = plan()
                diff = float((run(other).float() - out.float()).abs().max())
                assert diff < 3e-2, (method, seq_len, variant, diff)  # the default is checked against the exact path
                opt_in[variant] = time_ms(lambda other=other: run(other), q.device)
        finally:
            fast_passes._opted = real
        if PROFILE:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    return {
        "method": method,
        "keep_trained_window": keep,
        "seq_len": seq_len,
        "parameters": {k_: params[k_] for k_ in rope_methods.ROPE_METHODS[method].integers},
        "max_abs_err_vs_exact": round(err, 5),
        "fwd_ms": round(ms, 3),
        "tflops": round(4 * H * seq_len * seq_len * D / 2 / ms / 1e9, 1),
        "first_layer_with_plan_build_ms": round(first, 3),
        "fwd_ms_with_tiles": round(opt_in["tiles"], 3),
        "fwd_ms_with_window_kernel": round(opt_in["window"], 3),
    }


PROFILE = False


class _Plan:  # the pass list needs a plan only to memoise the sequence length of encoders
    def once(self, key, build):
        return build()


def sdpa_ms(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with (
        torch.no_grad(),
        (
            sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])
            if q.is_cuda
            else contextlib.nullcontext()
        ),
    ):
        return time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D**-0.5), q.device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="self_extend,dca,string")
    ap.add_argument("--lengths", default="32768,131072")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the code path (float32, small lengths)")
    ap.add_argument("--profile", action="store_true", help="print each case's top CUDA kernels")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    result = {
        **environment(),
        "heads": H,
        "head_dim": D,
        "dtype": str(dtype).replace("torch.", ""),
        "trained_length": TRAINED,
        "fused_kernel": None,
        "cases": [],
    }
    for seq_len in [int(x) for x in args.lengths.split(",")]:
        q, k, v, pos, inv = inputs(seq_len, args.device, dtype)
        result["fused_kernel"] = fused_lse.choose(("cudnn", "flash"), q)
        result["window_kernel_when_asked"] = fast_passes._window_kernel(q, k)
        base = sdpa_ms(q, k, v)
        for method in args.methods.split(","):
            for keep in (True, False):
                c = case(method, seq_len, keep, q, k, v, pos, inv)
                c.update(
                    sdpa_causal_fwd_ms=round(base, 3),
                    sdpa_tflops=round(4 * H * seq_len * seq_len * D / 2 / base / 1e9, 1),
                    ratio=round(c["fwd_ms"] / base, 3),
                    ratio_with_tiles=round(c["fwd_ms_with_tiles"] / base, 3),
                    ratio_with_window_kernel=round(c["fwd_ms_with_window_kernel"] / base, 3),
                )
                print(c, flush=True)
                result["cases"].append(c)
                write_json(result, "self_extend.json")
        del q, k, v
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
