"""The embedder's host-side pipeline: tokenisation of the next block in a worker thread while the current block is read
(order kept, nothing dropped, exceptions raised, no thread left behind), span pooling on the device in one
``index_add_`` (against a per-span loop), the tokenizer's batch call over pieces (against one transformers call),
and the pinned asynchronous copies on CUDA. On the real bundled MiniLM; nothing of transformers is mocked."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from longctx_plugins import LongContextEmbedder
from longctx_plugins.embedding import batching, encoding, pooling
from longctx_plugins.embedding.pooling import span_means
from longctx_plugins.embedding.prefetch import prefetched
from longctx_plugins.embedding.tokenization import Tokenization
from longctx_plugins.embedding.transfer import to_device
from longctx_plugins.longembed.synthetic import sotu_documents

from .conftest import gpu


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("longctx-")]


@pytest.fixture(scope="module")
def emb():
    return LongContextEmbedder("default", method="pi", target_length=2048)


@pytest.fixture(scope="module")
def texts():
    """Distinct texts of very different lengths (a few words to ~600 tokens), in no particular order."""
    docs = [d["text"] for d in sotu_documents()[1:6]]
    rng = random.Random(1)
    out = []
    for k in range(17):
        doc = docs[k % 5]
        start = rng.randrange(len(doc) - 8000)
        out.append(f"[{k}] " + doc[start : start + rng.choice([20, 150, 600, 2500])])
    return out


class Recording:
    """Wraps an embedder's :class:`Tokenization` (the package's own object): records the thread and texts of every
    call, and raises for a text that contains ``poison``."""

    def __init__(self, inner, poison: str | None = None):
        self.inner, self.poison, self.calls = inner, poison, []
        self.prefix, self.suffix = inner.prefix, inner.suffix

    def __call__(self, texts, prompt="", offsets=False):
        self.calls.append((threading.current_thread().name, list(texts)))
        if self.poison is not None and any(self.poison in t for t in texts):
            raise RuntimeError(f"tokenizer failed on {self.poison}")
        return self.inner(texts, prompt, offsets=offsets)


@pytest.fixture
def small_blocks(monkeypatch):
    """One batch of texts per tokenisation block, so a short list of texts makes many blocks."""
    monkeypatch.setattr(encoding, "BLOCK_BATCHES", 1)
    monkeypatch.setattr(encoding, "CHARS_PER_TOKEN", 1)


# --------------------------------------------------------------------------------------------- the prefetch helper
def test_prefetched_keeps_order_and_runs_one_item_ahead():
    events = []

    def slow_square(k):
        events.append(("start", k))
        time.sleep(random.Random(k).random() * 0.01)  # finishing times in a random order
        return k * k

    items = list(range(12))
    with prefetched(slow_square, items) as results:
        got = []
        for item, value in results:
            events.append(("use", item))
            got.append((item, value))
            time.sleep(0.005)  # the worker moves on meanwhile, but only to the next item
    assert got == [(k, k * k) for k in items]
    for pos, (kind, k) in enumerate(events):
        if kind == "use":
            started = {j for kind2, j in events[:pos] if kind2 == "start"}
            assert k in started and max(started) <= k + 1
    assert sorted(j for kind, j in events if kind == "start") == items  # each item computed exactly once
    assert not _our_threads()


def test_prefetched_raises_the_worker_exception_and_leaves_no_thread():
    def fail_at_5(k):
        if k == 5:
            raise KeyError("item 5")
        return k

    seen = []
    with pytest.raises(KeyError, match="item 5"):
        with prefetched(fail_at_5, list(range(10))) as results:
            for item, value in results:
                seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert not _our_threads()
    # the consumer stopping early (its own exception) also leaves no thread behind
    with pytest.raises(ZeroDivisionError):
        with prefetched(lambda k: (time.sleep(0.01), k)[1], list(range(10))) as results:
            for item, _ in results:
                if item == 2:
                    raise ZeroDivisionError
    assert not _our_threads()
    with prefetched(str, [7]) as results:  # one item: no thread at all
        assert list(results) == [(7, "7")]


def test_blocks_cover_every_index_once_longest_first():
    sizes = [5, 300, 40, 40, 1000, 1, 60, 2500, 7, 90]
    blocks = batching.blocks(sizes, max_items=3, max_size=200)
    flat = [i for b in blocks for i in b]
    assert sorted(flat) == list(range(len(sizes)))
    assert [sizes[i] for i in flat] == sorted(sizes, reverse=True)
    for b in blocks:
        assert len(b) <= 3 and (len(b) == 1 or sum(sizes[i] for i in b[:-1]) < 200)
    assert batching.blocks([], 4, 10) == []


# ------------------------------------------------------------------------------------------------ encode pipeline
def test_prefetched_encode_keeps_every_text_in_order(emb, texts, small_blocks):
    recorder = Recording(emb.reader.tokenization)
    emb.reader.tokenization = recorder
    try:
        many = emb.encode(texts + texts[:3], batch_size=2)  # repeated texts: read once, vectors where asked
    finally:
        emb.reader.tokenization = recorder.inner
    tokenized = [t for _, call in recorder.calls for t in call]
    assert sorted(tokenized) == sorted(texts)  # every text tokenised, exactly once
    assert len(recorder.calls) > 3 and any(name.startswith("longctx-prefetch") for name, _ in recorder.calls)
    assert not _our_threads()
    one_by_one = np.stack([emb.encode([t])[0] for t in texts])
    np.testing.assert_allclose(many[: len(texts)], one_by_one, atol=2e-5, rtol=0)
    assert np.array_equal(many[len(texts) :], many[:3])


def test_prefetched_encode_equals_one_block(emb, texts, small_blocks, monkeypatch):
    blocked = emb.encode(texts, batch_size=3)
    monkeypatch.setattr(encoding, "BLOCK_BATCHES", 10**6)  # every text in one block
    np.testing.assert_allclose(blocked, emb.encode(texts, batch_size=3), atol=2e-5, rtol=0)
    windows = LongContextEmbedder("default", method="none", overlength="windows", window_overlap=64)
    monkeypatch.setattr(encoding, "BLOCK_BATCHES", 1)
    blocked = windows.encode(texts, batch_size=2)
    monkeypatch.setattr(encoding, "BLOCK_BATCHES", 10**6)
    np.testing.assert_allclose(blocked, windows.encode(texts, batch_size=2), atol=2e-5, rtol=0)


@pytest.mark.parametrize("where", ["first", "later"])
def test_a_tokenizer_exception_is_raised_not_swallowed(emb, texts, small_blocks, where):
    """Blocks go longest text first: the longest text is in the first block, the shortest in the last one."""
    poisoned = list(texts)
    k = max if where == "first" else min
    i = k(range(len(texts)), key=lambda j: len(texts[j]))
    poisoned[i] += " POISON"
    recorder = Recording(emb.reader.tokenization, poison="POISON")
    emb.reader.tokenization = recorder
    try:
        with pytest.raises(RuntimeError, match="tokenizer failed on POISON"):
            emb.encode(poisoned, batch_size=2)
        assert not _our_threads()
        spans = [[(0, 3)] for t in poisoned]
        with pytest.raises(RuntimeError, match="tokenizer failed on POISON"):
            emb.encode_spans_many(poisoned, spans, batch_size=2)
        assert not _our_threads()
        assert all(name.startswith("longctx-prefetch") for name, _ in recorder.calls)
    finally:
        emb.reader.tokenization = recorder.inner
    assert emb.encode(["fine again"]).shape == (1, 384)


def test_prefetched_late_chunking_equals_one_call_per_text(emb, texts, small_blocks):
    rng = random.Random(3)
    spans = []
    for t in texts:  # spans between spaces (each holds a token), overlapping ones too
        spaces = [i for i, c in enumerate(t) if c == " "]
        cuts = sorted(rng.sample(spaces, min(4, len(spaces))))
        spans.append([(a, b) for a, b in zip([0] + cuts, cuts + [len(t)]) if t[a:b].strip()] + [(0, len(t))])
    spans[4] = []  # a text without spans is skipped
    many = emb.encode_spans_many(texts, spans, batch_size=2)
    assert many[4].shape == (0, 384)
    for t, s, v in zip(texts, spans, many):
        if s:
            np.testing.assert_allclose(v, emb.encode_spans(t, s), atol=2e-5, rtol=0)
    assert not _our_threads()


def test_device_worker_exception_is_raised_and_threads_stop():
    done = []

    def step(d, batch):
        if batch == [3]:
            raise ValueError("batch 3 failed")
        time.sleep(0.002)
        done.append((d, batch[0]))

    with pytest.raises(ValueError, match="batch 3 failed"):
        with batching.Runner(2, step) as runner:
            runner.spread([[i] for i in range(8)], [10] * 8)
    assert not _our_threads()
    with batching.Runner(3, lambda d, b: done.append((d, b[0]))) as runner:  # the greedy balance of assign()
        runner.spread([[i] for i in range(6)], [100, 90, 80, 10, 10, 10])
    assert sorted(i for d, i in done[-6:]) == list(range(6))
    assert batching.assign([[i] for i in range(6)], [100, 90, 80, 10, 10, 10], 3) == [
        [[0]],
        [[1]],
        [[2], [3], [4], [5]],
    ]
    assert sorted(i for d, i in done[-6:] if d == 2) == [2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------------- span pooling
def _loop_reference(states: torch.Tensor, lo, hi) -> torch.Tensor:
    """The per-span loop: the float64 mean of each span's rows (zeros for an empty span)."""
    x = states.double()
    return torch.stack([x[a:b].mean(0) if b > a else torch.zeros(x.shape[1], dtype=x.dtype) for a, b in zip(lo, hi)])


