"""Probe for the Gemma3-bf16 gradient disagreement of test_model_training_flex_equals_sdpa_path: per-parameter relative
gradient error of the anchor flex path and of the dense SDPA path, each against the SDPA path of the same weights in
float32, tiny Gemma3 (sliding window 512) and Llama, on a packed 4k batch; "sdpa_with_cudnn" is the dense path with
masked SDPA free to pick the cuDNN backend (what it did before DENSE_SDPA_AVOID_CUDNN). Writes
results/gemma3_grad_probe.json.

    python -m benchmarks.probe_gemma3_grads
"""

import torch

from benchmarks._util import environment, write_json
from tests.test_gpu import packed_training_paths


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def main():
    out = {**environment(), "reference": "dense SDPA path, float32, same (bf16-rounded) weights", "cases": []}
    for model_type in ("gemma3", "llama"):
        paths, keep = packed_training_paths(model_type, torch.bfloat16, fp32_reference=True, sdpa_with_cudnn=True)
        (lr, gr) = paths["fp32"]
        names = ("flex", "sdpa", "sdpa_with_cudnn")
        per = {
            n: {p: round(rel(paths[p][1][n], gr[n]), 5) for p in names}
            | {"flex_vs_sdpa": round(rel(paths["flex"][1][n], paths["sdpa"][1][n]), 5)}
            for n in gr
        }
        case = {
            "model": model_type,
            "dtype": "bfloat16",
            "logits_max_abs_err": {p: float((paths[p][0] - lr).abs()[keep].max()) for p in names},
            "grad_rel_err_max": {p: max(v[p] for v in per.values()) for p in names + ("flex_vs_sdpa",)},
            "worst_params_by_flex_err": sorted(per.items(), key=lambda kv: -kv[1]["flex"])[:8],
            "worst_params_by_sdpa_err": sorted(per.items(), key=lambda kv: -kv[1]["sdpa"])[:4],
        }
        out["cases"].append(case)
        print(case, flush=True)
    write_json(out, "gemma3_grad_probe.json")


if __name__ == "__main__":
    main()
