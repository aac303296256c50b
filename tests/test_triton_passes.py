"""The fused Triton pass kernel (longctx_plugins.attention.kernels.triton_passes) against the exact dense reference.

Runs on CPU under Triton's interpreter. ``TRITON_INTERPRET`` is read when a kernel is decorated (at import), so the
cases run in ONE subprocess (this file with ``--worker``) that sets it before importing anything: nothing leaks into
the pytest process. It must be set before Triton itself is first imported, not only before the kernel is decorated:
``triton.language``'s own helpers (``tl.max``, ``tl.sum``, ...) are ``@triton.jit`` functions decorated when Triton
imports, and compiled-mode helpers cannot be called by the interpreter. Other tests compile the kernel for sm_90
without a GPU (Triton's own NVIDIA backend and ptxas), catching what the interpreter accepts but the compiler does
not, and check that it does not spill registers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

if __name__ == "__main__" and "--worker" in sys.argv:  # before triton is imported at all (see the docstring)
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton", reason="Triton is not installed (pip install 'longctx-plugins[dev]')")

# name: (method, exact_below trained length or None, dtype, B, H, Hkv, Q, K, D, padding, logit_scale, block M, N[,
# contiguous]); contiguous: positions from indices (query i at K - Q + i), ranges and whole tiles from band arithmetic
CASES = {
    "self_extend_causal": ("se", None, "fp32", 2, 4, 2, 45, 45, 64, True, False, 16, 16),
    "self_extend_causal_exact": ("se", 20, "fp32", 2, 4, 2, 45, 45, 64, True, True, 16, 16),
    "self_extend_bidirectional": ("se_bi", None, "fp32", 2, 4, 2, 45, 45, 64, True, True, 16, 16),
    "self_extend_bidirectional_exact": ("se_bi", 20, "fp32", 2, 2, 2, 37, 37, 64, True, False, 16, 16),
    "dca": ("dca", None, "fp32", 2, 4, 2, 53, 53, 64, True, False, 16, 16),
    "dca_exact": ("dca", 24, "fp32", 2, 4, 2, 53, 53, 64, False, True, 16, 32),
    "string": ("string", None, "fp32", 2, 4, 2, 61, 61, 64, True, False, 32, 16),
    "string_exact": ("string", 30, "fp32", 1, 2, 2, 61, 61, 64, False, True, 16, 16),
    "dca_bf16_d128": ("dca", 24, "bf16", 1, 2, 1, 50, 50, 128, False, False, 16, 16),
    "self_extend_fp16_d128": ("se", 16, "fp16", 1, 2, 2, 50, 50, 128, True, True, 32, 32),
    "string_bf16_d64": ("string", None, "bf16", 1, 4, 2, 40, 40, 64, False, False, 16, 16),
    "self_extend_d256": ("se", None, "fp32", 1, 1, 1, 23, 23, 256, False, False, 16, 16),
    "decode_tail_string_exact": ("string", 30, "fp32", 2, 4, 2, 5, 66, 64, True, False, 16, 16),
    "decode_tail_dca_bf16": ("dca", None, "bf16", 1, 2, 1, 7, 58, 64, False, True, 16, 16),
    # contiguous mode, several blocks, exact_below boundaries inside a block (20, 37, 90, 45, 30, 100)
    "contig_self_extend_exact": ("se", 20, "fp32", 1, 2, 1, 70, 70, 64, False, True, 16, 16, True),
    "contig_self_extend_wide_exact": ("se_wide", 37, "fp32", 1, 2, 2, 150, 150, 32, False, False, 16, 16, True),
    "contig_self_extend_bidirectional_exact": ("se_bi", 20, "fp32", 1, 2, 1, 64, 64, 32, False, False, 16, 32, True),
    "contig_dca_wide_exact": ("dca_wide", 90, "fp32", 1, 2, 1, 170, 170, 32, False, True, 16, 16, True),
    "contig_dca_bf16_exact": ("dca", 30, "bf16", 1, 2, 1, 75, 75, 64, False, False, 32, 16, True),
    "contig_string_wide_exact": ("string_wide", 45, "fp32", 1, 2, 1, 140, 140, 32, False, False, 16, 16, True),
    "contig_string": ("string", None, "fp32", 1, 2, 2, 61, 61, 64, False, False, 16, 16, True),
    "contig_decode_tail_dca_exact": ("dca_wide", 100, "fp32", 1, 2, 1, 9, 105, 32, False, False, 16, 16, True),
    "contig_decode_tail_self_extend": ("se_wide", None, "fp32", 1, 2, 1, 20, 130, 32, False, False, 16, 16, True),
}
_KERNEL = None  # the kernel module, for _check_ranges's probe
TOL = {"fp32": (2e-5, 1e-4), "bf16": (3e-2, 2e-3), "fp16": (4e-3, 2e-3)}  # dtype -> (out, lse) max abs error


def _passes(method: str, exact, causal: bool):
    from longctx_plugins.ops import dca, self_extend, string
    from longctx_plugins.ops import passes as P

    ps = {
        "se": lambda: self_extend.passes(3, 8, True),
        "se_bi": lambda: self_extend.passes(3, 8, False),
        "dca": lambda: dca.passes(12, 3),
        "string": lambda: string.passes(17, 5),
        # wide bands / chunks: tiles wholly inside a finite band exist at 16 x 16 blocks
        "se_wide": lambda: self_extend.passes(4, 40, True),
        "dca_wide": lambda: dca.passes(40, 8),
        "string_wide": lambda: string.passes(50, 10),
    }[method]()
    return P.exact_below(ps, exact) if exact is not None else ps


def _reference_lse(q, k, q_pos, k_pos, passes, inv, mask, scale, logit_scale):
    """The reference's log-sum-exp: the logits :func:`dense_attention` builds, reduced instead of normalised."""
    import torch

    from longctx_plugins.ops import passes as P

    logits = covered = None
    for p in passes:
        sel = p.band.contains(q_pos, k_pos)[:, None, None]
        lg = P.gqa_logits(P.rotated(q, q_pos, p.q, inv), P.rotated(k, k_pos, p.k, inv), scale)
        logits = torch.where(sel, lg, lg.new_tensor(-math.inf) if logits is None else logits)
        covered = sel if covered is None else covered | sel
    if logit_scale is not None:
        logits = logits * logit_scale[:, None, None, None, None]
    logits = logits.masked_fill(~(covered & mask[:, :, None]), -math.inf)
    return torch.logsumexp(logits, -1).reshape(q.shape[:3])


