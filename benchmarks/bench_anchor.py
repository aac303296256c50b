"""AnchorAttention on the H200: correctness first, then timings (writes results/anchor_attention.json).

python -m benchmarks.bench_anchor [--quick] [--flash] [--no-trainer]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import longctx_plugins  # noqa: F401
from benchmarks._util import cuda_time_ms, environment, write_json
from longctx_plugins.attention.anchor import anchor_attention_forward, anchor_mask
from longctx_plugins.ops.masks import doc_ids_from_cu_seqlens
from tests.references import anchor_by_documents

H, D = 32, 128
PEAK_TFLOPS = 790.0  # measured bf16 dense matmul rate on this GPU (device KINDS.md)


class Cfg:
    anchor_backend = "flex"
    anchor_flex_kernel_options = None


class Mod(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.is_causal, self.config = True, Cfg()


def documents(seq_len, n_docs, lo, hi, gen):
    """n_docs lengths in [lo, hi] scaled to fill seq_len - 1 tokens after the anchor."""
    raw = torch.randint(lo, hi + 1, (n_docs,), generator=gen).float()
    lens = (raw / raw.sum() * (seq_len - 1)).long().clamp(min=1)
    lens[-1] += (seq_len - 1) - lens.sum()
    return torch.cat([torch.tensor([0, 1]), 1 + lens.cumsum(0)]).to(torch.int32)


def useful_pairs(cu):
    lens = (cu[2:] - cu[1:-1]).double()
    return float(1 + (lens * (lens + 1) / 2 + lens).sum())  # anchor row + per doc: causal triangle + anchor column


def case(seq_len, n_docs, lo, hi, kernel_sweep):
    gen = torch.Generator().manual_seed(seq_len)
    cu = documents(seq_len, n_docs, lo, hi, gen).cuda()
    q, k, v = (torch.randn(1, H, seq_len, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mod = Mod()
    from transformers.masking_utils import causal_mask_function

    def make_mask():
        return anchor_mask(1, seq_len, seq_len, config=mod.config, device="cuda", mask_function=causal_mask_function)

    base = make_mask()
    # correctness first
    out, _ = anchor_attention_forward(mod, q, k, v, base, scaling=D**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    with torch.no_grad():
        ref = anchor_by_documents(q, k, v, doc_ids_from_cu_seqlens(cu, 1, seq_len), D**-0.5).transpose(1, 2)
    err = (out.float() - ref).abs().max().item()
    assert err < 5e-2, f"flex anchor differs from the reference by {err}"

    def fwd(opts=None, mask=None):
        return anchor_attention_forward(
            mod, q, k, v, base if mask is None else mask, scaling=D**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu
        )[0]

    def fwd_bwd():
        fwd().backward(torch.ones_like(q).transpose(1, 2))

    def fwd_bwd_with_mask_build():  # what one training forward pays: block mask built once per forward
        nonlocal base
        base = make_mask()
        fwd_bwd()

    sweep = {}
    best_opts, best_ms = None, float("inf")
    for name, opts in kernel_sweep.items():
        mod.config.anchor_flex_kernel_options = opts  # options are read once per forward, when its plan is bound
        plan = make_mask()
        try:
            with torch.no_grad():
                variant_err = (fwd(mask=plan).float() - ref).abs().max().item()
                assert variant_err < 5e-2, f"kernel options {name}: differs from the reference by {variant_err}"
                ms = cuda_time_ms(lambda: fwd(mask=plan))
        except Exception as exc:  # a config the compiler rejects
            sweep[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
            continue
        sweep[name] = round(ms, 3)
        if ms < best_ms:
            best_opts, best_ms = opts, ms
    del ref
    mod.config.anchor_flex_kernel_options = None  # headline figures: what the anchor attention uses by default
    base = make_mask()
    default_ms = sweep["package_default"]
    anchor_fwd_bwd = cuda_time_ms(fwd_bwd)
    anchor_fwd_bwd_mask = cuda_time_ms(fwd_bwd_with_mask_build, warmup=2, iters=5)

    def sdpa_fwd_bwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(torch.ones_like(q))

    sdpa_ms = cuda_time_ms(sdpa_fwd_bwd, warmup=2, iters=5)
    with torch.no_grad():
        sdpa_fwd = cuda_time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    pairs = useful_pairs(cu.cpu())
    return {
        "seq_len": seq_len,
        "num_docs": n_docs,
        "max_abs_err_vs_reference": err,
        "anchor_fwd_bwd_ms": round(anchor_fwd_bwd, 3),
        "anchor_fwd_bwd_incl_block_mask_ms": round(anchor_fwd_bwd_mask, 3),
        "sdpa_causal_fwd_bwd_ms": round(sdpa_ms, 3),
        "sdpa_causal_fwd_ms": round(sdpa_fwd, 3),
        "anchor_fwd_ms": default_ms,
        "speedup_fwd_bwd": round(sdpa_ms / anchor_fwd_bwd, 2),
        "useful_pair_fraction": round(pairs / (seq_len * seq_len), 5),
        "fwd_tflops_on_useful_pairs": round(4 * D * H * pairs / (default_ms * 1e-3) / 1e12, 1),
        "fwd_fraction_of_peak": round(4 * D * H * pairs / (default_ms * 1e-3) / 1e12 / PEAK_TFLOPS, 3),
        "kernel_options_sweep_fwd_ms": sweep,
        "fastest_options": best_opts,
        "fastest_fwd_fraction_of_peak": round(4 * D * H * pairs / (best_ms * 1e-3) / 1e12 / PEAK_TFLOPS, 3),
    }


def flash_case(seq_len, n_docs):
    """anchor_backend='flash' (flash-attn-4 varlen over per-document anchor copies): the same inputs as case(), plus
    the kernel alone (inputs already in varlen form) and q/k/v laid out [B, T, H, D] in memory as transformers'
    projections leave them (no transpose copy)."""
    from transformers.masking_utils import causal_mask_function

    from longctx_plugins.attention.kernels import flash4 as _flash
    from longctx_plugins.ops import varlen

    gen = torch.Generator().manual_seed(seq_len)
    cu = documents(seq_len, n_docs, 256, 8192, gen).cuda()
    q, k, v = (torch.randn(1, H, seq_len, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mod = Mod()
    mod.config.anchor_backend = "flash"
    mask = anchor_mask(1, seq_len, seq_len, config=mod.config, device="cuda", mask_function=causal_mask_function)

    def fwd(q=q, k=k, v=v):
        return anchor_attention_forward(mod, q, k, v, mask, scaling=D**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)[0]

    with torch.no_grad():  # correctness first
        ref = anchor_by_documents(q, k, v, doc_ids_from_cu_seqlens(cu, 1, seq_len), D**-0.5).transpose(1, 2)
        err = (fwd().float() - ref).abs().max().item()
    del ref
    assert err < 5e-2, f"flash anchor differs from the reference by {err}"
    grad_out = torch.ones(1, seq_len, H, D, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fwd_ms = cuda_time_ms(fwd)
    fwd_bwd_ms = cuda_time_ms(lambda: fwd().backward(grad_out))
    # q/k/v as transformers leaves them: [B, T, H, D] memory viewed as [B, H, T, D]
    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in (q, k, v))
    with torch.no_grad():
        fwd_hf_ms = cuda_time_ms(lambda: fwd(qt, kt, vt))
    fwd_bwd_hf_ms = cuda_time_ms(lambda: fwd(qt, kt, vt).backward(grad_out))
    # the kernel alone, on inputs already in varlen form
    lay = varlen.anchor_varlen_layout(doc_ids_from_cu_seqlens(cu, 1, seq_len))
    qv = q.detach().transpose(1, 2).reshape(seq_len, H, D).requires_grad_()
    kv_, vv = (x.detach().transpose(1, 2).reshape(seq_len, H, D)[lay.kv_index].requires_grad_() for x in (k, v))

    def kern():
        return _flash.varlen(qv, kv_, vv, lay.cu_q, lay.cu_k, lay.max_q, lay.max_k, D**-0.5, True)

    with torch.no_grad():
        kernel_fwd_ms = cuda_time_ms(kern)
    kernel_fwd_bwd_ms = cuda_time_ms(lambda: kern().backward(grad_out[0]))
    sdpa_ms = cuda_time_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(torch.ones_like(q)), warmup=2, iters=5
    )
    pairs = useful_pairs(cu.cpu())

    def tflops(ms):
        return round(4 * D * H * pairs / (ms * 1e-3) / 1e12, 1)

    return {
        "seq_len": seq_len,
        "num_docs": n_docs,
        "backend": "flash (flash-attn-4 varlen)",
        "max_abs_err_vs_reference": err,
        "anchor_fwd_ms": round(fwd_ms, 3),
        "anchor_fwd_bwd_ms": round(fwd_bwd_ms, 3),
        "sdpa_causal_fwd_bwd_ms": round(sdpa_ms, 3),
        "speedup_fwd_bwd": round(sdpa_ms / fwd_bwd_ms, 2),
        "fwd_tflops_on_useful_pairs": tflops(fwd_ms),
        "fwd_fraction_of_peak": round(tflops(fwd_ms) / PEAK_TFLOPS, 3),
        "qkv_bthd_layout": {
            "anchor_fwd_ms": round(fwd_hf_ms, 3),
            "anchor_fwd_bwd_ms": round(fwd_bwd_hf_ms, 3),
            "speedup_fwd_bwd": round(sdpa_ms / fwd_bwd_hf_ms, 2),
            "fwd_fraction_of_peak": round(tflops(fwd_hf_ms) / PEAK_TFLOPS, 3),
        },
        "kernel_only": {
            "fwd_ms": round(kernel_fwd_ms, 3),
            "fwd_bwd_ms": round(kernel_fwd_bwd_ms, 3),
            "fwd_fraction_of_peak": round(tflops(kernel_fwd_ms) / PEAK_TFLOPS, 3),
        },
    }


def llama_1b_config(seq_len):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )


def packed_batch(seq_len):
    """The first window of AnchorPackingCollator over 40 random documents of 256..8192 tokens (on CUDA)."""
    from longctx_plugins import AnchorPackingCollator

    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(256, 8192, (40,), generator=gen).tolist()
    docs = [{"input_ids": torch.randint(3, 32000, (n,), generator=gen).tolist()} for n in lens]
    packed = AnchorPackingCollator(None, max_length=seq_len, anchor_token_id=1, padding="max_length")(docs)
    cu = packed["cu_seq_lens_q"]
    cu = cu[cu <= seq_len].cuda()  # boundaries of the first window (row 0)
    batch = {k: packed[k][:1].cuda() for k in ("input_ids", "attention_mask", "position_ids", "labels")}
    batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    return batch


def _count_flash_calls():
    """Count flash-attn-4 kernel calls and collect the plugin's fallback warnings (a silent fallback to flex would
    otherwise make 'flash' timings flex timings)."""
    import warnings

    from longctx_plugins.attention import plan as plans
    from longctx_plugins.attention.kernels import flash4

    calls, kernel = [0], flash4.varlen
    if not getattr(kernel, "_counted", False):

        def counted(*args, **kwargs):
            counted.calls[0] += 1
            return kernel(*args, **kwargs)

        counted._counted, flash4.varlen = True, counted
    flash4.varlen.calls = calls
    plans._fallbacks_warned.clear()
    caught = warnings.catch_warnings(record=True)
    logs = caught.__enter__()
    warnings.simplefilter("always")
    return calls, logs


def trainer_step(
    seq_len, steps=3, profile_path=None, impls=("anchor", "sdpa"), kernel_options=None, expand_kv=False, backend="auto"
):
    """fwd + bwd + AdamW of a ~1.1B Llama-shaped model (TinyLlama shape) with gradient checkpointing."""
    from transformers import LlamaForCausalLM

    cfg = llama_1b_config(seq_len)
    cfg.anchor_flex_kernel_options = kernel_options
    cfg.anchor_flex_expand_kv = expand_kv
    cfg.anchor_backend = backend
    batch = packed_batch(seq_len)
    result = {
        "model": "llama-1.1B (hidden 2048, 22 layers, 32 heads, 4 kv heads)",
        "seq_len": seq_len,
        "gradient_checkpointing": True,
        "step": "forward + backward + AdamW step, bf16 weights",
        "anchor_flex_kernel_options": kernel_options,
        "anchor_flex_expand_kv": expand_kv,
        "anchor_backend": backend,
    }
    for impl in impls:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.set_attn_implementation(impl)
        model.config.use_cache = False
        model.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        inputs = dict(batch) if impl == "anchor" else {k: batch[k] for k in ("input_ids", "labels", "position_ids")}

        def step():
            loss = model(**inputs, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if impl == "anchor" and backend == "flash":
            calls, logs = _count_flash_calls()
            step()
            torch.cuda.synchronize()
            result["flash_kernel_calls_per_step"] = calls[0]
            # the plugin's fallback warnings only (the kernel library's own deprecation notices are not fallbacks)
            result["fallback_log"] = [str(w.message) for w in logs if "backend 'flash':" in str(w.message)]
            print("flash kernel calls in one step:", calls[0], "fallbacks:", result["fallback_log"], flush=True)
        ms = cuda_time_ms(step, warmup=2, iters=steps)
        if profile_path:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            with open(profile_path, "a") as f:
                f.write(f"== {impl}: step {ms:.1f} ms\n")
                f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
        result[f"{'anchor' if impl == 'anchor' else 'full'}_ms"] = round(ms, 1)
        model = opt = None  # free before the next model
        torch.cuda.empty_cache()
    if "anchor_ms" in result and "full_ms" in result:
        result["ratio_anchor_over_full"] = round(result["anchor_ms"] / result["full_ms"], 3)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-trainer", action="store_true")
    parser.add_argument("--profile-trainer", default=None, help="only profile one anchor trainer step into this file")
    parser.add_argument(
        "--expand-kv-trainer",
        action="store_true",
        help="only the anchor trainer step with anchor_flex_expand_kv off and on (trainer_expand_kv.json)",
    )
    parser.add_argument(
        "--flash",
        action="store_true",
        help="only anchor_backend='flash' (flash-attn-4): kernel cases and trainer step (anchor_flash.json)",
    )
    args = parser.parse_args()
    from longctx_plugins.attention.kernels.flex import SM90_FWD_OPTIONS

    if args.flash:
        from importlib.metadata import version

        out = {
            **environment(),
            "flash_attn_4": version("flash-attn-4"),
            "nvidia_cutlass_dsl": version("nvidia-cutlass-dsl"),
            "heads": H,
            "head_dim": D,
            "dtype": "bfloat16",
            "cases": [],
        }
        for seq_len, n_docs in [(32768, 9)] if args.quick else [(32768, 9), (131072, 30)]:
            out["cases"].append(flash_case(seq_len, n_docs))
            print(out["cases"][-1], flush=True)
            write_json(out, "anchor_flash.json")
        if args.profile_trainer:
            print(trainer_step(32768, steps=1, profile_path=args.profile_trainer, impls=("anchor",), backend="flash"))
        if not args.no_trainer:
            out["trainer_step"] = trainer_step(32768, backend="flash")
            print(out["trainer_step"], flush=True)
            write_json(out, "anchor_flash.json")
            # the flex anchor step in the same process, for a like-for-like comparison
            flex = trainer_step(32768, impls=("anchor",), backend="flex", expand_kv=None)  # flex with its defaults
            out["trainer_step"]["flex_anchor_ms"] = flex["anchor_ms"]
            out["trainer_step"]["ratio_flex_anchor_over_full"] = round(
                flex["anchor_ms"] / out["trainer_step"]["full_ms"], 3
            )
            print(out["trainer_step"], flush=True)
        write_json(out, "anchor_flash.json")
        return

    sweep = {
        "torch_default": {},  # {} = torch's own configuration
        "package_default": None,  # None = what the anchor attention uses (tuned forward on sm90)
        "tuned_rows_safe": {**SM90_FWD_OPTIONS, "ROWS_GUARANTEED_SAFE": True},
        "fwd_m128_n64_w8_s3": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 8, "fwd_num_stages": 3},
    }
    if args.expand_kv_trainer:
        out = {**environment(), "runs": [trainer_step(32768, impls=("anchor",), expand_kv=e) for e in (False, True)]}
        print(out["runs"], flush=True)
        write_json(out, "anchor_trainer_expand_kv.json")
        return
    if args.profile_trainer:
        print(trainer_step(32768, steps=1, profile_path=args.profile_trainer, impls=("anchor",)))
        return
    result = {**environment(), "heads": H, "head_dim": D, "dtype": "bfloat16", "cases": []}
    for seq_len, n_docs in [(32768, 9)] if args.quick else [(32768, 9), (131072, 30)]:
        c = case(seq_len, n_docs, 256, 8192, sweep)
        print(c, flush=True)
        result["cases"].append(c)
        write_json(result, "anchor_attention.json")
    if not args.no_trainer:
        try:
            result["trainer_step"] = trainer_step(32768)
        except Exception as exc:  # report, do not hide
            result["trainer_step"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(result["trainer_step"], flush=True)
    write_json(result, "anchor_attention.json")


if __name__ == "__main__":
    main()
