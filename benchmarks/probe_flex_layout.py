"""Why is the anchor flex call slower inside the 1.1B train step than in bench_anchor's isolated case? (H200 probe)

Times the compiled anchor FlexAttention forward and forward+backward at 32k on the same block mask for the layouts a
model produces: contiguous [B,H,S,D], transposed views of [B,S,H,D] projections (what Llama passes), head dim 64 vs
128, GQA 32/4 vs MHA. Writes results/flex_layout_probe.json.
"""

from __future__ import annotations

import torch

from benchmarks._util import cuda_time_ms, environment, write_json
from longctx_plugins.attention.kernels import flex as flex_kernel
from longctx_plugins.attention.plan import BLOCK
from longctx_plugins.ops import blocks, masks


def main(seq=32768):
    g = torch.Generator().manual_seed(0)
    lens, total = [], 1
    while total < seq:
        n = min(int(torch.randint(256, 8192, (1,), generator=g)), seq - total)
        lens.append(n)
        total += n
    cu = torch.tensor([0, 1] + [1 + sum(lens[: i + 1]) for i in range(len(lens))], dtype=torch.int32, device="cuda")
    doc = masks.doc_ids_from_cu_seqlens(cu, 1, seq)
    any_, full = blocks.anchor_blocks(doc, BLOCK, True)
    bm = blocks.to_block_mask(any_, full, masks.anchor_mod(doc, True), seq, seq, BLOCK)
    flex = flex_kernel._flex("cuda")
    out = {**environment(), "seq_len": seq, "num_docs": len(lens), "cases": []}
    for name, h, hkv, d, layout in [
        ("mha_d128_contig", 32, 32, 128, "contig"),
        ("mha_d64_contig", 32, 32, 64, "contig"),
        ("gqa_d64_contig", 32, 4, 64, "contig"),
        ("gqa_d64_transposed", 32, 4, 64, "bshd"),
        ("gqa_d64_transposed_made_contig", 32, 4, 64, "bshd_contig"),
    ]:

        def make(heads):
            if layout == "contig":
                return torch.randn(1, heads, seq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            x = torch.randn(1, seq, heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            return x

        q, k, v = make(h), make(hkv), make(hkv)

        def view(t):
            if layout == "contig":
                return t
            t = t.transpose(1, 2)
            return t.contiguous() if layout == "bshd_contig" else t

        def fwd():
            return flex(view(q), view(k), view(v), block_mask=bm, enable_gqa=h != hkv)

        def fwd_bwd():
            fwd().sum().backward()

        with torch.no_grad():
            f = cuda_time_ms(fwd)
        fb = cuda_time_ms(fwd_bwd)
        case = {
            "case": name,
            "heads": h,
            "kv_heads": hkv,
            "head_dim": d,
            "fwd_ms": round(f, 2),
            "fwd_bwd_ms": round(fb, 2),
        }
        out["cases"].append(case)
        print(case, flush=True)
    write_json(out, "flex_layout_probe.json")


if __name__ == "__main__":
    main()
