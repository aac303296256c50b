"""Why does the anchor FlexAttention forward cost ~20 ms per call inside the 1.1B train step (3.9 ms isolated)? (H200)

Wraps the compiled flex call the anchor attention uses, times every call inside the model with CUDA events (no-grad
forward, grad forward, gradient-checkpointed train step), captures the first call's exact inputs (q/k/v with their
strides, the block mask) and replays them alone: no-grad forward, grad forward, forward+backward, kernel options.
Writes results/anchor_step_probe.json.

    python -m benchmarks.probe_anchor_step [--seq 32768]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._util import cuda_time_ms, environment, write_json
from benchmarks.bench_anchor import llama_1b_config, packed_batch
from longctx_plugins.attention.kernels import flex as flex_kernel

OPTION_SWEEP = {
    "default": None,
    "rows_safe": {"ROWS_GUARANTEED_SAFE": True},
    "tma": {"USE_TMA": True},
    "m128_n128_w8_s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "bwd_m64_n128_w8": {
        "bwd_BLOCK_M1": 64,
        "bwd_BLOCK_N1": 128,
        "bwd_BLOCK_M2": 128,
        "bwd_BLOCK_N2": 64,
        "bwd_num_warps": 8,
        "bwd_num_stages": 3,
    },
}


class Recorder:
    def __init__(self):
        self.real = flex_kernel._flex
        self.events, self.captured = [], None

    def __call__(self, device=None):
        flex = self.real(device)

        def timed(q, k, v, **kw):
            if self.captured is None:
                self.captured = {
                    "q": q.detach().clone(),
                    "k": k.detach().clone(),
                    "v": v.detach().clone(),
                    "kw": dict(kw),
                    "grad": torch.is_grad_enabled(),
                    "strides": [list(t.stride()) for t in (q, k, v)],
                    "dtype": str(q.dtype),
                    "requires_grad": [t.requires_grad for t in (q, k, v)],
                }
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = flex(q, k, v, **kw)
            e.record()
            self.events.append((s, e))
            return out

        return timed

    def take(self):
        torch.cuda.synchronize()
        ms = [s.elapsed_time(e) for s, e in self.events]
        self.events = []
        return {
            "calls": len(ms),
            "mean_ms": round(sum(ms) / max(1, len(ms)), 3),
            "min_ms": round(min(ms), 3) if ms else None,
            "max_ms": round(max(ms), 3) if ms else None,
        }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=32768)
    args = ap.parse_args()
    from transformers import LlamaForCausalLM

    rec = Recorder()
    flex_kernel._flex = rec  # every flex call of the model goes through it
    cfg = llama_1b_config(args.seq)
    batch = packed_batch(args.seq)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.set_attn_implementation("anchor")
    model.config.use_cache = False
    out = {**environment(), "seq_len": args.seq, "in_model": {}}

    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(**batch)
        rec.take()
        model(**batch)
    out["in_model"]["forward_no_grad"] = rec.take()
    for _ in range(2):
        model(**batch).loss.backward()
    rec.take()
    loss = model(**batch).loss
    out["in_model"]["forward_grad_no_ckpt"] = rec.take()
    loss.backward()
    model.zero_grad(set_to_none=True)
    del loss
    model.gradient_checkpointing_enable()
    for _ in range(2):
        model(**batch).loss.backward()
    rec.take()
    model(**batch).loss.backward()
    out["in_model"]["train_step_ckpt_forward_calls"] = rec.take()
    print(out["in_model"], flush=True)

    cap = rec.captured
    bm = cap["kw"]["block_mask"]
    out["captured"] = {k: cap[k] for k in ("strides", "dtype", "requires_grad", "grad")}
    out["captured"]["shape"] = list(cap["q"].shape) + [cap["k"].shape[1]]
    out["captured"]["kw"] = {
        k: (v if isinstance(v, (int, float, bool, type(None), dict)) else type(v).__name__)
        for k, v in cap["kw"].items()
    }
    out["captured"]["block_mask"] = {
        "kv_blocks": int(bm.kv_num_blocks.sum()),
        "full_kv_blocks": int(bm.full_kv_num_blocks.sum()) if bm.full_kv_num_blocks is not None else None,
        "block_size": list(bm.BLOCK_SIZE),
        "shape": list(bm.shape),
    }
    del model
    torch.cuda.empty_cache()

    flex = rec.real("cuda")
    kw = {k: v for k, v in cap["kw"].items() if k != "kernel_options"}
    replay = {}
    with torch.no_grad():
        ref_default = flex(cap["q"], cap["k"], cap["v"], **kw).float()
    for name, opts in OPTION_SWEEP.items():
        q, k, v = (cap[n].clone().requires_grad_() for n in ("q", "k", "v"))
        g = torch.randn_like(q)

        def fwd():
            return flex(q, k, v, kernel_options=opts, **kw)

        def fwd_bwd():
            fwd().backward(g)

        try:
            with torch.no_grad():
                ref = fwd()
                nograd = cuda_time_ms(fwd)
            got = fwd()
            err = float((got.float() - ref.float()).abs().max())
            err_default = float((ref.float() - ref_default).abs().max())
            del got
            grad_fwd = cuda_time_ms(lambda: fwd().detach())
            both = cuda_time_ms(fwd_bwd, warmup=2, iters=5)
            replay[name] = {
                "fwd_no_grad_ms": round(nograd, 3),
                "fwd_grad_ms": round(grad_fwd, 3),
                "fwd_bwd_ms": round(both, 3),
                "max_abs_diff_grad_vs_no_grad": err,
                "max_abs_diff_vs_default_options": err_default,
            }
        except Exception as exc:  # an option the compiler rejects: report it
            replay[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(name, replay[name], flush=True)
    out["replay_captured_inputs"] = replay
    write_json(out, "anchor_step_probe.json")


if __name__ == "__main__":
    main()
