"""examples/rag_retrieval.py in-process: real LlamaIndex / LangChain classes, real offline MiniLM, two addresses."""
import importlib.util
import json
import os

import numpy as np
import pytest

PATH = os.path.join(os.path.dirname(__file__), "..", "examples", "rag_retrieval.py")
pytest.importorskip("llama_index.embeddings.longctx")
pytest.importorskip("langchain_longctx")
pytest.importorskip("langchain_text_splitters")

TARGET = 1024  # the second address (3.3k tokens) is read in windows, the first (1.6k) too
ARGS = ["--framework", "both", "--docs", "2", "--queries-per-doc", "2", "--method", "pi", "--target-length",
        str(TARGET), "--chunk-size", "256", "--no-baseline"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("rag_retrieval_example", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("rag") / "rag.json"
    return example.main(ARGS + ["--json", str(out)]), json.loads(out.read_text())


def test_deep_sentence_queries_are_partial_unique_and_deep(example, run):
    result, _ = run
    ids, texts = example.corpus(2)
    queries = result["queries"]
    assert len(queries) == 4 and {q["doc"] for q in queries} == set(ids)
    for q in queries:
        text = texts[ids.index(q["doc"])]
        assert text[q["start"]:q["end"]] == q["query"]
        assert q["token"] >= example.DEEP_TOKENS
        sentence_start = text.rfind(". ", 0, q["start"]) + 2
        assert sentence_start < q["start"]  # the sentence's first words are not in the query
        assert len(q["query"].split()) >= 10
        assert sum(t.count(q["query"]) for t in texts) == 1
    # the hit rule: the chunk must be from the right address and cover at least half of the query
    q = queries[0]
    mid = (q["start"] + q["end"]) // 2
    assert example.hits(q, q["doc"], 0, mid + 1) and example.hits(q, q["doc"], mid, 10**9)
    assert not example.hits(q, q["doc"], 0, q["start"] + 3) and not example.hits(q, "other", 0, 10**9)


def test_main_reports_every_framework_and_strategy(run):
    result, saved = run
    assert saved["runs"] == result["runs"] and saved["queries"] == result["queries"]
    assert saved["config"]["framework"] == "both" and saved["config"]["target_length"] == TARGET
    runs = result["runs"]
    assert [(r["framework"], r["strategy"], r["method"]) for r in runs] == [
        ("llama-index", "naive", "pi"), ("llama-index", "late", "pi"), ("langchain", "naive", "pi"),
        ("langchain", "late", "pi")]
    for r in runs:
        assert r["reach"] == TARGET and r["chunks"] > 10
        assert 0 <= r["hit@1"] <= r["hit@5"] <= 1 and 0 <= r["doc@1"] <= 1
        assert len(r["ranks"]) == 4 and all(k is None or 1 <= k <= 5 for k in r["ranks"])
        assert r["hit@1"] == sum(k == 1 for k in r["ranks"]) / 4
    # naive and late chunking split with the same splitter: same chunks within a framework
    assert runs[0]["chunks"] == runs[1]["chunks"] and runs[2]["chunks"] == runs[3]["chunks"]
    lines = result["table"].splitlines()
    assert lines[0].split()[:5] == ["framework", "strategy", "method", "reach", "chunks"]
    assert len(lines) == 2 + len(runs) and all(f"{TARGET}" in line for line in lines[2:])


def stored_chunks(index, framework, doc_id):
    """``(start, end, text, vector)`` of the chunks of ``doc_id`` in one of main's indexes, in document order."""
    if framework == "llama-index":
        rows = [(n.ref_doc_id, n.start_char_idx, n.end_char_idx, n.get_content(), index.vector_store.get(n.node_id))
                for n in index.docstore.docs.values()]
    else:
        rows = [(r["metadata"]["id"], r["metadata"]["start_index"], r["metadata"]["start_index"] + len(r["text"]),
                 r["text"], r["vector"]) for r in index.store.values()]
    return sorted(r[1:] for r in rows if r[0] == doc_id)


def test_stored_chunk_vectors_are_late_chunked_or_embedded_alone(example, run):
    """In main's indexes, a late-chunked vector is encode_spans of its chunk (the whole address read, in windows of
    TARGET tokens) and a naive one the chunk embedded alone; checked on a chunk from the middle of the first
    address, in both frameworks (one read of the address for both: spans are pooled independently)."""
    from langchain_longctx import LongContextEmbeddings

    result, _ = run
    ids, texts = example.corpus(1)
    text = texts[0]
    embedder = LongContextEmbeddings(method="pi", target_length=TARGET).embedder  # main's (shared) model
    assert embedder.target_length == TARGET < len(embedder.tokenize([text])[0])
    picked = {}
    for framework in ("llama-index", "langchain"):
        naive, late = (stored_chunks(result["indexes"][framework, s, "pi"], framework, ids[0])
                       for s in ("naive", "late"))
        assert [c[:3] for c in naive] == [c[:3] for c in late]  # same splitter, same chunks
        picked[framework] = naive[len(naive) // 2][:3] + (naive[len(naive) // 2][3], late[len(late) // 2][3])
    spans = [(start, end) for start, end, *_ in picked.values()]
    assert all(text[a:b] == c for (a, b), (_, _, c, *_) in zip(spans, picked.values()))
    late_expected = embedder.encode_spans(text, spans)
    alone_expected = embedder.encode_documents([c for _, _, c, *_ in picked.values()])
    for k, (_, _, _, naive_vec, late_vec) in enumerate(picked.values()):
        assert not np.allclose(late_expected[k], alone_expected[k], atol=1e-3)
        np.testing.assert_allclose(np.asarray(late_vec, dtype=np.float32), late_expected[k], atol=1e-5)
        np.testing.assert_allclose(np.asarray(naive_vec, dtype=np.float32), alone_expected[k], atol=1e-5)
