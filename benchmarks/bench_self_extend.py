"""SelfExtend fast path on the H200: correctness first, then forward timings (results/self_extend.json).

    PYTHONPATH=. python benchmarks/bench_self_extend.py
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import cuda_time_ms, environment, write_json  # noqa: E402

import longctx_plugins  # noqa: E402,F401
from longctx_plugins.attention import _dense_lse  # noqa: E402
from longctx_plugins.attention.self_extend import self_extend_attention_forward, self_extend_mask  # noqa: E402
from longctx_plugins.ops import rope as rope_ops  # noqa: E402
from longctx_plugins.ops import self_extend as se  # noqa: E402

H, D = 32, 128
GROUPED_KERNELS = ("default", "cudnn", "flash", "none")  # "none": FlexAttention for every pass


class Cfg:
    self_extend_backend = "flex"
    max_position_embeddings = 4096
    head_dim, hidden_size, num_attention_heads = D, D * H, H

    def __init__(self, params):
        self.rope_parameters = params


class Mod(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        self.is_causal, self.layer_idx, self.config = True, 0, Cfg(params)


def case(seq_len, G, W):
    from transformers.masking_utils import causal_mask_function

    params = {"rope_type": "self_extend", "group_size": G, "window": W, "rope_theta": 10000.0}
    mod = Mod(params)
    pos = torch.arange(seq_len, device="cuda")[None]
    inv = rope_ops.default_inv_freq(D, 10000.0, "cuda")
    torch.manual_seed(0)
    q = rope_ops.rotate(torch.randn(1, H, seq_len, D, device="cuda"), pos, inv).to(torch.bfloat16)
    k = rope_ops.rotate(torch.randn(1, H, seq_len, D, device="cuda"), pos, inv).to(torch.bfloat16)
    v = torch.randn(1, H, seq_len, D, device="cuda", dtype=torch.bfloat16)
    mask = self_extend_mask(1, seq_len, seq_len, config=mod.config, device="cuda", mask_function=causal_mask_function)

    def run():
        return self_extend_attention_forward(mod, q, k, v, mask, scaling=D ** -0.5, position_ids=pos)[0]

    a = seq_len - 1024  # the last query block (farthest grouped distances) and the first (neighbours only)
    with torch.no_grad():
        refs = []
        for lo in (a, 0):
            rows = torch.arange(lo, lo + 1024, device="cuda")
            dense = torch.arange(seq_len, device="cuda")[None, :] <= rows[:, None]
            refs.append(se.reference_attention(q[:, :4, lo:lo + 1024], k[:, :4], v[:, :4], pos[:, lo:lo + 1024], pos,
                                               inv, G, W, causal=True, mask=dense[None, None],
                                               scale=D ** -0.5).transpose(1, 2))
        variants = {}
        for name in GROUPED_KERNELS:  # which kernel runs the grouped pass: the default order, then each one alone
            if name == "default":
                os.environ.pop("LONGCTX_DENSE_LSE_KERNELS", None)
            else:
                os.environ["LONGCTX_DENSE_LSE_KERNELS"] = name
            try:
                out = run()
                err = max(float((out[:, lo:lo + 1024, :4].float() - ref).abs().max()) for lo, ref in zip((a, 0), refs))
                assert err < 5e-2, f"self_extend ({name}) differs from the reference by {err}"
                variants[name] = {"max_abs_err_vs_reference": err, "fwd_ms": round(cuda_time_ms(run), 3)}
            except Exception as exc:  # report, do not hide
                variants[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(name, variants[name], flush=True)
        os.environ.pop("LONGCTX_DENSE_LSE_KERNELS", None)
        sdpa_ms = cuda_time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        parts = breakdown(mod, q, k, v, pos, inv, G, W, mask)
    se_ms = variants["default"]["fwd_ms"]
    return {"seq_len": seq_len, "window": W, "group_size": G,
            "max_abs_err_vs_reference": variants["default"]["max_abs_err_vs_reference"],
            "self_extend_fwd_ms": se_ms, "sdpa_causal_fwd_ms": round(sdpa_ms, 3), "ratio": round(se_ms / sdpa_ms, 3),
            "grouped_pass_kernel_variants": variants, "default_path_parts_ms": parts,
            "fused_kernel_checks": {" ".join(map(str, k)): v for k, v in _dense_lse._status.items()}}


def breakdown(mod, q, k, v, pos, inv, G, W, plan):
    """The default path's pieces timed one by one (causal, fused grouped kernel): where the time goes."""
    from longctx_plugins.attention import _common
    from longctx_plugins.attention.self_extend import _block_masks

    L, scale = q.shape[2], D ** -0.5
    opts = _common.flex_kernel_options(mod.config, "self_extend", q)
    flex = _common.compiled_flex(q.device)
    apply = _common.compiled(rope_ops.apply_rotation, q.device)

    def rotations(*args):
        return se.grouped_rotations(*args, apply)

    merge = _common.compiled(se.merge_pair, q.device)
    bms = _block_masks(plan, pos, pos, W, True)
    q_l, k_l, _, _ = rotations(q, k, pos, pos, inv, G, W, True)
    out, lse = _common.flex_with_lse(flex, q, k, v, bms["near"], scale, False, opts)
    o_g, l_g = _dense_lse.causal_attention_lse(q_l[:, :, W:], k_l[:, :, : L - W], v[:, :, : L - W], scale)
    parts = {
        "rotations": cuda_time_ms(lambda: rotations(q, k, pos, pos, inv, G, W, True)),
        "near_pass_flex": cuda_time_ms(lambda: _common.flex_with_lse(flex, q, k, v, bms["near"], scale, False, opts)),
        "grouped_pass_fused": cuda_time_ms(lambda: _dense_lse.causal_attention_lse(
            q_l[:, :, W:], k_l[:, :, : L - W], v[:, :, : L - W], scale)),
        "merge": cuda_time_ms(lambda: merge(out[:, :, W:], lse[..., W:], o_g, l_g)),
        "output_transpose": cuda_time_ms(lambda: out.transpose(1, 2).contiguous()),
        "block_masks_build": cuda_time_ms(lambda: _block_masks(plan, pos, pos, W, True), warmup=1, iters=3),
    }
    return {name: round(ms, 3) for name, ms in parts.items()}


def main():
    result = {**environment(), "heads": H, "head_dim": D, "dtype": "bfloat16", "cases": []}
    for seq_len, G, W in [(32768, 16, 2048), (131072, 64, 2048)]:
        c = case(seq_len, G, W)
        print(c, flush=True)
        result["cases"].append(c)
        write_json(result, "self_extend.json")


if __name__ == "__main__":
    main()
