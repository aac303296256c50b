"""LongEmbed tasks: synthetic ``passkey`` / ``needle`` (generated), the four real ones (local files / hub) and the
generated chunk-level tasks ``contextual`` / ``passkey_chunks`` / ``needle_chunks`` (:mod:`.chunk_tasks`)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

from .._checks import is_int_at_least
from . import chunk_tasks, synthetic

REAL_TASKS = {"narrativeqa": "narrativeqa", "qmsum": "qmsum", "2wikimqa": "2wikimqa", "summscreenfd": "summ_screen_fd"}
GENERATED_TASKS = synthetic.SYNTHETIC_TASKS + chunk_tasks.CHUNK_TASKS  # built from --seed, sized by --lengths
TASKS = synthetic.SYNTHETIC_TASKS + tuple(REAL_TASKS) + chunk_tasks.CHUNK_TASKS
MTEB_NAMES = {
    "passkey": "LEMBPasskeyRetrieval",
    "needle": "LEMBNeedleRetrieval",
    "narrativeqa": "LEMBNarrativeQARetrieval",
    "qmsum": "LEMBQMSumRetrieval",
    "2wikimqa": "LEMBWikimQARetrieval",
    "summscreenfd": "LEMBSummScreenFDRetrieval",
    # not LongEmbed tasks: this package's chunk-level tasks, named in the same style
    "contextual": "ChunkContextualRetrieval",
    "passkey_chunks": "ChunkPasskeyRetrieval",
    "needle_chunks": "ChunkNeedleRetrieval",
}


@dataclass
class Task:
    name: str
    corpus: dict = field(default_factory=dict)  # split -> {doc_id: text}
    queries: dict = field(default_factory=dict)  # split -> {query_id: text}
    qrels: dict = field(default_factory=dict)  # split -> {query_id: {doc_id: relevance}}
    main_score: str = "ndcg_at_1"
    description: str = ""
    documents: dict = field(default_factory=dict)  # chunk tasks: split -> {doc_id: text}
    chunks: dict = field(default_factory=dict)  # chunk tasks: split -> {chunk_id: [doc_id, start, end]}

    @property
    def splits(self) -> list[str]:
        return list(self.corpus)

    @property
    def mteb_name(self) -> str:
        return MTEB_NAMES.get(self.name, self.name)

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "corpus": self.corpus,
            "queries": self.queries,
            "qrels": self.qrels,
            "main_score": self.main_score,
            "description": self.description,
        }
        if self.chunks:
            out.update(documents=self.documents, chunks=self.chunks)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(**d)

    def to_mteb(self):
        """An mteb ``AbsTaskRetrieval`` over this task's data (``mteb.evaluate(model, tasks=[task.to_mteb()])``)."""
        from .mteb_compat import to_mteb_task

        return to_mteb_task(self)


def check_lengths(lengths) -> list[int]:
    out = []
    for x in lengths:
        if not is_int_at_least(x, 1):
            raise ValueError(f"lengths must be positive integers, got {x!r}.")
        out.append(x)
    return out


