"""The LongEmbed evaluator as a library: tasks and their data checks, metrics, the split cache, statistics."""

import copy
import json
import math

import numpy as np
import pytest
from transformers import AutoTokenizer

from longctx_plugins import LongContextEmbedder
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed import BM25, evaluate, get_task
from longctx_plugins.longembed.cache import CacheWarning
from longctx_plugins.longembed.metrics import retrieval_scores
from longctx_plugins.longembed.stats import bootstrap_ci, summarize
from longctx_plugins.longembed.tasks import TaskDataWarning


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def needle(tok):
    return get_task("needle", lengths=[256, 512], tokenizer=tok, n_queries=5, n_docs=10)


@pytest.fixture(scope="module")
def embedder():
    return LongContextEmbedder("default", method="pi", target_length=1024)


def write_task(root, name, docs, queries, qrels):
    """A real task in the LongEmbed layout under ``root/name``; ``qrels`` is a list of (query id, doc id)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps({"doc_id": k, "text": v}) + "\n" for k, v in docs.items()))
    (d / "queries.jsonl").write_text("".join(json.dumps({"qid": k, "text": v}) + "\n" for k, v in queries.items()))
    (d / "qrels.jsonl").write_text("".join(json.dumps({"qid": q, "doc_id": x}) + "\n" for q, x in qrels))
    return d


DOCS = {
    "d1": "Paris is the capital of France. " * 50,
    "d2": "Bananas are yellow fruits. " * 50,
    "d3": "The moon orbits the earth once a month. " * 50,
}
QUERIES = {"q1": "capital of France", "q2": "yellow fruit", "q3": "what orbits the earth"}
QRELS = [("q1", "d1"), ("q2", "d2"), ("q3", "d3")]


def test_synthetic_tasks_are_deterministic_and_sized(tok):
    for name in ("passkey", "needle"):
        a = get_task(name, lengths=[256, 700], seed=3, tokenizer=tok, n_queries=4, n_docs=8)
        b = get_task(name, lengths=[256, 700], seed=3, tokenizer=tok, n_queries=4, n_docs=8)
        c = get_task(name, lengths=[256, 700], seed=4, tokenizer=tok, n_queries=4, n_docs=8)
        assert a.to_dict() == b.to_dict() and a.to_dict() != c.to_dict()
        assert a.splits == ["test_256", "test_700"] and a.main_score == "ndcg_at_1"
        for split, length in (("test_256", 256), ("test_700", 700)):
            lens = [len(tok(d)["input_ids"]) for d in a.corpus[split].values()]
            assert max(lens) <= length and min(lens) >= length * 0.85, lens
            assert len(a.corpus[split]) == 8 and len(a.queries[split]) == 4
            for q, rel in a.qrels[split].items():
                (doc,) = rel
                assert doc in a.corpus[split]
        # the needle's answer sits in its relevant document
        q, rel = next(iter(a.qrels["test_700"].items()))
        doc = a.corpus["test_700"][next(iter(rel))]
        key = a.queries["test_700"][q].rstrip("?").split(" for ")[-1].split(" in ")[-1]
        assert key in doc


def test_bad_task_inputs(tmp_path):
    with pytest.raises(ValueError, match="valid tasks"):
        get_task("passkeys")
    with pytest.raises(ValueError, match="positive integers"):
        get_task("passkey", lengths=[256, -1])
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        get_task("qmsum", data_dir=str(tmp_path))
    d = tmp_path / "qmsum"
    d.mkdir()
    (d / "corpus.jsonl").write_text('{"doc_id": "d1", "text": "a long meeting"}\n{"doc_id": "d2", "text": oops}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 2"):
        get_task("qmsum", data_dir=str(tmp_path))


def test_real_task_from_local_files(tmp_path, embedder):
    write_task(tmp_path, "2wikimqa", {k: DOCS[k] for k in ("d1", "d2")}, {"q1": QUERIES["q1"]}, [("q1", "d1")])
    task = get_task("2wikimqa", data_dir=str(tmp_path))
    assert task.main_score == "ndcg_at_10" and task.splits == ["test"]
    res = evaluate(embedder, [task], progress=False)
    assert res["2wikimqa"]["main_score"] == 1.0 and res["2wikimqa"]["per_query"] == {"test": {"q1": 1.0}}


@pytest.mark.parametrize("empty", ["corpus.jsonl", "queries.jsonl", "qrels.jsonl"])
def test_empty_task_file_is_a_clear_error(tmp_path, empty):
    d = write_task(tmp_path, "qmsum", DOCS, QUERIES, QRELS)
    (d / empty).write_text("\n")
    with pytest.raises(ValueError, match=rf"{empty} is empty"):
        get_task("qmsum", data_dir=str(tmp_path))


def test_qrels_that_match_nothing_are_a_clear_error(tmp_path):
    write_task(tmp_path, "qmsum", DOCS, QUERIES, [("Q1", "d1"), ("Q2", "d2")])
    with pytest.raises(ValueError, match=r"qrels.jsonl: none of its 2 query ids appear in .*queries.jsonl"):
        get_task("qmsum", data_dir=str(tmp_path))
    write_task(tmp_path, "qmsum", DOCS, QUERIES, [("q1", "doc1"), ("q2", "doc2"), ("q3", "doc3")])
    with pytest.raises(ValueError, match=r"qrels.jsonl: none of its 3 document ids appear in .*corpus.jsonl"):
        get_task("qmsum", data_dir=str(tmp_path))


def test_partly_matching_qrels_warn_and_drop(tmp_path):
    write_task(tmp_path, "qmsum", DOCS, QUERIES, QRELS + [("q9", "d1"), ("q1", "d7")])
    with pytest.warns(
        TaskDataWarning,
        match=r"qrels.jsonl: dropped 2 of 5 judgements: 1 query id.*'q9'.*1 document "
        r"id.*'d7'",
    ):
        task = get_task("qmsum", data_dir=str(tmp_path))
    assert task.qrels["test"] == {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    write_task(tmp_path, "qmsum", DOCS, QUERIES, QRELS[:2])
    with pytest.warns(TaskDataWarning, match=r"queries.jsonl: 1 of 3 queries have no judgement"):
        get_task("qmsum", data_dir=str(tmp_path))


def test_metric_values_by_hand():
    results = {"q1": {"a": 0.9, "b": 0.8, "c": 0.1}, "q2": {"a": 0.5, "b": 0.5, "c": 0.4}}
    qrels = {"q1": {"b": 1}, "q2": {"a": 1}}
    s = retrieval_scores(results, qrels, k_values=(1, 3))
    # q1: relevant at rank 2; q2: tie a/b broken by doc id descending -> b first, a second
    assert s["ndcg_at_1"] == 0.0
    assert s["mrr_at_3"] == pytest.approx(0.5)
    assert s["ndcg_at_3"] == pytest.approx(1 / np.log2(3))


class Refuses:
    def encode_queries(self, texts):
        raise AssertionError("should have come from the cache")

    encode_documents = encode_queries


def test_bm25_and_resumable_cache(tmp_path, needle):
    log = {}
    first = evaluate(BM25(), [needle], cache_dir=str(tmp_path), progress=False, cache_log=log)
    assert first["needle"]["main_score"] > 0.8
    assert len(list((tmp_path / "needle").iterdir())) == 2
    assert log == {"needle": {"from_cache": 0, "computed": 2, "dir": str(tmp_path)}}
    log = {}
    again = evaluate(Refuses(), [needle], cache_dir=str(tmp_path), progress=False, cache_log=log)
    assert again == first and log["needle"]["from_cache"] == 2


def _entry(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "corrupt,problem",
    [
        (lambda text, e: text[: len(text) // 2], "not readable JSON"),
        (lambda text, e: "{}", "its key"),
        (lambda text, e: json.dumps({"main_score": 5.0}), "its key"),
        (
            lambda text, e: json.dumps({**e, "scores": {**e["scores"], "main_score": 5.0, "ndcg_at_1": 5.0}}),
            r"not a number in \[0, 1\]",
        ),
        (lambda text, e: json.dumps({**e, "scores": {**e["scores"], "ndcg_at_1": float("nan")}}), "not a number"),
        (
            lambda text, e: json.dumps({**e, "scores": {k: v for k, v in e["scores"].items() if k != "map_at_10"}}),
            "missing metric",
        ),
        (lambda text, e: json.dumps({**e, "per_query": {}}), "per-query"),
    ],
    ids=["truncated", "empty-object", "main-score-5", "score-out-of-range", "nan", "missing-metric", "no-per-query"],
)
def test_bad_cache_entries_are_recomputed_with_a_warning(tmp_path, needle, corrupt, problem):
    first = evaluate(BM25(), [needle], cache_dir=str(tmp_path), progress=False)
    path = sorted((tmp_path / "needle").iterdir())[0]
    path.write_text(corrupt(path.read_text(), _entry(path)))
    with pytest.warns(CacheWarning, match=rf"{path.name}: .*{problem}"):
        again = evaluate(BM25(), [needle], cache_dir=str(tmp_path), progress=False)
    for split, s in first["needle"]["splits"].items():
        assert {k: v for k, v in again["needle"]["splits"][split].items() if k != "evaluation_time"} == {
            k: v for k, v in s.items() if k != "evaluation_time"
        }
    assert _entry(path)["scores"]["main_score"] == first["needle"]["splits"][path.name.split("-")[0]]["main_score"]
    assert not list(tmp_path.rglob("*.tmp*"))  # written atomically, nothing left behind


def test_empty_split_is_a_clear_error(needle):
    broken = copy.deepcopy(needle)
    broken.qrels["test_256"] = {}
    with pytest.raises(ValueError, match=r"task 'needle', split 'test_256': no query with a judged document"):
        evaluate(BM25(), [broken], progress=False)


def test_bootstrap_interval_is_deterministic_and_sane():
    rng = np.random.default_rng(1)
    a, b = list(rng.integers(0, 2, 50).astype(float)), list(rng.integers(0, 2, 50).astype(float))
    lo, hi = bootstrap_ci([a])
    assert (lo, hi) == bootstrap_ci([a]) and lo < np.mean(a) < hi and hi - lo < 0.4
    assert bootstrap_ci([[1.0] * 10]) == (1.0, 1.0)
    lo2, hi2 = bootstrap_ci([a, b])  # stratified: interval of the mean of the two split means
    assert lo2 < (np.mean(a) + np.mean(b)) / 2 < hi2 and hi2 - lo2 < hi - lo


def _result(per_query):
    splits = {
        s: {
            "main_score": float(np.mean(list(q.values()))),
            "ndcg_at_1": float(np.mean(list(q.values()))),
            "evaluation_time": 1.0,
        }
        for s, q in per_query.items()
    }
    return {
        "main_score": float(np.mean([s["main_score"] for s in splits.values()])),
        "main_metric": "ndcg_at_1",
        "splits": splits,
        "per_query": per_query,
    }


def test_summarize_over_seeds():
    r0 = _result({"test_256": {"a": 1.0, "b": 0.0}, "test_512": {"a": 0.0, "b": 0.0}})
    r1 = _result({"test_256": {"c": 1.0, "d": 1.0}, "test_512": {"c": 1.0, "d": 0.0}})
    s = summarize({0: r0, 1: r1})
    assert s["main_score"] == pytest.approx(0.5) and s["seeds"] == [0, 1]
    assert s["std"] == pytest.approx(np.std([0.25, 0.75], ddof=1))
    assert s["splits"]["test_256"]["main_score"] == 0.75 and s["splits"]["test_256"]["n_queries"] == 4
    assert s["splits"]["test_256"]["main_score_std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert s["splits"]["test_256"]["evaluation_time"] == 2.0
    lo, hi = s["ci95"]
    assert 0 <= lo < 0.5 < hi <= 1 and (lo, hi) == bootstrap_ci([[1, 0, 1, 1], [0, 0, 1, 0]])
    assert s["per_seed"] == {
        "0": {"main_score": 0.25, "splits": {"test_256": 0.5, "test_512": 0.0}},
        "1": {"main_score": 0.75, "splits": {"test_256": 1.0, "test_512": 0.5}},
    }
    one = summarize({None: r0})  # a real task: one fixed dataset, interval only
    assert one["std"] is None and one["seeds"] is None and "main_score_std" not in one["splits"]["test_256"]
    assert one["ci95"][0] <= 0.25 <= one["ci95"][1] and math.isfinite(one["ci95"][0])


def test_warnings_print_on_their_own_line_above_progress_bars(tmp_path, capsys):
    import sys
    import warnings

    task = get_task("passkey", lengths=[1024], n_queries=2, n_docs=4)
    emb = LongContextEmbedder("default", method="none")  # 1024-token documents are truncated at 512: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # print warnings as Python does outside pytest (pytest records them instead)
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(m, c, f, n, line)
        )
        evaluate(emb, [task], progress=True)
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    assert any(line.startswith(("/", "<")) and "truncated" in line for line in lines), err  # file:line: Warning