def _run_case(name: str, spec, wrong_table: bool = False) -> dict:
    import torch

    from longctx_plugins.attention.kernels import triton_passes as T
    from longctx_plugins.ops import passes as P
    from longctx_plugins.ops import rope

    method, exact, dt, B, H, Hkv, Q, K, D, padding, use_ls, bm, bn = spec[:13]
    contiguous = len(spec) > 13 and spec[13]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
    causal = method != "se_bi"
    passes = _passes(method, exact, causal)
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    inv = rope.default_inv_freq(D, 10000.0)
    k_pos = torch.arange(K)[None].repeat(B, 1)
    valid = None
    if padding:  # left padding on the last row: its first keys are padding, real positions start at 0 after them
        valid = torch.ones(B, K, dtype=torch.bool)
        valid[-1, :6] = False
        k_pos[-1] = torch.arange(K) - 6
        if B > 1 and not causal:
            valid[0] = False  # a row that may see nothing: zeros and lse -inf
    q_pos = k_pos[:, K - Q :]
    q = rope.rotate(torch.randn(B, H, Q, D, generator=gen), q_pos, inv).to(dtype)
    k = rope.rotate(torch.randn(B, Hkv, K, D, generator=gen), k_pos, inv).to(dtype)
    v = torch.randn(B, Hkv, K, D, generator=gen).to(dtype)
    ls = torch.tensor([1.0, 1.3][:B]) if use_ls else None
    mask = torch.ones(B, 1, Q, K, dtype=torch.bool)
    if causal:
        mask &= torch.ones(Q, K, dtype=torch.bool).tril(K - Q)
    if valid is not None:
        mask &= valid[:, None, None, :]
    scale = D**-0.5
    ref = P.dense_attention(q, k, v, q_pos, k_pos, passes, inv, mask=mask, scale=scale, logit_scale=ls)
    ref_lse = _reference_lse(q, k, q_pos, k_pos, passes, inv, mask, scale, ls)
    reason = T.unsupported_reason(q, k, v, passes, q_pos, k_pos)
    if reason:
        return {"name": name, "error": reason}
    if wrong_table:  # the failure check: every pass reads the first query copy
        real = T.pass_table
        T.pass_table = lambda ps: (lambda t: (t[0], t[1], 0, t[3]))(real(ps))
    try:
        out, lse = T.attention(
            q,
            k,
            v,
            q_pos,
            k_pos,
            passes,
            inv,
            causal=causal,
            key_valid=valid,
            scale=scale,
            logit_scale=ls,
            config={"BLOCK_M": bm, "BLOCK_N": bn},
            contiguous=contiguous,
        )
    finally:
        if wrong_table:
            T.pass_table = real
    both = torch.isfinite(ref_lse) == torch.isfinite(lse)
    fin = torch.isfinite(ref_lse)
    return {
        "name": name,
        "dtype": dt,
        "out_dtype_ok": out.dtype == dtype,
        "out_err": float((out.float() - ref).abs().max()),
        "lse_err": float((lse[fin] - ref_lse[fin]).abs().max()) if fin.any() else 0.0,
        "lse_inf_match": bool(both.all()),
        "empty_rows": int((~fin).sum()),
        "empty_rows_zero": bool((out.float()[~fin] == 0).all()),
    }


