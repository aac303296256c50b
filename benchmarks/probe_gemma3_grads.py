"""Probe for the failing GPU test test_model_training_flex_equals_sdpa_path[gemma3]: per-parameter relative gradient
difference, anchor flex path vs dense SDPA path, tiny Gemma3 (sliding window 512) and Llama, fp32 and bf16, on a packed
4k batch. Writes results/gemma3_grad_probe.json."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
from _util import environment, write_json  # noqa: E402
from conftest import tiny_model  # noqa: E402

from longctx_plugins import AnchorPackingCollator  # noqa: E402


def grads(model, batch):
    model.zero_grad()
    out = model(**batch, use_cache=False)
    out.loss.backward()
    return out.logits.float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


out = {**environment(), "cases": []}
for model_type in ("gemma3", "llama"):
    for dtype in (torch.float32, torch.bfloat16):
        over = {"sliding_window": 512} if model_type == "gemma3" else {}
        model = tiny_model(model_type, attn_implementation="anchor", max_position_embeddings=8192, **over)
        model = model.to("cuda", dtype).train()
        g = torch.Generator().manual_seed(0)
        docs = [{"input_ids": torch.randint(3, 100, (int(n),), generator=g).tolist()}
                for n in torch.randint(64, 2500, (8,), generator=g)]
        batch = AnchorPackingCollator(None, max_length=4096, anchor_token_id=1, pad_token_id=0)(docs)
        batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
        model.config.anchor_backend = "flex"
        lf, gf = grads(model, batch)
        model.config.anchor_backend = "sdpa"
        ls, gs = grads(model, batch)
        keep = batch["attention_mask"].bool()
        rel = {n: round(float((gf[n] - gs[n]).norm() / gs[n].norm().clamp(min=1e-12)), 5) for n in gs}
        case = {"model": model_type, "dtype": str(dtype), "logits_max_abs_diff": float((lf - ls).abs()[keep].max()),
                "logits_max_abs": float(ls.abs()[keep].max()),
                "nan_in_flex_grads": any(bool(v.isnan().any()) for v in gf.values()),
                "worst_params": sorted(rel.items(), key=lambda kv: -kv[1])[:6]}
        out["cases"].append(case)
        print(case, flush=True)
write_json(out, "gemma3_grad_probe.json")
