"""Probe for the failing GPU test test_model_training_flex_equals_sdpa_path[gemma3]: per-parameter relative gradient
difference, anchor flex path vs dense SDPA path, tiny Gemma3 (sliding window 512) and Llama, fp32 and bf16, on a packed
4k batch. Writes results/gemma3_grad_probe.json."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from _util import environment, write_json  # noqa: E402

from tests.test_gpu import flex_and_sdpa_training  # noqa: E402

out = {**environment(), "cases": []}
for model_type in ("gemma3", "llama"):
    for dtype in (torch.float32, torch.bfloat16):
        (lf, gf), (ls, gs), keep = flex_and_sdpa_training(model_type, dtype)
        rel = {n: round(float((gf[n] - gs[n]).norm() / gs[n].norm().clamp(min=1e-12)), 5) for n in gs}
        case = {"model": model_type, "dtype": str(dtype), "logits_max_abs_diff": float((lf - ls).abs()[keep].max()),
                "logits_max_abs": float(ls.abs()[keep].max()),
                "nan_in_flex_grads": any(bool(v.isnan().any()) for v in gf.values()),
                "worst_params": sorted(rel.items(), key=lambda kv: -kv[1])[:6]}
        out["cases"].append(case)
        print(case, flush=True)
write_json(out, "gemma3_grad_probe.json")