def get_task(
    name: str,
    lengths=None,
    seed: int = 0,
    data_dir: str | None = None,
    tokenizer=None,
    n_queries: int = 50,
    n_docs: int = 100,
    chunk_size: int = chunk_tasks.DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = chunk_tasks.DEFAULT_CHUNK_OVERLAP,
) -> Task:
    """Build or load a LongEmbed task.

    Synthetic tasks are generated deterministically from ``seed`` with lengths counted in ``tokenizer``'s tokens
    (default: the bundled MiniLM tokenizer). Real tasks read ``<data_dir>/<name>/{corpus,queries,qrels}.jsonl``
    (LongEmbed layout) or, when a hub is reachable and no ``data_dir`` is given, the HF dataset ``dwzhu/LongEmbed``.
    Chunk tasks split their documents into chunks of ``chunk_size`` tokens (``chunk_overlap`` shared).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}.")
    if name in GENERATED_TASKS:
        lengths = check_lengths(lengths or synthetic.DEFAULT_LENGTHS)
        if tokenizer is None:
            from transformers import AutoTokenizer

            from ..embedder import default_model_path

            tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    if name in chunk_tasks.CHUNK_TASKS:
        corpus, queries, qrels, documents, chunks = chunk_tasks.generate(
            name, tokenizer, lengths, n_queries, n_docs, seed, chunk_size, chunk_overlap
        )
        return Task(
            name,
            corpus,
            queries,
            qrels,
            chunk_tasks.MAIN_SCORE,
            f"chunk-level {name}, seed {seed}, chunks of {chunk_size} tokens, overlap {chunk_overlap}",
            documents,
            chunks,
        )
    if name in synthetic.SYNTHETIC_TASKS:
        corpus, queries, qrels = synthetic.generate(name, tokenizer, lengths, n_queries, n_docs, seed)
        return Task(name, corpus, queries, qrels, "ndcg_at_1", f"synthetic {name}, seed {seed}")
    return _load_real(name, data_dir)


class TaskDataWarning(UserWarning):
    """Task data that is usable but not whole (judgements that match no query or document, unjudged queries)."""


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"missing data file {path} (expected the LongEmbed layout: corpus.jsonl, "
            "queries.jsonl, qrels.jsonl per task)."
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {n}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}.")
            rows.append((n, row))
    if not rows:
        raise ValueError(f"{path} is empty: expected one JSON object per line (the LongEmbed layout).")
    return rows


def _field(row, keys, path, n):
    for k in keys:
        if k in row:
            return row[k]
    raise ValueError(f"{path}, line {n}: none of the fields {keys} is present.")


def _examples(ids) -> str:
    ids = sorted(ids)
    return ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")


def check_qrels(corpus: dict, queries: dict, qrels: dict, names=("corpus", "queries", "qrels")) -> dict:
    """``qrels`` restricted to the queries and documents that exist. None matching is a ValueError; some not
    matching is a :class:`TaskDataWarning` saying how many judgements were dropped. ``names`` name the sources
    (file paths) in the messages."""
    c_name, q_name, r_name = names
    qids = set(qrels)
    dids = {d for rel in qrels.values() for d in rel}
    if not qids:
        raise ValueError(f"{r_name}: no judgements; nothing can be scored.")
    if not qids & set(queries):
        raise ValueError(
            f"{r_name}: none of its {len(qids)} query ids appear in {q_name} (e.g. {_examples(qids)}"
            f" vs {_examples(queries)}); the query ids of both files must match."
        )
    if not dids & set(corpus):
        raise ValueError(
            f"{r_name}: none of its {len(dids)} document ids appear in {c_name} (e.g. "
            f"{_examples(dids)} vs {_examples(corpus)}); the document ids of both files must match."
        )
    kept = {q: {d: r for d, r in rel.items() if d in corpus} for q, rel in qrels.items() if q in queries}
    kept = {q: rel for q, rel in kept.items() if rel}
    total = sum(len(rel) for rel in qrels.values())
    dropped = total - sum(len(rel) for rel in kept.values())
    if not kept:
        raise ValueError(f"{r_name}: no judgement pairs a query of {q_name} with a document of {c_name}.")
    if dropped:
        bad_q, bad_d = qids - set(queries), dids - set(corpus)
        parts = ([f"{len(bad_q)} query id(s) not in {q_name} (e.g. {_examples(bad_q)})"] if bad_q else []) + (
            [f"{len(bad_d)} document id(s) not in {c_name} (e.g. {_examples(bad_d)})"] if bad_d else []
        )
        warnings.warn(
            f"{r_name}: dropped {dropped} of {total} judgements: {'; '.join(parts)}.", TaskDataWarning, stacklevel=2
        )
    unjudged = set(queries) - set(kept)
    if unjudged:
        warnings.warn(
            f"{q_name}: {len(unjudged)} of {len(queries)} queries have no judgement in {r_name} and are "
            f"not scored (e.g. {_examples(unjudged)}).",
            TaskDataWarning,
            stacklevel=2,
        )
    return kept


def _load_real(name: str, data_dir: str | None) -> Task:
    split = "validation" if name == "summscreenfd" else "test"
    if data_dir is None:
        return _load_hub(name, split)
    base = os.path.join(data_dir, name)
    if not os.path.isdir(base):
        base = os.path.join(data_dir, REAL_TASKS[name])
    corpus, queries, qrels = {}, {}, {}
    paths = [os.path.join(base, f"{kind}.jsonl") for kind in ("corpus", "queries", "qrels")]
    for kind, path in zip(("corpus", "queries", "qrels"), paths):
        for n, row in _read_jsonl(path):
            if kind == "corpus":
                corpus[str(_field(row, ("doc_id", "_id", "id"), path, n))] = _text(row, path, n)
            elif kind == "queries":
                queries[str(_field(row, ("qid", "_id", "id"), path, n))] = _text(row, path, n)
            else:
                q = str(_field(row, ("qid", "query-id", "query_id"), path, n))
                d = str(_field(row, ("doc_id", "corpus-id", "corpus_id"), path, n))
                score = row.get("score", 1)
                if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score):
                    raise ValueError(f"{path}, line {n}: score {score!r} is not an integer relevance.")
                qrels.setdefault(q, {})[d] = int(score)
    qrels = check_qrels(corpus, queries, qrels, names=paths)
    return Task(name, {split: corpus}, {split: queries}, {split: qrels}, "ndcg_at_10", f"LongEmbed {name}")


def _text(row, path, n) -> str:
    text = _field(row, ("text",), path, n)
    if not isinstance(text, str):
        raise ValueError(f"{path}, line {n}: 'text' must be a string, got {type(text).__name__}.")
    return text


def _load_hub(name: str, split: str) -> Task:
    try:
        from datasets import load_dataset

        ds = load_dataset("dwzhu/LongEmbed", REAL_TASKS[name])
    except Exception as exc:
        raise RuntimeError(
            f"task {name!r} needs its data: pass --data-dir with the LongEmbed layout "
            f"(<dir>/{name}/corpus.jsonl, queries.jsonl, qrels.jsonl), or run online with the `datasets` package "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    corpus = {str(r["doc_id"]): r["text"] for r in ds["corpus"]}
    queries = {str(r["qid"]): r["text"] for r in ds["queries"]}
    qrels = {}
    for r in ds["qrels"]:
        qrels.setdefault(str(r["qid"]), {})[str(r["doc_id"])] = 1
    qrels = check_qrels(
        corpus, queries, qrels, names=tuple(f"dwzhu/LongEmbed {name} {k}" for k in ("corpus", "queries", "qrels"))
    )
    return Task(name, {split: corpus}, {split: queries}, {split: qrels}, "ndcg_at_10", f"LongEmbed {name}")
