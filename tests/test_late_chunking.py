"""Late chunking (``encode_spans`` / ``late_chunk``), over-length policies, tokenisation and batching of the embedder,
on the real bundled MiniLM, against plain references."""

import numpy as np
import pytest
import torch

from longctx_plugins import LongContextEmbedder
from longctx_plugins.embedding import batching
from longctx_plugins.embedding.chunking import chunk_spans, locate_chunks, sentence_spans
from longctx_plugins.embedding.tokenization import Tokenization
from longctx_plugins.embedding.windows import cover, most_context
from longctx_plugins.longembed.synthetic import sotu_documents


@pytest.fixture(scope="module")
def emb():
    return LongContextEmbedder("default", method="pi", target_length=2048)


@pytest.fixture(scope="module")
def doc():
    return sotu_documents()[3]["text"][:9000]  # ~1.9k tokens of real prose


def reference_spans(emb, text, spans, prompt=""):
    """Plain reference: tokenise prompt+text whole with the tokenizer's own offsets, one forward pass, mean of the
    final states of the tokens whose first character lies in the span, L2-normalised."""
    enc = emb.tokenizer(
        prompt + text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = emb.model(input_ids=enc["input_ids"]).last_hidden_state[0].float()
    starts = enc["offset_mapping"][0][:, 0] - len(prompt)
    special = enc["special_tokens_mask"][0].bool()
    out = []
    for a, b in spans:
        pick = (~special) & (starts >= a) & (starts < b) & (starts >= 0)
        v = hidden[pick].mean(0)
        out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_encode_spans_equals_token_mean_reference(emb, doc):
    spans = [(0, 120), (120, 2000), (1995, 5000), (7000, 9000), (4321, 4400)]  # overlapping spans allowed
    got = emb.encode_spans(doc, spans)
    assert got.dtype == np.float32 and got.shape == (5, 384)
    np.testing.assert_allclose(got, reference_spans(emb, doc, spans), atol=2e-5, rtol=0)


def test_encode_spans_with_a_document_prompt(doc):
    emb = LongContextEmbedder("default", method="pi", target_length=2048, document_prompt="passage: ")
    spans = [(0, 300), (300, 3000)]
    np.testing.assert_allclose(
        emb.encode_spans(doc, spans), reference_spans(emb, doc, spans, "passage: "), atol=2e-5, rtol=0
    )


def test_span_errors_name_index_and_offsets(emb):
    text = "Alpha beta.   Gamma delta."
    for spans, needle in [
        ([(0, 5), (3, 99)], r"spans\[1\] = \(3, 99\) lies outside"),
        ([(-1, 4)], r"spans\[0\] = \(-1, 4\) lies outside"),
        ([(0, 5), (7, 7)], r"spans\[1\] = \(7, 7\) is empty"),
        ([(9, 4)], r"spans\[0\] = \(9, 4\) is empty or reversed"),
        ([(0, 5), (11, 13)], r"spans\[1\] = \(11, 13\) holds no token"),
        ([(0, 5), "ab"], r"spans\[1\]"),
        ([(0.0, 5)], "integers"),
    ]:
        with pytest.raises(ValueError, match=needle):
            emb.encode_spans(text, spans)
    assert emb.encode_spans(text, []).shape == (0, 384)


def test_texts_beyond_target_length_are_read_whole_in_windows(doc):
    """target_length 512: the ~1.9k-token text is read in overlapping 512-token windows; each token's state equals
    the state it has in the window where it has the most context (reference computed window by window)."""
    emb = LongContextEmbedder("default", method="none", window_overlap=128)
    assert emb.target_length == 512
    states, starts = emb.token_states(doc)
    ids = emb.tokenizer(doc)["input_ids"]
    assert len(states) == len(ids) and len(ids) > 1500
    body = ids[1:-1]
    windows = cover(len(body), 510, 128)
    owner = most_context(len(body), windows, causal=False)
    ref = torch.empty(len(body), 384)
    for w, (a, b) in enumerate(windows):
        with torch.no_grad():
            h = emb.model(input_ids=torch.tensor([[ids[0]] + body[a:b] + [ids[-1]]])).last_hidden_state[0, 1:-1]
        sel = torch.as_tensor(np.flatnonzero(owner[a:b] == w))
        ref[a + sel] = h[sel]
    torch.testing.assert_close(states[1:-1].cpu(), ref, rtol=0, atol=1e-5)
    # nothing truncated: spans at the very end still get their own tokens
    tail = emb.encode_spans(doc, [(len(doc) - 400, len(doc))])
    assert np.isfinite(tail).all()


def test_most_context_picks_the_central_window():
    windows = cover(10, 6, 3)  # [0,6) [3,9) [4,10)
    assert windows == [(0, 6), (3, 9), (4, 10)]
    assert most_context(10, windows, causal=False).tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 2]  # ties: earlier
    assert most_context(10, windows, causal=True).tolist() == [0] * 6 + [1, 1, 1, 2]


