"""The decode attention that reads the cache once (:mod:`longctx_plugins.ops.pass_decode`) against the exact
reference :func:`~longctx_plugins.ops.passes.dense_attention`: SelfExtend, Dual Chunk Attention and STRING (with
and without ``exact_below``), grouped query heads, a batch with left padding and empty static-cache slots (positions
and masks as :func:`longctx_plugins.attention.decode.positions` builds them), 1 and 3 query rows, full and partial
rotary dimensions, a logit scale, float32 and bfloat16; the layouts it picks, how often it reads the cache, and its
trace under torch.compile."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from longctx_plugins.attention import decode
from longctx_plugins.ops import dca, string
from longctx_plugins.ops import pass_decode as PD
from longctx_plugins.ops import passes as P
from longctx_plugins.ops import self_extend as se
from longctx_plugins.ops.rope import default_inv_freq, rotate

from .references import eager_attention

B, H, HKV, D, PAD, TRAINED = 2, 4, 2, 16, 5, 16

METHODS = {
    "self_extend_2_4": se.passes(2, 4, causal=True),
    "self_extend_3_5": se.passes(3, 5, causal=True),
    "self_extend_4_8": se.passes(4, 8, causal=True),
    "dca_5_2": dca.passes(5, 2),
    "dca_8_3": dca.passes(8, 3),
    "dca_4_1": dca.passes(4, 1),
    "string_6_2": string.passes(6, 2),
    "string_10_4": string.passes(10, 4),
}


def make_case(kv_len=37, q_len=1, empty=4, rotary=D, dtype=torch.float32, seed=0):
    """q/k/v rotated at their positions; row 1 left padded by PAD slots; the last ``empty`` slots of the cache are
    empty (a static cache); the queries are the last ``q_len`` filled slots. Positions from the mask, as decoding
    reads them."""
    g = torch.Generator().manual_seed(seed)
    inv_freq = default_inv_freq(rotary, 10000.0)
    filled = kv_len - empty
    real = torch.zeros(B, kv_len, dtype=torch.bool)
    real[:, :filled] = True
    real[1, :PAD] = False
    q_slots = torch.arange(filled - q_len, filled)
    mask = (torch.arange(kv_len)[None, None, None] <= q_slots[None, None, :, None]) & real[:, None, None]
    position_ids = (real.long().cumsum(-1) - 1)[:, filled - q_len : filled]
    q_pos, k_pos = decode.positions(mask, position_ids, B, q_len, kv_len, "cpu")
    q = rotate(torch.randn(B, H, q_len, D, generator=g), q_pos, inv_freq).to(dtype)
    k = rotate(torch.randn(B, HKV, kv_len, D, generator=g), k_pos, inv_freq).to(dtype)
    v = torch.randn(B, HKV, kv_len, D, generator=g).to(dtype)
    return dict(query=q, key=k, value=v, q_pos=q_pos, k_pos=k_pos, inv_freq=inv_freq, mask=mask, scale=D**-0.5)


def run_both(passes, case, logit_scale=None):
    args = (case["query"], case["key"], case["value"], case["q_pos"], case["k_pos"], passes, case["inv_freq"])
    kw = dict(mask=case["mask"], scale=case["scale"], logit_scale=logit_scale)
    return PD.pass_attention(*args, **kw), P.dense_attention(*args, **kw)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("keep_trained_window", [False, True])
@pytest.mark.parametrize("kv_len", [37, 40, 12])
@pytest.mark.parametrize("q_len", [1, 3])
@pytest.mark.parametrize("rotary", [D, D // 2])
def test_equals_dense_attention_float32(method, keep_trained_window, kv_len, q_len, rotary):
    passes = METHODS[method]
    if keep_trained_window:
        passes = P.exact_below(passes, TRAINED)
    case = make_case(kv_len, q_len, rotary=rotary, seed=kv_len + q_len)
    for logit_scale in (None, torch.tensor([1.0, 1.37])):
        out, ref = run_both(passes, case, logit_scale)
        assert out.dtype == torch.float32 and out.shape == (B, H, q_len, D)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["self_extend_3_5", "dca_5_2", "string_6_2"])
@pytest.mark.parametrize("q_len", [1, 3])
def test_bfloat16_within_rounding_of_the_exact_result(method, q_len):
    """bf16 inputs: both paths round rotated queries to bf16, the reference also its re-rotated keys (DCA), so the
    two differ by bf16 rounding. Tolerance: 1e-2 absolute (outputs of unit-variance values) against the reference,
    and no further from the float32 result of the same bf16 inputs than the reference is (plus 5e-3)."""
    passes = P.exact_below(METHODS[method], TRAINED)
    case = make_case(40, q_len, dtype=torch.bfloat16, seed=3)
    out, ref = run_both(passes, case, torch.tensor([1.1, 1.2]))
    exact = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in case.items()}
    truth, _ = run_both(passes, exact, torch.tensor([1.1, 1.2]))
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)
    assert (out - truth).abs().max() <= (ref - truth).abs().max() + 5e-3


@pytest.mark.parametrize("chunked", [False, True])
def test_a_single_plain_pass_is_softmax_attention(chunked):
    """One plain pass is ordinary attention; so is DCA with every query inside the trained window (the plain pass of
    ``exact_below`` covers every row: the chunked layout with all variants unrotated)."""
    case = make_case(37, 3, seed=7)
    case["mask"] = case["mask"].clone()
    case["mask"][0, :, 0] = False  # a row that may see nothing gives zeros
    passes = P.exact_below(dca.passes(5, 2), 10_000) if chunked else (P.Pass("all", P.Band()),)
    assert (PD.chunk_size(passes) is not None) == chunked
    out, ref = run_both(passes, case)
    plain = eager_attention(case["query"], case["key"], case["value"], case["mask"], case["scale"])
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert bool((out[0, :, 0] == 0).all())


def test_layouts_and_blocking():
    assert PD.chunk_size(dca.passes(5, 2)) == 5
    assert PD.chunk_size(P.exact_below(dca.passes(5, 2), TRAINED)) == 5
    for passes in (se.passes(3, 5, True), string.passes(6, 2), P.exact_below(string.passes(6, 2), TRAINED)):
        assert PD.chunk_size(passes) is None
    assert PD.blocking(12, 16) == (12, 1)  # the cache is one block
    assert PD.blocking(40, 5) == (5, 1)
    assert PD.blocking(42, 5) == (3, 1)  # 42 = 14 blocks of 3 (no divisor of 42 in 4..5)
    assert PD.blocking(37, 5) == (5, 2)  # prime: blocks of 5 cross heads
    assert PD.blocking(32768 + 64, 5120) == (4104, 1)


def test_chunked_layout_with_blocks_across_heads_and_a_tail():
    """A cache length with no divisor near the chunk size (blocks cross heads, a shorter last block) and one
    shorter than a chunk, against the reference."""
    for kv_len, c in [(37, 5), (41, 6), (7, 8), (23, 3)]:
        passes = P.exact_below(dca.passes(c, 1), 9)
        for q_len in (1, 3):
            out, ref = run_both(passes, make_case(kv_len, q_len, empty=2, seed=kv_len))
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


class _Reads(TorchDispatchMode):
    """How many times the ops (views excepted) read the given tensors: elements read from each one's storage,
    over its size."""

    VIEWS = {"view", "_unsafe_view", "reshape", "transpose", "t", "expand", "slice", "select", "alias", "as_strided"}

    def __init__(self, **tensors):
        super().__init__()
        self.tensors = tensors
        self.elements = dict.fromkeys(tensors, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.__name__.split(".")[0] not in self.VIEWS:
            for t in torch.utils._pytree.tree_leaves((args, kwargs)):
                if not isinstance(t, torch.Tensor):
                    continue
                for name, x in self.tensors.items():
                    if t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                        self.elements[name] += t.numel()
        return func(*args, **kwargs)

    @property
    def reads(self) -> dict:
        return {name: self.elements[name] / x.numel() for name, x in self.tensors.items()}


@pytest.mark.parametrize("method", ["dca_5_2", "dca_4_1", "string_6_2", "string_10_4", "self_extend_3_5"])
@pytest.mark.parametrize("kv_len", [37, 40])
def test_reads_the_cache_once(method, kv_len):
    """Keys and values are read once (the chunked layout's last, shorter block included), except by SelfExtend,
    whose far pass must re-rotate its keys (here eagerly, piece by piece; compiled, one fused read and write) for
    its matmul to read."""
    case = make_case(kv_len, 1)
    passes = P.exact_below(METHODS[method], TRAINED)
    args = (case["query"], case["key"], case["value"], case["q_pos"], case["k_pos"], passes, case["inv_freq"])
    with _Reads(key=case["key"], value=case["value"]) as mode:
        PD.pass_attention(*args, mask=case["mask"], scale=case["scale"])
    assert mode.reads["value"] == 1
    assert mode.reads["key"] > 1 if method.startswith("self_extend") else mode.reads["key"] == 1


def test_row_chunks_equal_one_call(monkeypatch):
    case = make_case(37, 3)
    passes = P.exact_below(dca.passes(5, 2), TRAINED)
    args = (case["query"], case["key"], case["value"], case["q_pos"], case["k_pos"], case["inv_freq"], passes)
    whole = decode.pass_attention(*args, case["mask"], case["scale"], None)
    monkeypatch.setattr(decode, "LOGIT_ELEMENTS", 1)  # one query row per chunk
    torch.testing.assert_close(decode.pass_attention(*args, case["mask"], case["scale"], None), whole)


@pytest.mark.parametrize("method", ["self_extend_3_5", "dca_5_2", "string_6_2"])
def test_traces_in_one_graph(method):
    torch._dynamo.reset()
    passes = P.exact_below(METHODS[method], TRAINED)
    case = make_case(37, 1)
    fn = torch.compile(PD.pass_attention, backend="eager", fullgraph=True)
    args = (case["query"], case["key"], case["value"], case["q_pos"], case["k_pos"], passes, case["inv_freq"])
    out = fn(*args, mask=case["mask"], scale=case["scale"], logit_scale=torch.tensor([1.0, 1.2]))
    ref = P.dense_attention(*args, mask=case["mask"], scale=case["scale"], logit_scale=torch.tensor([1.0, 1.2]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a compiler")
def test_inductor_compiles_the_chunked_layout():
    torch._dynamo.reset()
    passes = P.exact_below(dca.passes(5, 2), TRAINED)
    case = make_case(37, 1)
    args = (case["query"], case["key"], case["value"], case["q_pos"], case["k_pos"], passes, case["inv_freq"])
    out = torch.compile(PD.pass_attention, fullgraph=True)(*args, mask=case["mask"], scale=case["scale"])
    ref = P.dense_attention(*args, mask=case["mask"], scale=case["scale"])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch._dynamo.reset()
