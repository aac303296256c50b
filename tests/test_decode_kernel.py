"""The split-K decode kernel (longctx_plugins.attention.kernels.decode_passes) against the exact dense reference.

Runs on CPU under Triton's interpreter, in ONE subprocess (this file with ``--worker``) that sets
``TRITON_INTERPRET=1`` before Triton is first imported (see tests/test_triton_passes.py for why). Cases: every
method with and without ``keep_trained_window``'s plain rows, float32 / bfloat16 / float16, head dims 32-256, grouped
query heads 1-8 per key head, padding and empty static-cache slots, a row that sees no key, a temperature, caches
split over many programs; then whole tiny models decoding with the kernel against the same models on the reference
(backend ``sdpa``), dynamic and static caches. Another test compiles the kernel for sm_90 without a GPU (Triton's
NVIDIA backend and ptxas) and checks it does not spill registers.
"""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__" and "--worker" in sys.argv:  # before triton is imported at all
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton", reason="Triton is not installed (pip install 'longctx-plugins[dev]')")

# name: (method, exact_below trained length or None, dtype, B, H, Hkv, K, D, padding, logit_scale, empty row[,
# programs per launch])
CASES = {
    "self_extend_exact": ("se", 20, "fp32", 2, 4, 2, 150, 64, True, False, False),
    "self_extend": ("se", None, "fp32", 2, 8, 1, 97, 32, True, True, False),
    "dca_exact": ("dca", 24, "fp32", 2, 4, 2, 130, 64, True, True, False),
    "dca": ("dca", None, "fp32", 1, 2, 2, 61, 128, False, False, False),
    "string_exact": ("string", 30, "fp32", 2, 4, 4, 140, 64, True, False, False),
    "string": ("string", None, "fp32", 1, 4, 2, 45, 64, False, True, False),
    "self_extend_bf16_d128": ("se", 16, "bf16", 1, 8, 1, 300, 128, False, False, False),
    "dca_fp16_d128": ("dca", 24, "fp16", 2, 4, 2, 200, 128, True, False, False),
    "string_bf16": ("string", 30, "bf16", 1, 2, 1, 77, 64, True, True, False),
    "self_extend_d256": ("se", 20, "fp32", 1, 2, 1, 70, 256, False, False, False),
    "one_key": ("se", 20, "fp32", 1, 2, 1, 1, 64, False, False, False),
    "row_without_keys": ("dca", 24, "fp32", 2, 4, 2, 90, 64, True, False, True),
    # several key blocks per program: the online softmax rescales across blocks (programs per launch given)
    "blocks_per_program": ("se", 20, "fp32", 1, 4, 1, 300, 64, False, True, False, 1),
    "blocks_per_program_padded": ("dca", 24, "fp32", 2, 4, 2, 280, 64, True, False, False, 6),
    "blocks_per_program_bf16": ("string", 30, "bf16", 1, 8, 1, 260, 128, False, False, False, 1),
}
TOL = {"fp32": 2e-5, "bf16": 3e-2, "fp16": 4e-3}


def _passes(method: str, exact):
    from longctx_plugins.ops import dca, self_extend, string
    from longctx_plugins.ops import passes as P

    ps = {
        "se": lambda: self_extend.passes(3, 8, True),
        "dca": lambda: dca.passes(12, 3),
        "string": lambda: string.passes(17, 5),
    }[method]()
    return P.exact_below(ps, exact) if exact is not None else ps


