"""SelfExtend fast path on the H200: correctness first, then forward timings (results/self_extend.json).

    PYTHONPATH=. python benchmarks/bench_self_extend.py
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import cuda_time_ms, environment, write_json  # noqa: E402

import longctx_plugins  # noqa: E402,F401
from longctx_plugins.attention.self_extend import self_extend_attention_forward, self_extend_mask  # noqa: E402
from longctx_plugins.ops import rope as rope_ops  # noqa: E402
from longctx_plugins.ops import self_extend as se  # noqa: E402

H, D = 32, 128


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

    with torch.no_grad():
        out = run()
        a = seq_len - 1024  # check the last query block (farthest grouped distances) against the reference
        dense = (torch.arange(seq_len, device="cuda")[None, :] <= torch.arange(a, seq_len, device="cuda")[:, None])
        ref = se.reference_attention(q[:, :4, a:], k[:, :4], v[:, :4], pos[:, a:], pos, inv, G, W, causal=True,
                                     mask=dense[None, None], scale=D ** -0.5).transpose(1, 2)
        err = (out[:, a:, :4].float() - ref).abs().max().item()
        assert err < 5e-2, f"self_extend flex differs from the reference by {err}"
        se_ms = cuda_time_ms(run)
        sdpa_ms = cuda_time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return {"seq_len": seq_len, "window": W, "group_size": G, "max_abs_err_vs_reference": err,
            "self_extend_fwd_ms": round(se_ms, 3), "sdpa_causal_fwd_ms": round(sdpa_ms, 3),
            "ratio": round(se_ms / sdpa_ms, 3)}


def main():
    result = {**environment(), "heads": H, "head_dim": D, "dtype": "bfloat16", "cases": []}
    for seq_len, G, W in [(32768, 16, 2048), (131072, 64, 2048)]:
        c = case(seq_len, G, W)
        print(c, flush=True)
        result["cases"].append(c)
        write_json(result, "self_extend.json")


if __name__ == "__main__":
    main()