def test_overlength_policies(doc):
    windows = LongContextEmbedder("default", method="none", overlength="windows", window_overlap=64)
    v = windows.encode([doc])[0]
    ids = windows.tokenizer(doc)["input_ids"]
    body = ids[1:-1]
    parts = [[ids[0]] + body[a:b] + [ids[-1]] for a, b in cover(len(body), 510, 64)]
    mean = windows.embed_token_ids(parts, normalize=False).mean(0)
    np.testing.assert_allclose(v, mean / np.linalg.norm(mean), atol=1e-5)
    with pytest.raises(ValueError, match="overlength"):
        LongContextEmbedder("default", overlength="cut")
    with pytest.raises(ValueError, match="window overlap"):
        LongContextEmbedder("default", method="none", window_overlap=512)


def test_late_chunk_splits_on_sentences_and_embeds(emb, doc):
    (res,) = emb.late_chunk([doc], chunk_size=128, chunk_overlap=32)
    assert len(res["spans"]) == len(res["texts"]) == len(res["embeddings"]) > 5
    for (a, b), t in zip(res["spans"], res["texts"]):
        assert doc[a:b] == t and t == t.strip()
        assert len(emb.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 128 + 2  # WordPiece: re-tokenised ~
    np.testing.assert_allclose(res["embeddings"], emb.encode_spans(doc, res["spans"]), atol=1e-6)
    # consecutive chunks overlap by whole sentences, and together they cover every sentence
    starts = [a for a, _ in res["spans"]]
    assert starts == sorted(starts)
    covered = set()
    for a, b in res["spans"]:
        covered.update(s for s in sentence_spans(doc) if a <= s[0] and s[1] <= b)
    assert covered == set(sentence_spans(doc)) or all(
        len(doc[s[0] : s[1]]) > 500 for s in set(sentence_spans(doc)) - covered
    )


def test_chunk_spans_rules():
    text = "One two three. Four five six seven. Eight nine.\n\nTen."
    starts = np.array([0, 4, 8, 15, 20, 25, 29, 36, 42, 49])  # one token per word
    assert sentence_spans(text) == [(0, 14), (15, 35), (36, 47), (49, 53)]
    assert chunk_spans(text, starts, 4) == [(0, 14), (15, 35), (36, 53)]
    assert chunk_spans(text, starts, 7, chunk_overlap=3) == [(0, 35), (36, 53)]  # "Four..seven" is 4 > 3
    assert chunk_spans(text, starts, 7, chunk_overlap=4) == [(0, 35), (15, 53)]
    assert chunk_spans(text, starts, 2) == [(0, 7), (8, 14), (15, 24), (25, 35), (36, 47), (49, 53)]
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_spans(text, starts, 4, chunk_overlap=4)


def test_parallel_tokenisation_equals_whole_text(emb):
    text = " ".join(d["text"] for d in sotu_documents()[:8])
    assert len(text) > 100_000
    tok = Tokenization(emb.tokenizer)
    assert tok.parallel
    (e,) = tok([text], prompt="query: ", offsets=True)
    ref = emb.tokenizer("query: " + text, return_offsets_mapping=True)
    assert e.ids.tolist() == ref["input_ids"]
    ref_starts = [s - 7 if s >= 7 else -1 for s, _ in ref["offset_mapping"]]
    ref_starts[0] = ref_starts[-1] = -1
    assert e.starts.tolist() == ref_starts


def test_identical_texts_get_identical_vectors(emb, doc):
    """Encoded once: the same text gives the same bits wherever it sits in the input, whatever else is batched."""
    texts = ["short", doc[:3000], "short", doc[:700], doc[:3000], "other"]
    v = emb.encode(texts)
    assert np.array_equal(v[0], v[2]) and np.array_equal(v[1], v[4])
    np.testing.assert_allclose(emb.encode([doc[:3000]])[0], v[1], atol=1e-6)


def test_batches_by_token_budget():
    lengths = [4000, 30, 3900, 700, 20, 600, 25, 1000]
    batches = batching.plan(lengths, batch_size=8, max_tokens=2048)
    assert batches == [[0], [2], [7, 3], [5, 1, 6], [4]]  # 600 x 4 rows would be 2400 padded tokens
    assert batching.plan(lengths, batch_size=2, max_tokens=10**6) == [[0, 2], [7, 3], [5, 1], [6, 4]]


def test_devices_are_validated_with_a_clear_message(emb):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            emb.encode(["x"], devices=["cuda:0", "cuda:1"])
    with pytest.raises(ValueError, match="not a device name"):
        emb.encode(["x"], devices=["gpu0"])
    with pytest.raises(ValueError, match="devices is empty"):
        emb.encode(["x"], devices=[])


def test_encode_spans_many_equals_one_call_per_text(emb, doc):
    texts = [doc, doc[:1500], "Short one. Two sentences.", doc[2000:7000]]
    spans = [[(0, 300), (300, 9000)], [(10, 200)], [(0, 10), (11, 25)], [(0, 5000)]]
    many = emb.encode_spans_many(texts, spans)
    for t, s, v in zip(texts, spans, many):
        np.testing.assert_allclose(v, emb.encode_spans(t, s), atol=2e-5)
    assert many[2].shape == (2, 384)
    with pytest.raises(ValueError, match="one list of spans per text"):
        emb.encode_spans_many(texts, spans[:2])
    with pytest.raises(ValueError, match=r"spans\[0\] = \(0, 99999\) lies outside"):
        emb.encode_spans_many(["abc"], [[(0, 99999)]])


def test_encode_spans_many_with_a_left_padded_decoder(tmp_path, doc):
    """Decoders pad on the left: batched late chunking shifts each row's token ranges accordingly."""
    from transformers import AutoTokenizer

    from .conftest import tiny_model

    tok = AutoTokenizer.from_pretrained(LongContextEmbedder("default", method="none").model_name_or_path)
    model = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=4096)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    dec = LongContextEmbedder(str(tmp_path), method="none")
    assert dec.is_decoder
    texts = [doc[:3000], "A short text. And more.", doc[:900]]
    spans = [[(0, 1000), (1000, 3000)], [(0, 13)], [(100, 900)]]
    for t, s_, v in zip(texts, spans, dec.encode_spans_many(texts, spans)):
        np.testing.assert_allclose(v, dec.encode_spans(t, s_), atol=2e-5)


def test_locate_chunks():
    # no overlap: a repeated chunk goes right after the previous one, not into it
    assert locate_chunks("ab ab ab ab", ["ab ab", "ab ab"], "S") == [(0, 5), (6, 11)]
    # overlap: found after the previous chunk's start
    assert locate_chunks("one two three four", ["one two three", "three four"], "S") == [(0, 13), (8, 18)]
    # out of order (e.g. parent chunks before child chunks)
    assert locate_chunks("one two three", ["two three", "one"], "S") == [(4, 13), (0, 3)]
    with pytest.raises(
        ValueError,
        match="MySplitter returned a chunk that is not part of the document text "
        r"\(chunk 1: 'TWO'\)",
    ):
        locate_chunks("one two", ["one", "TWO"], "MySplitter")