def _run_case(name: str, spec, wrong_table: bool = False) -> dict:
    import torch

    from longctx_plugins.attention.kernels import decode_passes as DP
    from longctx_plugins.ops import passes as P
    from longctx_plugins.ops import rope

    method, exact, dt, B, H, Hkv, K, D, padding, use_ls, empty = spec[:11]
    programs = spec[11] if len(spec) > 11 else None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
    passes = _passes(method, exact)
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    inv = rope.default_inv_freq(D, 10000.0)
    slots = K + 9  # a static cache: empty slots after the real ones
    k_pos = torch.arange(slots)[None].repeat(B, 1)
    valid = torch.zeros(B, slots, dtype=torch.bool)
    valid[:, :K] = True
    if padding:  # left padding on the last row: its first keys are padding, real positions start at 0 after them
        valid[-1, :6] = False
        k_pos[-1] -= 6
    q_pos = k_pos[:, K - 1 : K]
    if empty:
        valid[0] = False
    q = rope.rotate(torch.randn(B, H, 1, D, generator=gen), q_pos, inv).to(dtype)
    k = rope.rotate(torch.randn(B, Hkv, slots, D, generator=gen), k_pos, inv).to(dtype)
    v = torch.randn(B, Hkv, slots, D, generator=gen).to(dtype)
    ls = torch.tensor([1.0, 1.3][:B]) if use_ls else None
    scale = D**-0.5
    ref = P.dense_attention(q, k, v, q_pos, k_pos, passes, inv, mask=valid[:, None, None], scale=scale, logit_scale=ls)
    if wrong_table:  # the failure check: no pass re-rotates its keys
        real = DP.pass_table
        DP.pass_table = lambda ps: (lambda t: (t[0], 0, t[2]))(real(ps))
    try:
        out = DP._launch(q, k, v, DP.step_inputs(q_pos, k_pos, valid, ls, inv, B), passes, scale, programs=programs)
    finally:
        if wrong_table:
            DP.pass_table = real
    return {
        "name": name,
        "dtype": dt,
        "err": float((out.float().transpose(1, 2) - ref).abs().max()),
        "out_dtype_ok": out.dtype == dtype and out.shape == (B, 1, H, D),
        "empty_rows_zero": bool((out[0] == 0).all()) if empty else True,
        "usable": DP.usable("cpu", dtype, D, D, passes),
    }


def _decode_models() -> dict:
    """Tiny models of every method decoding 6 greedy steps after a 40-token prompt (trained 32), batch 2 with left
    padding, dynamic and static caches: the kernel (interpreter) against the reference; the kernel must run."""
    import torch
    from transformers import DynamicCache, StaticCache

    from longctx_plugins.attention import configure
    from longctx_plugins.attention.kernels import decode_passes as DP

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.test_position_methods import method_model

    calls = [0]
    real = DP.attention

    def counted(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    DP.attention = counted
    out = {}
    for method in ("self_extend", "dca", "string"):
        for cache in ("dynamic", "static"):
            runs = []
            for backend in ("auto", "sdpa"):
                _, model = method_model("llama", method, head_dim=32)  # the kernel takes head dims >= 32
                configure(model, backend=backend)
                ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(3))
                am = torch.ones_like(ids)
                am[1, :5] = 0
                kv = StaticCache(config=model.config, max_cache_len=64) if cache == "static" else DynamicCache()
                before = calls[0]
                with torch.no_grad():
                    res = model.generate(
                        ids,
                        attention_mask=am,
                        max_new_tokens=6,
                        min_new_tokens=6,
                        do_sample=False,
                        past_key_values=kv,
                        output_logits=True,
                        return_dict_in_generate=True,
                        disable_compile=True,
                    )
                runs.append((res.sequences, torch.stack(res.logits, 1), calls[0] - before))
            (toks, logits, n), (ref_toks, ref_logits, n_ref) = runs
            out[f"{method}-{cache}"] = {
                "tokens_equal": bool(torch.equal(toks, ref_toks)),
                "logits_err": float((logits - ref_logits).abs().max()),
                "kernel_calls": n,
                "reference_kernel_calls": n_ref,
                "layers": model.config.num_hidden_layers,
            }
    DP.attention = real
    return out


def _self_check_cases() -> dict:
    """The self-check passes for real models' passes (trained 8k and 128k) and catches a kernel that never
    re-rotates keys, also when the trained window is long."""
    import torch

    from longctx_plugins.attention.kernels import decode_passes as DP
    from longctx_plugins.ops import passes as P
    from longctx_plugins.positions.rope_methods import ROPE_METHODS

    out = {}
    for method in ("self_extend", "dca", "string"):
        for trained in (8192, 131072):
            spec = ROPE_METHODS[method]
            passes = P.exact_below(spec.passes(spec.defaults(trained, 4 * trained, {}), True), trained)
            ok = DP._self_check(torch.device("cpu"), torch.float32, 64, passes)
            real = DP.pass_table
            DP.pass_table = lambda ps: (lambda t: (t[0], 0, t[2]))(real(ps))
            try:
                broken = DP._self_check(torch.device("cpu"), torch.float32, 64, passes)
            finally:
                DP.pass_table = real
            out[f"{method}-{trained}"] = {
                "ok": ok,
                "broken": broken,
                "moves_keys": any(not p.k.is_identity for p in passes),
            }
    return out


