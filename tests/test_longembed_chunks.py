"""Chunk-level retrieval in ``longctx-eval``: the ``contextual`` / ``passkey_chunks`` / ``needle_chunks`` tasks, the
strategies (naive, late chunking, whole-document vectors, BM25) and the CLI, on the real bundled MiniLM."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from longctx_plugins import LongContextEmbedder
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed import chunk_tasks, contextual
from longctx_plugins.longembed.chunk_tasks import Chunker, contextual_split
from longctx_plugins.longembed.cli import main, score_key
from longctx_plugins.longembed.contextual import FACT_KINDS
from longctx_plugins.longembed.evaluate import BM25, split_results
from longctx_plugins.longembed.model_source import resolve_model
from longctx_plugins.longembed.strategies import LateChunking, WholeDocument, expand
from longctx_plugins.longembed.synthetic import generate_with_needles, sotu_sentences
from longctx_plugins.longembed.taskdata import generation_key
from longctx_plugins.longembed.tasks import get_task

LENGTHS = [96, 300]
CHUNK = 32


@pytest.fixture(scope="module")
def tok():
    t = AutoTokenizer.from_pretrained(default_model_path())
    t.model_max_length = 10**9  # lengths here are ours (no "longer than 512" note)
    return t


@pytest.fixture(scope="module")
def tasks(tok):
    return {
        name: get_task(name, lengths=LENGTHS, seed=3, tokenizer=tok, n_queries=4, n_docs=10, chunk_size=CHUNK)
        for name in chunk_tasks.CHUNK_TASKS
    }


@pytest.fixture(scope="module")
def late():
    return LongContextEmbedder("default", method="pi", target_length=1024, show_progress_bar=False)


def n_tokens(tok, text, special=True):
    return len(tok(text, add_special_tokens=special)["input_ids"])


# ------------------------------------------------------------------------------------------------------ tasks
def test_generation_is_deterministic_and_sized(tok, tasks):
    for name, task in tasks.items():
        again = get_task(name, lengths=LENGTHS, seed=3, tokenizer=tok, n_queries=4, n_docs=10, chunk_size=CHUNK)
        assert again.to_dict() == task.to_dict(), name
        other = get_task(name, lengths=LENGTHS[:1], seed=4, tokenizer=tok, n_queries=4, n_docs=10, chunk_size=CHUNK)
        assert other.documents["test_96"] != task.documents["test_96"], name
        assert task.main_score == "ndcg_at_10" and task.splits == ["test_96", "test_300"]
        for length in LENGTHS:
            split = f"test_{length}"
            docs, chunks, corpus = task.documents[split], task.chunks[split], task.corpus[split]
            assert len(docs) == 10 and len(task.queries[split]) == 4
            for text in docs.values():
                assert length - 20 <= n_tokens(tok, text) <= length, (name, length)
            assert set(chunks) == set(corpus) and {c[0] for c in chunks.values()} == set(docs)
            starts = {
                d: np.asarray(
                    [o[0] for o in tok(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
                )
                for d, t in docs.items()
            }
            for cid, (doc_id, a, b) in chunks.items():  # at most CHUNK of the document's tokens start in a chunk
                assert (
                    corpus[cid] == docs[doc_id][a:b]
                    and 0 < np.sum((starts[doc_id] >= a) & (starts[doc_id] < b)) <= CHUNK
                )
            for doc_id, text in docs.items():  # the chunks of a document are the task's chunker's spans of it
                spans = [(a, b) for d, a, b in chunks.values() if d == doc_id]
                assert spans == Chunker(tok, CHUNK)(text)
    assert len(tasks["contextual"].corpus["test_300"]) >= 10 * 300 // CHUNK  # many chunks: real distractors


def test_contextual_gold_chunk_holds_the_fact_which_never_names_the_subject(tok, tasks):
    task = tasks["contextual"]
    for length in LENGTHS:
        split = f"test_{length}"
        docs, picked = contextual_split(tok, length, 4, 10, 3, Chunker(tok, CHUNK))
        assert [d.text for d in docs] == list(task.documents[split].values())
        assert len({d.subject for d in docs}) == 10 and len({d.fact for d in docs}) == 10
        kinds = [
            next(k for k, (_, sentence, _) in enumerate(FACT_KINDS) if re.fullmatch(_pattern(sentence), d.fact))
            for d in docs
        ]
        assert len(set(kinds)) == 2 and all(kinds.count(k) == 5 for k in kinds)  # 10 docs: 2 kinds, shared by 5
        for i in picked:
            d, qid = docs[i], f"{split}_q{i}"
            assert task.queries[split][qid] == d.query and d.subject in d.query
            assert d.text.startswith(d.intro) and d.subject.removeprefix("the ") in d.intro
            for word in d.name_words:  # named once (in the intro), never in the fact
                assert len(re.findall(rf"\b{word}\b", d.text)) == 1 and not re.search(rf"\b{word}\b", d.fact)
            assert d.subject.removeprefix("the ").lower() not in d.fact.lower()
            gold = task.qrels[split][qid]
            assert gold == {c: 1 for c in gold} and len(gold) == 1
            (cid,) = gold
            assert d.fact in task.corpus[split][cid] and d.intro not in task.corpus[split][cid]
            assert cid.startswith(f"{split}_doc{i}_c") and not cid.endswith("_c000")
    # no invented name occurs in the prose the documents are filled with (so a subject is named exactly once)
    prose = " ".join(sotu_sentences())
    names = [p + x for p in contextual._PRE for x in contextual._SUF] + list(contextual.FEMALE + contextual.MALE)
    assert not re.search(r"\b(" + "|".join(names) + r")\b", prose)


def _pattern(sentence):
    """The regex of a fact template: placeholders match anything."""
    return ".+".join(re.escape(part) for part in re.split(r"\{\w+\}", sentence))


def test_passkey_and_needle_chunks_are_the_same_documents_chunked(tok, tasks):
    for name in ("passkey_chunks", "needle_chunks"):
        task = tasks[name]
        corpus, queries, qrels, needles = generate_with_needles(name.split("_")[0], tok, LENGTHS, 4, 10, 3)
        for split in task.splits:
            assert task.documents[split] == corpus[split] and task.queries[split] == queries[split]
            for qid, rel in task.qrels[split].items():
                (doc_id,) = qrels[split][qid]
                needle = needles[split][doc_id]
                a = corpus[split][doc_id].index(needle)
                gold = sorted(rel)
                spans = [task.chunks[split][c] for c in gold]
                assert all(d == doc_id and s < a + len(needle) and a < e for d, s, e in spans)
                others = [c for c, (d, s, e) in task.chunks[split].items() if d == doc_id and c not in rel]
                assert all(not (s < a + len(needle) and a < e) for _, s, e in (task.chunks[split][c] for c in others))
                assert spans[0][1] <= a and a + len(needle) <= spans[-1][2]  # together they hold the key sentence(s)


# ------------------------------------------------------------------------------------------------- strategies
def test_strategies_score_the_same_chunks(tasks, late):
    naive = LongContextEmbedder("default", method="none", show_progress_bar=False)
    task = tasks["contextual"]
    split = "test_96"
    docs, chunks, corpus = task.documents[split], task.chunks[split], task.corpus[split]
    for scorer in (naive, LateChunking(late), WholeDocument(late), BM25()):
        res = split_results(scorer, task, split)
        assert set(res) == set(task.queries[split])
        assert all(set(r) == set(corpus) for r in res.values()), type(scorer).__name__
    ids = list(corpus)
    late_vecs = LateChunking(late).chunk_vectors(docs, chunks, ids)
    whole_vecs = WholeDocument(late).chunk_vectors(docs, chunks, ids)
    naive_vecs = naive.encode_documents([corpus[c] for c in ids])
    doc_id = next(iter(docs))
    mine = [i for i, c in enumerate(ids) if chunks[c][0] == doc_id]
    np.testing.assert_array_equal(late_vecs[mine], late.encode_spans(docs[doc_id], [chunks[ids[i]][1:] for i in mine]))
    np.testing.assert_array_equal(whole_vecs[mine], np.repeat(late.encode_documents([docs[doc_id]]), len(mine), 0))
    # whole: a document's chunks share its score up to offsets below 1e-6, in an order that is not the id order
    res = split_results(WholeDocument(late), task, split)
    q = next(iter(res))
    scores = [res[q][ids[i]] for i in mine]
    assert max(scores) - min(scores) < 1e-6 and len(set(scores)) == len(mine)
    order = sorted(range(len(mine)), key=lambda k: -scores[k])
    assert order not in (list(range(len(mine))), list(range(len(mine)))[::-1])
    # late chunking mixes in the rest of the document: same chunks, other vectors than embedding each alone
    cos = np.sum(late_vecs * naive_vecs, axis=1)
    assert 0.3 < cos.mean() < 0.99
    # a plain embedder given a late scorer's task is naive chunking; a late scorer on a document task is refused
    with pytest.raises(ValueError, match="has no chunks"):
        split_results(LateChunking(late), get_task("passkey", lengths=[64], n_queries=1, n_docs=2), "test_64")


def test_late_none_reads_long_documents_in_windows(tasks, late):
    """Documents beyond the trained window: late:none reads 512-token windows (the overlap given), pi reads whole;
    inside the window the two are the same model."""
    task = get_task("contextual", lengths=[600], seed=1, n_queries=1, n_docs=1, chunk_size=64)
    split = "test_600"
    none = LongContextEmbedder("default", method="none", window_overlap=64, show_progress_bar=False)
    pi = late  # pi to 1024: reads the 600 tokens in one pass
    ids = list(task.corpus[split])
    a = LateChunking(none).chunk_vectors(task.documents[split], task.chunks[split], ids)
    b = LateChunking(pi).chunk_vectors(task.documents[split], task.chunks[split], ids)
    assert none.target_length == 512 and a.shape == b.shape and not np.allclose(a, b, atol=1e-3)
    short = tasks["contextual"]
    s = "test_96"
    ids = list(short.corpus[s])
    np.testing.assert_allclose(
        LateChunking(none).chunk_vectors(short.documents[s], short.chunks[s], ids),
        LateChunking(pi).chunk_vectors(short.documents[s], short.chunks[s], ids),
        atol=1e-5,
    )


def test_run_names_and_cache_keys():
    methods = ("auto", "none", "pi", "gp", "rp", "pcw")
    assert expand(["naive", "late", "whole:pi"], ["none", "pi"], methods) == [
        "naive",
        "late:none",
        "late:pi",
        "whole:pi",
    ]
    source = resolve_model("default")
    base = dict(target_length=2048, batch_size=4, device="cpu", window_overlap=None)
    key = score_key("late:pi", SimpleNamespace(**base), source)
    assert key["strategy"] == "late" and key["method"] == "pi" and key["window_overlap"] is None
    for change in (dict(window_overlap=0), dict(target_length=4096)):
        assert score_key("late:pi", SimpleNamespace(**{**base, **change}), source) != key
    assert score_key("whole:pi", SimpleNamespace(**base), source) != key
    none = score_key("late:none", SimpleNamespace(**base), source)  # a checkpoint saved extended reads none's windows
    assert none != score_key("late:none", SimpleNamespace(**{**base, "target_length": 4096}), source)  # at target
    assert score_key("naive", SimpleNamespace(**base), source)["strategy"] == "naive"
    gen = generation_key("contextual", 0, [256], 2, 4, {"vocab.txt": "x"}, 128, 0)
    for other in ((64, 0), (128, 16)):
        assert generation_key("contextual", 0, [256], 2, 4, {"vocab.txt": "x"}, *other) != gen


# ------------------------------------------------------------------------------------------------------- CLI
def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


TINY = [
    "--tasks",
    "contextual",
    "--lengths",
    "80,560",
    "--n-queries",
    "2",
    "--n-docs",
    "2",
    "--chunk-size",
    "32",
    "--method",
    "none,pi",
    "--strategies",
    "naive,late,whole:pi",
    "--target-length",
    "1024",
    "--window-overlap",
    "64",
    "--no-progress",
]


def test_cli_end_to_end_and_resume(capsys, caplog, tmp_path):
    import logging

    caplog.set_level(logging.INFO, logger="longctx_plugins.longembed")
    out_dir = tmp_path / "o"
    rc, out, err = cli(capsys, *TINY, "--output", str(out_dir))
    assert rc == 0, err
    assert "profile quick fills in" not in out  # every option given
    assert "chunks of at most 32 tokens, consecutive chunks sharing up to 0 tokens (default)" in out
    assert (
        "late:none, late:pi: documents longer than the window (late:none: 512 tokens, late:pi: 1024 tokens) are "
        "read in windows overlapping by 64 tokens" in out
    )
    assert (
        "late:none: documents longer than 512 tokens are read in windows of 512 tokens overlapping by 64" in caplog.text
    )
    res = json.loads((out_dir / "results.json").read_text())
    assert list(res) == ["naive", "late:none", "late:pi", "whole:pi", "bm25"]
    for run, by_task in res.items():
        assert set(by_task) == {"contextual"} and by_task["contextual"]["main_metric"] == "ndcg_at_10"
        for t in by_task.values():
            assert set(t["splits"]) == {"test_80", "test_560"}
            assert all(0 <= s["ndcg_at_1"] <= s["ndcg_at_10"] <= 1 for s in t["splits"].values())
    md = (out_dir / "results.md").read_text()
    assert "nDCG@10 for contextual" in md and "contextual [nDCG@10]" in md and "strategy" in md
    assert "contextual [nDCG@1]" in md  # the second metric, in its own table
    for folder in ("naive", "late-none", "late-pi", "whole-pi", "bm25"):  # mteb-format files, one folder per run
        doc = json.loads((out_dir / folder / "ChunkContextualRetrieval.json").read_text())
        assert doc["task_name"] == "ChunkContextualRetrieval" and set(doc["scores"]) == {"test_80", "test_560"}
    assert (out_dir / "results.png").stat().st_size > 0
    config = json.loads((out_dir / "run_config.json").read_text())
    assert config["runs"] == ["naive", "late:none", "late:pi", "whole:pi"] and config["chunk_size"] == 32
    rc, out, _ = cli(capsys, *TINY, "--output", str(out_dir))  # resume: everything from the caches, same numbers
    assert rc == 0 and json.loads((out_dir / "results.json").read_text()) == res
    for run in ("naive", "late:none", "late:pi", "whole:pi", "bm25"):
        assert f"contextual / {run}: 2 of 2 splits from cache" in out
    assert "contextual (seed 0): generated data from cache" in out
    other = [{"64": "32", "naive,late,whole:pi": "naive,late:none"}.get(a, a) for a in TINY]
    rc, out, _ = cli(capsys, *other, "--output", str(out_dir))  # another window overlap: late runs recomputed
    assert rc == 0 and "late:none: 2 of 2 splits from cache" not in out and "naive: 2 of 2 splits from cache" in out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--strategies", "naive,bogus"], "unknown strategy 'bogus'"),
        (["--strategies", "late:pcw"], "late chunking with pcw is not available"),
        (["--strategies", "naive:pi"], "naive embeds each chunk alone and takes no method"),
        (["--strategies", "late:magic"], "unknown method 'magic'"),
        (["--strategies", "late,late:pi", "--method", "pi"], "makes the run(s) late:pi twice"),
        (["--strategies", "naive,naive"], "--strategies lists naive twice"),
        (["--strategies", ""], "--strategies is empty"),
        (["--chunk-size", "0"], "--chunk-size must be a positive integer, got '0'"),
        (["--chunk-size", "abc"], "--chunk-size must be a positive integer"),
        (["--chunk-overlap", "-1"], "--chunk-overlap must be a non-negative integer, got '-1'"),
        (
            ["--chunk-size", "64", "--chunk-overlap", "64"],
            "--chunk-overlap (64) must be smaller than --chunk-size (64)",
        ),
        (["--window-overlap", "x"], "--window-overlap must be a non-negative integer"),
    ],
)
def test_bad_chunk_options_exit_2(capsys, tmp_path, args, needle):
    rc, _, err = cli(capsys, "--tasks", "contextual", *args, "--output", str(tmp_path))
    assert rc == 2 and needle in err and "Traceback" not in err, err


def test_impossible_sizes_exit_2_with_the_fix(capsys, tmp_path):
    rc, _, err = cli(
        capsys,
        "--tasks",
        "contextual",
        "--lengths",
        "64",
        "--n-queries",
        "1",
        "--n-docs",
        "2",
        "--strategies",
        "naive",
        "--baseline",
        "none",
        "--output",
        str(tmp_path / "a"),
        "--no-progress",
    )
    assert rc == 2 and "cannot hold its fact outside the chunk of its first sentence" in err and "--chunk-size" in err
    rc, _, err = cli(
        capsys,
        "--tasks",
        "contextual",
        "--lengths",
        "96",
        "--n-queries",
        "1",
        "--n-docs",
        "2",
        "--chunk-size",
        "32",
        "--strategies",
        "late:none",
        "--window-overlap",
        "600",
        "--baseline",
        "none",
        "--output",
        str(tmp_path / "b"),
        "--no-progress",
    )
    assert rc == 2 and "--window-overlap 600 must be smaller than the window of late:none (512 tokens)" in err
    assert not (tmp_path / "b" / "cache").exists() or not any((tmp_path / "b" / "cache").iterdir())  # before work


def test_chunk_options_without_chunk_tasks_are_said_to_not_apply(capsys, tmp_path):
    rc, out, _ = cli(
        capsys,
        "--tasks",
        "passkey",
        "--lengths",
        "64",
        "--n-queries",
        "1",
        "--n-docs",
        "2",
        "--method",
        "none",
        "--chunk-size",
        "64",
        "--baseline",
        "none",
        "--output",
        str(tmp_path),
        "--no-progress",
    )
    assert rc == 0 and "note: --chunk-size only apply to the chunk tasks, which this run leaves out" in out
    rc, out, _ = cli(capsys, "--help")
    assert rc == 0 and all(o in out for o in ("--strategies", "--chunk-size", "--window-overlap", "chunks ", "late:"))


def test_profile_strategies_leave_out_what_a_method_cannot_do_and_say_so(capsys, tmp_path):
    """The profile's strategies cross ``late`` with every method; pcw has no token states, so late:pcw is left out
    (and said), while ``--strategies late`` given with pcw stays an error (test_bad_chunk_options_exit_2)."""
    from longctx_plugins.longembed.args import parse

    args = parse(["--profile", "full", "--tasks", "passkey"])  # document tasks only: pcw is a method there
    assert "pcw" in args.methods and "late:pcw" not in args.runs
    args = parse(["--profile", "full", "--tasks", "contextual", "--strategies", "naive,late"])  # profile's methods
    assert "late:pcw" not in args.runs and "late:pcw" in args.skipped_runs and "late:gp" in args.runs
    rc, out, _ = cli(
        capsys,
        "--tasks",
        "contextual",
        "--lengths",
        "96",
        "--chunk-size",
        "32",
        "--n-queries",
        "1",
        "--n-docs",
        "2",
        "--method",
        "none,pcw",
        "--baseline",
        "none",
        "--output",
        str(tmp_path),
        "--no-progress",
    )
    assert rc == 0 and "note: late:pcw left out: pcw averages separate windows" in out
    config = json.loads((tmp_path / "run_config.json").read_text())
    assert config["runs"] == ["naive", "late:none", "whole:none", "whole:pcw"]
    rc, _, err = cli(
        capsys,
        "--tasks",
        "contextual",
        "--strategies",
        "late",
        "--method",
        "none,pcw",
        "--output",
        str(tmp_path / "explicit"),
    )
    assert rc == 2 and "late chunking with pcw is not available" in err


def test_late_none_of_a_checkpoint_saved_extended_reads_its_extended_window_and_is_keyed_by_target(capsys, tmp_path):
    """A checkpoint saved extended (pi to 1024) reads late:none / whole:none with its own method and
    max(--target-length, 1024): the start says the window, and another --target-length is another cache entry."""
    from longctx_plugins import extend

    emb = LongContextEmbedder("default", method="none", show_progress_bar=False)
    model = extend(emb.model, "pi", 1024)
    model.save_pretrained(tmp_path / "ext")
    emb.tokenizer.save_pretrained(tmp_path / "ext")
    base = [
        "--model",
        str(tmp_path / "ext"),
        "--tasks",
        "contextual",
        "--strategies",
        "late:none,whole:none",
        "--lengths",
        "96",
        "--chunk-size",
        "32",
        "--n-queries",
        "1",
        "--n-docs",
        "2",
        "--baseline",
        "none",
        "--no-progress",
        "--output",
        str(tmp_path / "o"),
    ]
    rc, out, err = cli(capsys, *base, "--target-length", "1024")
    assert rc == 0, err
    assert "documents longer than the window (late:none: 1024 tokens)" in out
    rc, out, err = cli(capsys, *base, "--target-length", "2048")
    assert rc == 0, err
    assert "documents longer than the window (late:none: 2048 tokens)" in out
    assert "generated data from cache" in out and "splits from cache" not in out  # data reused, scores not


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--strategies", "late:"], "--strategies 'late:' names no method; write late:<method>"),
        (
            ["--n-docs", "300", "--n-queries", "2"],
            "--n-docs 300: the contextual task invents one subject name per document",
        ),
    ],
)
def test_more_bad_chunk_options_exit_2(capsys, tmp_path, args, needle):
    rc, _, err = cli(capsys, "--tasks", "contextual", *args, "--output", str(tmp_path))
    assert rc == 2 and needle in err and "Traceback" not in err, err


def test_unused_explicit_strategies_only_get_a_note(capsys, tmp_path):
    rc, out, err = cli(
        capsys,
        "--tasks",
        "passkey",
        "--strategies",
        "late",
        "--method",
        "pcw",
        "--lengths",
        "64",
        "--n-queries",
        "1",
        "--n-docs",
        "2",
        "--baseline",
        "none",
        "--no-progress",
        "--output",
        str(tmp_path),
    )
    assert rc == 0, err
    assert "note: --strategies only apply to the chunk tasks, which this run leaves out" in out