def _random_spans(rng: np.random.Generator, n: int, k: int):
    """``k`` spans over ``n`` rows: many of length 1, some of the whole text, and (when n >= 30) adjacent ones and
    overlapping, nested ones."""
    lo = rng.integers(0, n, size=k)
    hi = np.minimum(n, lo + rng.choice([1, 1, 2, 5, 40, n], size=k))
    if n >= 30:
        lo[:5], hi[:5] = [0, 10, 11, 5, 5], [10, 11, 30, 25, 26]
    return lo.astype(np.int64), hi.astype(np.int64)


# Tolerance: sums accumulate in float32 for every input dtype, so against the float64 loop the means of unit-scale
# states agree to a few float32 ulps (1e-6 absolute here), for bf16 states as for fp32 (bf16 values are exact in fp32).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_span_means_equal_the_per_span_loop(dtype):
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for n, k in [(1, 1), (7, 5), (300, 40), (2000, 200)]:
        states = torch.randn(n, 48, generator=gen).to(dtype)
        lo, hi = _random_spans(rng, n, k)
        got = span_means(states, lo, hi)
        assert got.dtype == torch.float32 and got.shape == (k, 48)
        torch.testing.assert_close(got.double(), _loop_reference(states, lo, hi), atol=1e-6, rtol=0)


