"""examples/rag_retrieval.py run as a script: real LlamaIndex / LangChain classes, real offline MiniLM, two addresses.

That the stores hold late-chunked vectors (``encode_spans`` of each chunk) is tested in the integration packages'
own suites; here the example must run end to end and report what its JSON says it measured.
"""

import json
import os
import subprocess
import sys

import pytest

from longctx_plugins.longembed.synthetic import sotu_documents

PATH = os.path.join(os.path.dirname(__file__), "..", "examples", "rag_retrieval.py")
pytest.importorskip("llama_index.embeddings.longctx")
pytest.importorskip("langchain_longctx")
pytest.importorskip("langchain_text_splitters")

TARGET = 1024  # the second address (3.3k tokens) is read in windows, the first (1.6k) too
ARGS = [
    "--framework",
    "both",
    "--docs",
    "2",
    "--queries-per-doc",
    "2",
    "--method",
    "pi",
    "--target-length",
    str(TARGET),
    "--chunk-size",
    "256",
    "--no-baseline",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rag") / "rag.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, PATH, *ARGS, "--json", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_deep_sentence_queries_are_partial_unique_and_deep(run):
    _, result = run
    docs = {d["id"]: d["text"] for d in sotu_documents()[:2]}
    assert result["config"]["documents"] == list(docs)
    queries = result["queries"]
    assert len(queries) == 4 and {q["doc"] for q in queries} == set(docs)
    for q in queries:
        text = docs[q["doc"]]
        assert text[q["start"] : q["end"]] == q["query"]
        assert q["token"] >= result["config"]["deep_tokens"] == 512
        sentence_start = text.rfind(". ", 0, q["start"]) + 2
        assert sentence_start < q["start"]  # the sentence's first words are not in the query
        assert len(q["query"].split()) >= 10
        assert sum(t.count(q["query"]) for t in docs.values()) == 1


def test_reports_every_framework_and_strategy(run):
    stdout, result = run
    assert result["config"]["framework"] == "both" and result["config"]["target_length"] == TARGET
    runs = result["runs"]
    assert [(r["framework"], r["strategy"], r["method"]) for r in runs] == [
        ("llama-index", "naive", "pi"),
        ("llama-index", "late", "pi"),
        ("langchain", "naive", "pi"),
        ("langchain", "late", "pi"),
    ]
    for r in runs:
        assert r["reach"] == TARGET and r["chunks"] > 10
        assert 0 <= r["hit@1"] <= r["hit@5"] <= 1 and 0 <= r["doc@1"] <= 1
        assert len(r["ranks"]) == 4 and all(k is None or 1 <= k <= 5 for k in r["ranks"])
        assert r["hit@1"] == sum(k == 1 for k in r["ranks"]) / 4
        assert r["hit@5"] == sum(k is not None for k in r["ranks"]) / 4
    # naive and late chunking split with the same splitter: same chunks within a framework
    assert runs[0]["chunks"] == runs[1]["chunks"] and runs[2]["chunks"] == runs[3]["chunks"]
    lines = result["table"].splitlines()
    assert lines[0].split()[:5] == ["framework", "strategy", "method", "reach", "chunks"]
    assert len(lines) == 2 + len(runs) and all(f"{TARGET}" in line for line in lines[2:])
    assert result["table"] in stdout  # what it printed is what it saved
