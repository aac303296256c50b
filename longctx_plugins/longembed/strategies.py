"""How a run embeds the chunks of a chunk task (:mod:`.chunk_tasks`), and which runs a ``longctx-eval`` call makes.

Runs on chunk tasks (every strategy ranks the task's identical chunks):

* ``naive``: each chunk embedded alone (``encode_documents(chunk_texts)``, method ``none``: a chunk fits the
  trained window);
* ``late:<method>``: late chunking, the whole document read once by the model extended with ``<method>`` to
  ``--target-length`` (``none``: windows of the trained length) and each chunk the mean of its tokens' final states
  (:meth:`~longctx_plugins.LongContextEmbedder.encode_spans`); documents longer than the window are read in windows
  overlapping by ``--window-overlap`` tokens, each token taking its state from the window where it has the most
  context;
* ``whole:<method>``: every chunk gets its document's vector (``encode_documents(documents)``; beyond the target
  length the document is truncated, with a warning). The chunks of one document would tie, and the evaluator breaks
  ties by id (later chunks first), which would favour relevant chunks late in a document; instead each chunk's score
  gets an offset below 1e-6 from a hash of its id (:meth:`WholeDocument.tie_offsets`): a fixed order within a
  document that is unrelated to where the relevant chunk sits;
* ``bm25`` (the baseline): BM25 over the chunk texts.

Runs on document tasks are the methods themselves (``none``, ``pi``, ...). Importing this module loads no torch.
"""

from __future__ import annotations

import logging

import numpy as np

STRATEGIES = ("naive", "late", "whole")
NO_LATE = {
    "pcw": "pcw averages separate windows into one vector and has no token states to pool per chunk; "
    "late:none with --window-overlap 0 reads the same trained-size windows"
}
log = logging.getLogger("longctx_plugins.longembed")


def expand(items: list[str], methods: list[str], all_methods, skipped: dict | None = None) -> list[str]:
    """Run names from ``--strategies`` items (``naive``, ``late``, ``whole``: crossed with ``methods``;
    ``late:<m>`` / ``whole:<m>``: that method alone). ValueError naming the problem. With ``skipped`` (the strategies
    or the methods came from a profile, or no chunk task runs), a crossed run the method cannot do is left out and
    recorded there with its reason."""
    runs = []
    for item in items:
        strategy, colon, method = item.partition(":")
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {item!r}; valid: {', '.join(STRATEGIES)}, or late:<method> / whole:<method>"
            )
        if strategy == "naive":
            if method:
                raise ValueError(f"--strategies {item!r}: naive embeds each chunk alone and takes no method")
            runs.append("naive")
            continue
        if colon and not method:
            raise ValueError(
                f"--strategies {item!r} names no method; write {strategy}:<method> (e.g. {strategy}:pi), "
                f"or {strategy} alone for every --method"
            )
        for m in [method] if method else methods:
            if m not in all_methods:
                raise ValueError(
                    f"--strategies {item!r}: unknown method {m!r}; valid methods: {', '.join(all_methods)}"
                )
            if strategy == "late" and m in NO_LATE:
                if skipped is not None and not method:
                    skipped[f"late:{m}"] = NO_LATE[m]
                    continue
                raise ValueError(f"late chunking with {m} is not available: {NO_LATE[m]}")
            runs.append(f"{strategy}:{m}")
    twice = sorted({r for r in runs if runs.count(r) > 1})
    if twice:
        raise ValueError(f"--strategies makes the run(s) {', '.join(twice)} twice")
    return runs


def parse_run(run: str) -> tuple[str | None, str]:
    """``(strategy, method)`` of a run name: ``("late", "pi")``, ``("naive", "none")``; a document run (a method
    name) is ``(None, method)``."""
    if run == "naive":
        return "naive", "none"
    strategy, sep, method = run.partition(":")
    return (strategy, method) if sep else (None, run)