def test_span_means_in_bounded_groups_and_batched_rows(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(3 * 100, 16, generator=gen)  # three texts of 100 rows, flattened as a batch is
    rng = np.random.default_rng(1)
    lo = rng.integers(0, 100, 60)
    hi = np.minimum(100, lo + rng.integers(1, 100, 60))  # heavily overlapping: ~3k pairs over 100 rows
    row = np.repeat([0, 1, 2], 20)
    lo, hi = lo + 100 * row, hi + 100 * row
    ref = _loop_reference(states, lo, hi)
    monkeypatch.setattr(pooling, "MIN_PAIRS", 1)  # groups of at most 300 pairs: many index_add_ calls
    assert len(pooling._pair_groups(hi - lo, 300)) > 5
    torch.testing.assert_close(span_means(states, lo, hi).double(), ref, atol=1e-6, rtol=0)
    empty = span_means(states, np.array([4, 9]), np.array([4, 12]))  # an empty span gives zeros
    assert torch.equal(empty[0], torch.zeros(16)) and span_means(states, np.zeros(0), np.zeros(0)).shape == (0, 16)


# ---------------------------------------------------------------------------------------------------- tokenisation
def test_batch_call_ignores_the_backends_truncation_and_padding(emb):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(emb.model_name_or_path)
    text = " ".join(d["text"] for d in sotu_documents()[:3])
    t = Tokenization(tok)
    assert t.parallel
    tok.backend_tokenizer.enable_truncation(16)  # as a tokenizer.json, or someone's earlier call, may leave them
    tok.backend_tokenizer.enable_padding(length=50_000)
    many = t([text, "short text", text[:9000]])
    again = t([text[:9000]], offsets=True)
    ref = tok([text, "short text", text[:9000]], truncation=False)["input_ids"]
    assert [e.ids.tolist() for e in many] == ref
    assert again[0].ids.tolist() == ref[2] and len(again[0].starts) == len(ref[2])


# ------------------------------------------------------------------------------------------------ device transfers
def test_cpu_transfer_is_unchanged():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = to_device(a, torch.device("cpu"))
    assert t.device.type == "cpu" and torch.equal(t, torch.from_numpy(a))
    assert t.data_ptr() == torch.from_numpy(a).data_ptr()  # no copy, no pinning


@pytest.mark.gpu
@gpu
def test_cuda_pinned_transfers_and_encode_equal_the_cpu():
    a = np.random.default_rng(0).integers(0, 1000, (64, 513))
    torch.testing.assert_close(to_device(a, "cuda").cpu(), torch.from_numpy(a))
    texts = [d["text"][:6000] for d in sotu_documents()[:5]] + ["short"]
    cpu = LongContextEmbedder("default", method="pi", target_length=2048, device="cpu")
    cuda = LongContextEmbedder("default", method="pi", target_length=2048, device="cuda", dtype=torch.float32)
    np.testing.assert_allclose(cuda.encode(texts), cpu.encode(texts), atol=1e-4)
    spans = [[(0, 100), (50, 3000)]] * len(texts[:5])
    for c, g in zip(cpu.encode_spans_many(texts[:5], spans), cuda.encode_spans_many(texts[:5], spans)):
        np.testing.assert_allclose(g, c, atol=1e-4)
