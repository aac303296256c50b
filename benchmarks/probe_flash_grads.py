"""Probe: flash-attn-4 varlen anchor path vs the float32 varlen reference on the GPU, per head dim, with and without
collator padding, batch 2, GQA and MHA, causal and not (values, and gradients with the loss on real tokens).
Prints max/relative errors; writes results/flash_grad_probe[_DIMS].json. Decides flash4.VERIFIED_HEAD_DIMS.

    python -m benchmarks.probe_flash_grads [16,64,128]   (flash-attn-4 installed)
"""

import sys

import torch

from benchmarks._util import environment, write_json
from longctx_plugins import AnchorPackingCollator
from longctx_plugins.attention.kernels import flash4 as _flash
from longctx_plugins.ops import varlen
from longctx_plugins.ops.masks import doc_ids_from_cu_seqlens


def run(dim, heads, kv_heads, pad, causal, lens):
    g = torch.Generator().manual_seed(0)
    docs = [{"input_ids": [5] * int(n)} for n in lens]
    batch = AnchorPackingCollator(
        None, max_length=4096, anchor_token_id=1, pad_token_id=0, padding="max_length" if pad else "longest"
    )(docs)
    B, T = batch["input_ids"].shape
    doc = doc_ids_from_cu_seqlens(batch["cu_seq_lens_q"], B, T).cuda()
    valid = batch["attention_mask"].bool().cuda()
    lay = varlen.anchor_varlen_layout(doc)
    x = [
        torch.randn(B, h, T, dim, generator=g).cuda().to(torch.bfloat16).requires_grad_()
        for h in (heads, kv_heads, kv_heads)
    ]
    w = torch.randn(B, T, heads, dim, generator=g).cuda() * valid[:, :, None, None]
    res = {}
    for name, kern in (("flash", _flash.varlen), ("reference", varlen.varlen_attention_reference)):
        xs = [t.detach().float().requires_grad_() if name == "reference" else t for t in x]
        out = varlen.anchor_varlen_attention(*xs, lay, dim**-0.5, causal, kern)
        grads = torch.autograd.grad((out.float() * w).sum(), xs)
        res[name] = (out.float() * valid[:, :, None, None], [gr.float() for gr in grads])
    o_f, g_f = res["flash"]
    o_r, g_r = res["reference"]
    rel = [round(((a - b).norm() / b.norm()).item(), 4) for a, b in zip(g_f, g_r)]
    return {
        "dim": dim,
        "heads": heads,
        "kv_heads": kv_heads,
        "padding": pad,
        "causal": causal,
        "B": B,
        "T": T,
        "out_max_err": round((o_f - o_r).abs().max().item(), 4),
        "grad_rel_q_k_v": rel,
    }


def main():
    dims = [int(d) for d in sys.argv[1].split(",")] if len(sys.argv) > 1 else [16, 64, 128]
    rows = []
    for dim in dims:
        for pad in (False, True):
            for heads, kv in ((4, 2), (4, 4)):
                for causal in (True, False):
                    try:
                        r = run(dim, heads, kv, pad, causal, [300, 1200, 900, 2000, 700, 1500])
                    except Exception as exc:  # report and go on
                        r = {
                            "dim": dim,
                            "heads": heads,
                            "kv_heads": kv,
                            "padding": pad,
                            "causal": causal,
                            "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                        }
                    print(r, flush=True)
                    rows.append(r)
    from importlib.metadata import version

    write_json(
        {**environment(), "flash_attn_4": version("flash-attn-4"), "rows": rows},
        f"flash_grad_probe{'_' + sys.argv[1].replace(',', '_') if len(sys.argv) > 1 else ''}.json",
    )


if __name__ == "__main__":
    main()
