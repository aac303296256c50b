"""The run loop of ``longctx-eval``: each run's scorer and cache key, its tasks over every seed, its summaries.

Light to import (torch, transformers and the evaluator load inside the functions). :mod:`.cli` handles the command
line and says what a run will do; :mod:`.outputs` writes the files.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("longctx_plugins.longembed")


def build_scorer(run_name: str, args, source):
    """The scorer of one run: BM25, the model extended with method ``run_name``, or (chunk tasks) a strategy's
    scorer around its embedder (:mod:`.strategies`: ``naive``, ``late:<method>``, ``whole:<method>``)."""
    from .evaluate import BM25
    from .strategies import parse_run, wrap

    if run_name == "bm25":
        return BM25()
    from ..embedder import LongContextEmbedder

    strategy, method = parse_run(run_name)
    overlap = getattr(args, "window_overlap", None) if strategy == "late" else None
    try:
        embedder = LongContextEmbedder(
            source.name_or_path,
            method=method,
            target_length=args.target_length,
            device=args.device,
            batch_size=args.batch_size,
            show_progress_bar=False,
            window_overlap=overlap,
        )
    except OSError as exc:
        raise ValueError(f"cannot load model {source.arg!r}: {exc}") from exc
    return wrap(run_name, embedder, overlap_given=overlap is not None)


def score_key(run_name: str, args, source) -> dict | None:
    """What a run's scores depend on beyond the data (which keys each split within the run's cache folder), known
    before the model loads: the model's files (and, for a hub id, its revision), the method and its settings, the
    device, the library versions and this package's code (which also decides dtype and the method "auto" picks).
    The batch size is part of it: padding changes float rounding, which can flip near-ties. None when the model's
    files cannot be found to identify it: then nothing is cached."""
    from .cache import code_fingerprint, folder_fingerprint, versions
    from .strategies import key_fields, parse_run

    if run_name == "bm25":
        return {"scorer": "bm25", "versions": versions("bm25s", "numpy"), "code": code_fingerprint()}
    folder = source.folder()
    if folder is None:
        return None
    key = {
        "model": folder_fingerprint(folder),
        "revision": os.path.basename(folder) if source.kind == "hub" else None,
        "method": run_name,
        "target_length": args.target_length,
        "batch_size": args.batch_size,
        "device": resolved_device(args),
        "versions": versions("torch", "transformers", "tokenizers", "numpy"),
        "code": code_fingerprint(),
    }
    if parse_run(run_name)[0] is not None:  # a chunk run: its strategy, method and window settings
        key.update(key_fields(run_name, args))
    return key


def resolved_device(args) -> str:
    """The device the embedder will use (its own default: cuda when available); ValueError for one that is not
    a device or not here."""
    import torch

    if args.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(
            f"--device {args.device!r} is not a torch device ({exc}); use e.g. cpu, cuda or cuda:1."
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {args.device}: no CUDA device is available here; use --device cpu or leave --device out."
        )
    return args.device


def late_windows(args, source) -> dict[str, int]:
    """``{late run: its window in tokens}``, read from the model's config before any work by the embedder's own
    rule (:func:`..embedding.windows.reading_window`); ValueError when --window-overlap does not fit a window. Empty
    when the model's files are not here yet (the embedder checks the overlap when it loads)."""
    from .strategies import parse_run

    late = [r for r in args.runs if parse_run(r)[0] == "late"]
    folder = source.folder() if late else None
    if folder is None:
        return {}
    from transformers import AutoConfig

    from ..embedding.windows import reading_window

    config = AutoConfig.from_pretrained(folder)
    windows = {}
    for run in late:
        windows[run] = reading_window(config, parse_run(run)[1], args.target_length).target_length
        if args.window_overlap is not None and args.window_overlap >= windows[run]:
            raise ValueError(
                f"--window-overlap {args.window_overlap} must be smaller than the window of {run} "
                f"({windows[run]} tokens); use a smaller --window-overlap (default: a quarter of the "
                "window)"
            )
    return windows


class _Lazy:
    """A scorer built on first use: a run whose splits all come from the cache loads no model."""

    def __init__(self, build):
        self._build, self._scorer = build, None

    def __getattr__(self, name):
        if self._scorer is None:
            self._scorer = self._build()
        return getattr(self._scorer, name)


def run_all(args, source, make_scorer, say) -> tuple[dict, dict, dict]:
    """Every run of ``args`` on every task and seed, each run's mteb files written as soon as it is done (an
    interrupted command keeps them). Returns ``(results {run: {task: summary}}, the data cache record, the score
    cache record)``."""
    from transformers import AutoTokenizer

    from .cache import digest, folder_fingerprint, versions, write_json
    from .chunk_tasks import CHUNK_TASKS
    from .evaluate import evaluate
    from .outputs import write_run_files
    from .stats import summarize
    from .strategies import folder_name, plan
    from .taskdata import load_tasks

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name_or_path)
    except OSError as exc:
        raise ValueError(f"cannot load the tokenizer of {args.model!r}: {exc}") from exc
    folder = source.folder()
    if folder is None:
        say(f"note: the files of {source.arg!r} were not found in the local cache: nothing is cached for it")
    tasks_by_seed, data_record = load_tasks(
        args, tokenizer, folder_fingerprint(folder, tokenizer_only=True) if folder else None, say
    )
    mteb_version = versions("mteb")["mteb"]
    results, score_record = {}, {}
    for run_name, run_tasks in plan(args, CHUNK_TASKS):
        t0 = time.time()
        build = make_scorer or build_scorer
        scorer = (
            build(run_name, args, source)
            if run_name == "bm25"
            else _Lazy(lambda run_name=run_name: build(run_name, args, source))
        )
        key = score_key(run_name, args, source)
        cache_dir = os.path.join(args.output, "cache", f"{folder_name(run_name)}-{digest(key)}") if key else None
        if cache_dir:
            write_json(os.path.join(cache_dir, "key.json"), key)
        cache_log, per_task = {}, {}
        for seed, tasks in tasks_by_seed.items():
            tasks = [t for t in tasks if t.name in run_tasks]
            if not tasks:
                continue
            res = evaluate(
                scorer,
                tasks,
                cache_dir=cache_dir,
                progress=not args.no_progress,
                run_name=run_name,
                cache_log=cache_log,
            )
            for name, r in res.items():
                per_task.setdefault(name, {})[seed] = r
        results[run_name] = {name: summarize(per_task[name]) for name in run_tasks}
        score_record[run_name] = cache_log
        for name, info in cache_log.items():
            if info["from_cache"]:
                say(
                    f"{name} / {run_name}: {info['from_cache']} of {info['from_cache'] + info['computed']} splits "
                    f"from cache {info['dir']}"
                )
        write_run_files(
            args.output, run_name, run_tasks, results[run_name], per_task, round(time.time() - t0, 2), mteb_version
        )
        log.info("%s done in %.1fs", run_name, time.time() - t0)
    return results, data_record, score_record
