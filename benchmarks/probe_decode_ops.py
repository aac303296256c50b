"""Host work of an uncompiled decode step, counted: the torch operations one decode forward dispatches, per layer,
with the position methods on the decode kernel against plain SDPA (results/decode_ops.json).

    python -m benchmarks.probe_decode_ops [--layers 8]

With the dynamic cache nothing is compiled, and each torch operation the attention issues costs host time (a few
microseconds each on a GPU, launched one by one), whatever the context length. This counts them exactly, on the CPU:
a tiny Llama (head dim 32, trained length 32, a 40-token prompt, batch 2 with left padding), one greedy decode step,
every aten operation dispatched during the forward counted by ``TorchDispatchMode``. The decode kernel runs in
Triton's interpreter (``TRITON_INTERPRET=1``, set here); what the interpreter itself does inside a launch is not
counted, the launches are (``kernel_launches``). Tokens are checked against the same model on the exact reference
(``backend="sdpa"``) first. Per layer = (the method's count - SDPA's count) / layers: the attention's extra host
operations per layer.
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks._util import environment, write_json  # noqa: E402


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.inside = 0  # > 0 while a kernel launch runs in the interpreter (its own work is not counted)
        self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _count_kernel_launches(mode_ref: list):
    from longctx_plugins.attention.kernels import decode_passes as DP

    real = DP._kernel()

    class Launch:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            call = self.fn[grid]

            def run(*a, **k):
                mode = mode_ref[0]
                if mode is None:
                    return call(*a, **k)
                mode.inside += 1
                mode.launches += 1
                try:
                    return call(*a, **k)
                finally:
                    mode.inside -= 1

            return run

    kernels = {n: Launch(getattr(real, n)) for n in ("_split", "_merge") if hasattr(real, n)}
    DP._kernel = lambda: type("Kernels", (), {"INTERPRET": real.INTERPRET, **kernels})


def _model(method: str, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx_plugins import extend

    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_hidden_layers=layers,
        vocab_size=128,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    if method != "sdpa":
        extend(model, method, 128)
    return model


def _step(model, mode_ref: list):
    from transformers import DynamicCache

    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[1, :5] = 0
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(2):  # warm: the kernel's one-time self-check, stored settings
            am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
            out = model(input_ids=tok, attention_mask=am, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        mode = _Count()
        mode_ref[0] = mode
        with mode:
            logits = model(input_ids=tok, attention_mask=am, past_key_values=cache, use_cache=True).logits
        mode_ref[0] = None
    return mode, logits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--out", default="decode_ops.json")
    args = ap.parse_args(argv)
    from longctx_plugins.attention import configure

    mode_ref: list = [None]
    _count_kernel_launches(mode_ref)
    result = {**environment(), "layers": args.layers, "cases": []}
    base = None
    for method in ("sdpa", "self_extend", "dca", "string"):
        model = _model(method, args.layers)
        mode, logits = _step(model, mode_ref)
        case = {"method": method, "ops_per_forward": sum(mode.ops.values()), "kernel_launches": mode.launches}
        if method == "sdpa":
            base = case["ops_per_forward"]
        else:
            configure(model, backend="sdpa")  # the exact reference: same tokens
            ref = _step(model, [None])[1]
            case["max_abs_logit_diff_vs_reference"] = float((logits - ref).abs().max())
            assert case["max_abs_logit_diff_vs_reference"] < 1e-3, case
            assert case["kernel_launches"] >= args.layers, case  # the step ran on the kernel
            case["extra_ops_per_layer_vs_sdpa"] = round((case["ops_per_forward"] - base) / args.layers, 2)
        print(case, flush=True)
        result["cases"].append(case)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