def folder_name(run: str) -> str:
    """The run's folder under ``--output`` (no ``:`` in paths): ``late:pi`` -> ``late-pi``."""
    return run.replace(":", "-")


def plan(args, chunk_tasks) -> list[tuple[str, list[str]]]:
    """``[(run, [task, ...]), ...]``: the methods on the document tasks, the strategies' runs on the chunk tasks,
    then the baseline on all of them."""
    chunked = [t for t in args.tasks if t in chunk_tasks]
    documents = [t for t in args.tasks if t not in chunk_tasks]
    runs = [(m, documents) for m in args.methods] if documents else []
    runs += [(r, chunked) for r in args.runs] if chunked else []
    if args.baseline == "bm25":
        runs.append(("bm25", list(args.tasks)))
    return runs


def key_fields(run: str, args) -> dict:
    """What a chunk run's scores depend on beyond the model, device, versions and code (:func:`cli.score_key`)."""
    strategy, method = parse_run(run)
    # --target-length stays in the key even for none: a checkpoint saved extended reads windows of
    # max(--target-length, its own extended length) under every method name
    out = {"strategy": strategy, "method": method, "target_length": args.target_length}
    if strategy == "late":
        out["window_overlap"] = getattr(args, "window_overlap", None)  # None: the embedder's default
    return out


class _ChunkScorer:
    """A chunk run's scorer around its embedder: queries as the embedder encodes them; ``chunk_vectors`` differs."""

    def __init__(self, embedder):
        self.embedder = embedder

    def encode_queries(self, texts, **kw) -> np.ndarray:
        return self.embedder.encode_queries(texts, **kw)


class LateChunking(_ChunkScorer):
    """Late-chunking scorer: chunks through ``encode_spans``."""

    def chunk_vectors(self, documents: dict, chunks: dict, chunk_ids: list[str]) -> np.ndarray:
        by_doc: dict[str, list[str]] = {}
        for cid in chunk_ids:
            by_doc.setdefault(chunks[cid][0], []).append(cid)
        vectors = {}
        for doc_id, cids in by_doc.items():
            spans = [(chunks[c][1], chunks[c][2]) for c in cids]
            vectors.update(zip(cids, self.embedder.encode_spans(documents[doc_id], spans)))
        return np.stack([vectors[c] for c in chunk_ids])


class WholeDocument(_ChunkScorer):
    """Whole-document scorer: every chunk gets the vector of the document it comes from."""

    def chunk_vectors(self, documents: dict, chunks: dict, chunk_ids: list[str]) -> np.ndarray:
        doc_ids = list(documents)
        vectors = self.embedder.encode_documents([documents[d] for d in doc_ids])
        row = {d: i for i, d in enumerate(doc_ids)}
        return vectors[[row[chunks[c][0]] for c in chunk_ids]]

    @staticmethod
    def tie_offsets(chunk_ids: list[str]) -> np.ndarray:
        """Offsets in [0, 1e-6) added to the chunks' scores: a fixed pseudo-random order among chunks that share
        their document's vector (sha1 of the chunk id), far below any difference between two documents' scores."""
        import hashlib

        return np.asarray(
            [int.from_bytes(hashlib.sha1(c.encode()).digest()[:6], "big") / 2**48 * 1e-6 for c in chunk_ids]
        )


def wrap(run: str, embedder, overlap_given: bool = True):
    """The scorer of ``run`` around its embedder (naive and document runs: the embedder itself). A late run says
    how it reads documents longer than its window (and that the overlap is the default when it was not given)."""
    strategy, _ = parse_run(run)
    if strategy == "late":
        log.info(
            "%s: documents longer than %d tokens are read in windows of %d tokens overlapping by %d tokens%s",
            run,
            embedder.target_length,
            embedder.target_length,
            embedder.window_overlap,
            "" if overlap_given else " (--window-overlap not given: the embedder's default, a quarter of the window)",
        )
        return LateChunking(embedder)
    if strategy == "whole":
        return WholeDocument(embedder)
    return embedder