def _worker() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    torch.set_num_threads(2)
    for name, spec in CASES.items():
        print(json.dumps(_run_case(name, spec)), flush=True)
    wrong = _run_case("self_extend_exact", CASES["self_extend_exact"], wrong_table=True)
    print(json.dumps({**wrong, "name": "wrong_table"}), flush=True)
    print(json.dumps({"name": "self_check", **_self_check_cases()}), flush=True)
    print(json.dumps({"name": "models", **_decode_models()}), flush=True)


@pytest.fixture(scope="module")
def results():
    from .conftest import interpreter_results

    return interpreter_results(__file__, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense_reference(results, name):
    r = results[name]
    assert r["usable"], r  # the self-check passes for these settings
    assert r["out_dtype_ok"], r
    assert r["err"] <= TOL[r["dtype"]], r
    assert r["empty_rows_zero"], r


@pytest.mark.slow
def test_self_check_passes_and_catches_a_wrong_kernel(results):
    for name, r in results["self_check"].items():
        if name == "name":
            continue
        assert r["ok"] is None, (name, r)
        if r["moves_keys"]:  # a kernel that forgets to re-rotate keys is refused, whatever the trained length
            assert r["broken"] is not None, (name, r)


@pytest.mark.slow
def test_wrong_pass_table_is_caught(results):
    """The comparison can fail: with keys never re-rotated the output differs."""
    assert results["wrong_table"]["err"] > 100 * TOL["fp32"], results["wrong_table"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["self_extend", "dca", "string"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_models_decode_on_the_kernel_as_on_the_reference(results, method, cache):
    r = results["models"][f"{method}-{cache}"]
    assert r["kernel_calls"] == 5 * r["layers"] and r["reference_kernel_calls"] == 0, r  # every layer, 5 steps
    assert r["tokens_equal"] and r["logits_err"] < 1e-4, r


def test_cpu_without_the_interpreter_uses_the_reference():
    import torch

    from longctx_plugins.attention.kernels import decode_passes as DP

    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    assert not DP.usable("cpu", torch.float32, 64, 64, _passes("se", 20))


@pytest.mark.slow
def test_compiles_for_hopper_without_gpu():
    """The kernel through Triton's compiler for sm_90 (no GPU), bf16 head dim 128 with 8 query heads per key head,
    as the benchmarks run it: it compiles and does not spill registers."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from longctx_plugins.attention.kernels import _decode_kernel as K
    from longctx_plugins.attention.kernels.decode_passes import BLOCK_N, NUM_WARPS, pass_table

    from .test_triton_passes import _registers

    for method in ("se", "dca", "string"):
        _, kmoves, _ = pass_table(_passes(method, 8192))
        consts = dict(
            NP=len(_passes(method, 8192)),
            KMOVES=kmoves,
            HALF=64,
            R_PAD=16,
            BLOCK_N=BLOCK_N,
            HAS_VALID=True,
            HAS_LS=False,
            IEEE=False,
            UPCAST=False,
        )
        ptrs = {
            "q_ptr": "bf16",
            "k_ptr": "bf16",
            "v_ptr": "bf16",
            "kpos_ptr": "i32",
            "qpos_ptr": "i32",
            "valid_ptr": "i8",
            "ls_ptr": "fp32",
            "tab_ptr": "i32",
            "inv_ptr": "fp32",
            "m_ptr": "fp32",
            "l_ptr": "fp32",
            "acc_ptr": "fp32",
        }
        sig = {
            n: "constexpr" if n in consts else "*" + ptrs[n] if n in ptrs else "fp32" if n == "scale_log2" else "i32"
            for n in K._split.arg_names
        }
        attrs = {
            (i,): [["tt.divisibility", 16]] for i, n in enumerate(K._split.arg_names) if n in ptrs or n.startswith("s_")
        }
        try:
            compiled = triton.compile(
                triton.compiler.ASTSource(fn=K._split, signature=sig, constexprs=consts, attrs=attrs),
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": NUM_WARPS},
            )
        except RuntimeError as exc:  # no NVIDIA backend / ptxas in this Triton build
            if "ptxas" in str(exc).lower() or "backend" in str(exc).lower():
                pytest.skip(f"Triton cannot compile for CUDA here: {exc}")
            raise
        regs, spills = _registers(compiled)
        assert spills == 0, (method, regs, spills)


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