def _check_ranges(n: int = 150) -> dict:
    """The kernel's contiguous-mode key-block ranges (``_ranges``, run by the interpreter) against brute force over
    random bands, block sizes, row ranges and lengths: the visited blocks run from the first to the last block holding
    a pair of the pass (a pass with no pair here may still visit some), and the unmasked blocks are wholly inside it,
    all of those when no row of the block is cut by the pass's row range."""
    import random

    import torch
    import triton
    import triton.language as tl

    from longctx_plugins.attention.kernels import _passes_kernel

    global _KERNEL
    _KERNEL = _passes_kernel  # jit functions resolve names in their module's globals only

    @triton.jit
    def probe(OUT, pa, pb, lo, hi, qd, kd, rf, rt, K_LEN, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
        r_lo, f_lo, f_hi, r_end = _KERNEL._ranges(pa, pb, lo, hi, qd, kd, rf, rt, K_LEN, CAUSAL, BLOCK_N)
        tl.store(
            OUT + tl.arange(0, 4),
            tl.where(
                tl.arange(0, 4) == 0,
                r_lo,
                tl.where(tl.arange(0, 4) == 1, f_lo, tl.where(tl.arange(0, 4) == 2, f_hi, r_end)),
            ),
        )

    big, rng, wrong = 1 << 30, random.Random(0), []
    for _ in range(n):
        bn, bm, d, kl = rng.choice([4, 8, 16]), rng.choice([4, 8, 16]), rng.choice([1, 1, 3, 7]), rng.randint(1, 70)
        ql = rng.randint(1, kl + 5)
        m0 = rng.randrange(ql) // bm * bm
        pa, pb = m0 + kl - ql, min(m0 + bm, ql) - 1 + kl - ql
        lo, hi = rng.choice([-big, -5, 0, 1, 2, 6]), rng.choice([big, 0, 1, 4, 9, -3])
        rf, rt, causal = rng.choice([-big, 0, 10, pa + 1, pb]), rng.choice([big, 20, pb, pa + 2]), rng.random() < 0.7
        out = torch.zeros(4, dtype=torch.int32)
        probe[(1,)](out, pa, pb, lo, hi, d, d, rf, rt, kl, causal, bn)
        r_lo, f_lo, f_hi, r_end = out.tolist()
        some, whole = [], []
        for blk in range(-(-kl // bn)):
            ok = [
                j < kl and rf <= i < rt and lo <= i // d - j // d <= hi and (not causal or j <= i)
                for i in range(pa, pb + 1)
                for j in range(blk * bn, blk * bn + bn)
            ]
            some += [blk] * any(ok)
            whole += [blk] * all(ok)
        rows_whole = rf <= pa and pb < rt
        if (
            (some and (some[0], some[-1] + 1) != (r_lo, r_end))
            or not r_lo <= f_lo <= f_hi <= r_end
            or not set(range(f_lo, f_hi)) <= set(whole)
            or (rows_whole and list(range(f_lo, f_hi)) != whole)
        ):
            wrong.append([bn, kl, pa, pb, d, lo, hi, rf, rt, causal, [r_lo, f_lo, f_hi, r_end], some, whole])
    return {"name": "ranges", "cases": n, "wrong": wrong[:5], "n_wrong": len(wrong)}


def _worker() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    torch.set_num_threads(2)
    for name, spec in CASES.items():
        print(json.dumps(_run_case(name, spec)), flush=True)
    wrong = _run_case("string_exact", CASES["string_exact"], wrong_table=True)
    print(json.dumps({**wrong, "name": "wrong_table"}), flush=True)
    print(json.dumps(_check_ranges()), flush=True)


@pytest.fixture(scope="module")
def results():
    from .conftest import interpreter_results

    return interpreter_results(__file__, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense_reference(results, name):
    r = results[name]
    assert "error" not in r, r
    out_tol, lse_tol = TOL[r["dtype"]]
    assert r["out_dtype_ok"], r
    assert r["out_err"] <= out_tol, r
    assert r["lse_err"] <= lse_tol, r
    assert r["lse_inf_match"] and r["empty_rows_zero"], r


@pytest.mark.slow
def test_rows_without_keys_are_empty(results):
    r = results["self_extend_bidirectional"]  # its first batch row has no valid key
    assert r["empty_rows"] == 4 * 45 and r["empty_rows_zero"] and r["lse_inf_match"], r


@pytest.mark.slow
def test_contiguous_key_ranges_are_exact_and_tight(results):
    r = results["ranges"]
    assert r["n_wrong"] == 0, r


@pytest.mark.slow
def test_wrong_pass_table_is_caught(results):
    """The comparison can fail: with every pass reading the wrong query copy the output differs."""
    r = results["wrong_table"]
    assert r["out_err"] > 100 * TOL["fp32"][0], r


def _compile_sm90(passes, dtype: str, num_warps: int, num_stages: int, **consts):
    """``_fwd`` through Triton's compiler for sm_90 (NVIDIA backend and ptxas, no GPU). Pointers and strides carry
    the 16-divisibility a real launch specialises them with (without it no load is vectorised)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from longctx_plugins.attention.kernels import _passes_kernel as K
    from longctx_plugins.attention.kernels.triton_passes import pass_table

    table, nq, qc, kc = pass_table(passes)
    consts = dict(
        dict(
            NP=len(passes),
            NQ=nq,
            QC=qc,
            KC=kc,
            CAUSAL=True,
            CONTIGUOUS=False,
            HAS_VALID=False,
            HAS_LS=False,
            HEAD_DIM=128,
            IEEE=dtype == "fp32",
            UPCAST=False,
        ),
        **consts,
    )
    ptrs = {
        "Qc": dtype,
        "Kc": dtype,
        "V": dtype,
        "Out": dtype,
        "Lse": "fp32",
        "QP": "i32",
        "KP": "i32",
        "KV": "i8",
        "LS": "fp32",
        "TAB": "i32",
    }
    sig = {
        n: "constexpr" if n in consts else "*" + ptrs[n] if n in ptrs else "fp32" if n == "qk_scale" else "i32"
        for n in K._fwd.arg_names
    }
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(K._fwd.arg_names)
        if n not in consts and (n in ptrs or n.startswith("s_"))
    }
    try:
        return triton.compile(
            triton.compiler.ASTSource(fn=K._fwd, signature=sig, constexprs=consts, attrs=attrs),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": num_warps, "num_stages": num_stages},
        )
    except RuntimeError as exc:  # no NVIDIA backend / ptxas in this Triton build
        if "ptxas" in str(exc).lower() or "backend" in str(exc).lower():
            pytest.skip(f"Triton cannot compile for CUDA here: {exc}")
        raise


def _registers(compiled) -> tuple[int, int]:
    """``(registers, spill bytes stored + loaded)`` of a compiled kernel. ``n_regs`` / ``n_spills`` in its metadata
    are filled in only when a driver loads it, so this asks ptxas (Triton's own, ``-v``) about its PTX instead."""
    import re
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(compiled.asm["ptx"])
        proc = subprocess.run(
            [get_ptxas(90).path, "-v", "--gpu-name=sm_90a", src, "-o", src + ".cubin"], capture_output=True, text=True
        )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert regs and spills, log
    return int(regs.group(1)), int(spills.group(1)) + int(spills.group(2))


@pytest.mark.slow
def test_compiles_for_hopper_without_gpu():
    """The kernel through Triton's compiler for sm_90, both modes, catching what the interpreter accepts but the
    compiler does not."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    for passes, dtype, contiguous in (
        (_passes("dca", 24, True), "bf16", False),
        (_passes("se_bi", None, False), "fp32", False),
        (_passes("string", 30, True), "bf16", True),
    ):
        res = _compile_sm90(
            passes,
            dtype,
            4,
            2,
            CAUSAL=dtype == "bf16",
            CONTIGUOUS=contiguous,
            HAS_VALID=True,
            HAS_LS=True,
            BLOCK_M=64,
            BLOCK_N=64,
        )
        assert "cubin" in res.asm


@pytest.mark.slow
@pytest.mark.parametrize("block_m, block_n, num_warps, num_stages", [(128, 64, 8, 3), (128, 128, 8, 2)])
def test_no_register_spills_on_hopper(block_m, block_n, num_warps, num_stages):
    """Plain causal SelfExtend prefill (contiguous positions), bf16, head dim 128, at the main autotune configs: no
    register spills (the pass-by-pass layout keeps one query copy resident; the old tile-by-tile one spilled)."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    res = _compile_sm90(
        _passes("se", None, True), "bf16", num_warps, num_stages, CONTIGUOUS=True, BLOCK_M=block_m, BLOCK_N=block_n
    )
    regs, spilled = _registers(res)
    assert spilled == 0, f"{regs} registers, {spilled} bytes of spill traffic"


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _worker()
