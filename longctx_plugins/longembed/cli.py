"""``longctx-eval``: the LongEmbed evaluator on the command line.

    longctx-eval --model default --profile quick
    longctx-eval --model PATH --method none,pi,gp,rp,pcw --target-length 8192 --lengths 256,512,...,8192 --seeds 3

``main(argv) -> int`` is the whole command (exit status returned, nothing calls ``sys.exit``); ``run(args)`` does the
work on parsed arguments. Importing this module and parsing arguments load neither torch nor transformers.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings

from .args import PROFILES, build_parser, parse  # noqa: F401  (re-exported: the CLI's public names)
from .files import write_text_atomic

log = logging.getLogger("longctx_plugins.longembed")
INTERRUPTED = "longctx-eval: interrupted; rerun the same command to resume from the cache"


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
        embedder = LongContextEmbedder(source.name_or_path, method=method, target_length=args.target_length,
                                       device=args.device, batch_size=args.batch_size, show_progress_bar=False,
                                       window_overlap=overlap)
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
    key = {"model": folder_fingerprint(folder), "revision": os.path.basename(folder) if source.kind == "hub" else None,
           "method": run_name, "target_length": args.target_length, "batch_size": args.batch_size,
           "device": _device(args), "versions": versions("torch", "transformers", "tokenizers", "numpy"),
           "code": code_fingerprint()}
    if parse_run(run_name)[0] is not None:  # a chunk run: its strategy, method and window settings
        key.update(key_fields(run_name, args))
    return key


def _device(args) -> str:
    """The device the embedder will use (its own default: cuda when available); ValueError for one that is not
    a device or not here."""
    import torch

    if args.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {args.device!r} is not a torch device ({exc}); use e.g. cpu, cuda or cuda:1.") \
            from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available here; use --device cpu or leave "
                         "--device out.")
    return args.device


class _Lazy:
    """A scorer built on first use: a run whose splits all come from the cache loads no model."""

    def __init__(self, build):
        self._build, self._scorer = build, None

    def __getattr__(self, name):
        if self._scorer is None:
            self._scorer = self._build()
        return getattr(self._scorer, name)


def run(args, make_scorer=None, say=print) -> dict:
    """Evaluate as ``args`` say and write the outputs; returns ``{run: {task: summary}}``. ``make_scorer(run_name,
    args, source)`` builds each run's scorer (default :func:`build_scorer`)."""
    from .model_source import resolve_model

    start = time.time()
    source = resolve_model(args.model)
    _device(args)  # a bad --device fails before anything loads
    from .chunk_tasks import CHUNK_TASKS
    from .tasks import GENERATED_TASKS

    real = [t for t in args.tasks if t not in GENERATED_TASKS]
    chunked = [t for t in args.tasks if t in CHUNK_TASKS]
    generated = "passkey/needle" + (f" and {'/'.join(chunked)}" if chunked else "")
    if real and len(args.seeds) > 1:
        say(f"note: --seeds applies to {generated}; {', '.join(real)} (one fixed dataset) is scored once, with a "
            "bootstrap interval over its queries")
    if len(real) == len(args.tasks):
        given = args.explicit
        if given:
            say(f"note: {', '.join('--' + o.replace('_', '-') for o in given)} only apply to passkey/needle, "
                "which this run leaves out")
    if args.from_profile:
        say(f"profile {args.profile} fills in: " + "; ".join(f"{k.replace('_', '-')} {v}"
                                                             for k, v in args.from_profile.items()))
    windows = late_windows(args, source) if chunked else {}
    _chunk_notes(args, chunked, say, windows)
    bars = _progress_bars(not args.no_progress)
    try:
        return _run(args, source, make_scorer, say, start)
    finally:
        _progress_bars(bars)


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
        windows[run] = reading_window(config, parse_run(run)[1], args.target_length)[1]
        if args.window_overlap is not None and args.window_overlap >= windows[run]:
            raise ValueError(f"--window-overlap {args.window_overlap} must be smaller than the window of {run} "
                             f"({windows[run]} tokens); use a smaller --window-overlap (default: a quarter of the "
                             "window)")
    return windows


def _chunk_notes(args, chunked, say, windows) -> None:
    """Say the chunk settings a run with chunk tasks uses (defaults included), and chunk options that do not apply."""
    from .strategies import parse_run

    unused = list(getattr(args, "chunk_options_unused", []))
    if chunked:
        say(f"chunk tasks {', '.join(chunked)}: chunks of at most {args.chunk_size} tokens"
            f"{' (default)' if 'chunk_size' in args.chunk_defaults else ''}, consecutive chunks sharing up to "
            f"{args.chunk_overlap} tokens{' (default)' if 'chunk_overlap' in args.chunk_defaults else ''}; runs "
            f"{', '.join(args.runs)}; main score nDCG@10")
        for run, why in getattr(args, "skipped_runs", {}).items():
            say(f"note: {run} left out: {why}")
        late = [r for r in args.runs if parse_run(r)[0] == "late"]
        if late:
            overlap = (f"{args.window_overlap} tokens" if args.window_overlap is not None else
                       "a quarter of the window (--window-overlap not given: the embedder's default)")
            sizes = (", ".join(f"{r}: {windows[r]} tokens" for r in late) if windows else
                     f"none: the model's trained length; other methods: --target-length {args.target_length}")
            say(f"{', '.join(late)}: documents longer than the window ({sizes}) are read in windows overlapping by "
                f"{overlap}")
        elif args.window_overlap is not None:
            unused.append("window_overlap")
    if unused:
        say(f"note: {', '.join('--' + o.replace('_', '-') for o in unused)} only apply to "
            f"{'late runs' if unused == ['window_overlap'] else 'the chunk tasks'}, which this run leaves out")


def _run(args, source, make_scorer, say, start) -> dict:
    from transformers import AutoTokenizer

    from .cache import digest, folder_fingerprint, versions, write_json
    from .chunk_tasks import CHUNK_TASKS
    from .evaluate import evaluate
    from .report import format_table, plot, scores_note, write_mteb_json
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
    tasks_by_seed, data_record = load_tasks(args, tokenizer, folder_fingerprint(folder, tokenizer_only=True)
                                            if folder else None, say)
    mteb_version = versions("mteb")["mteb"]
    results, score_record = {}, {}
    for run_name, run_tasks in plan(args, CHUNK_TASKS):
        t0 = time.time()
        build = make_scorer or build_scorer
        scorer = build(run_name, args, source) if run_name == "bm25" else _Lazy(
            lambda run_name=run_name: build(run_name, args, source))
        key = score_key(run_name, args, source)
        cache_dir = os.path.join(args.output, "cache", f"{folder_name(run_name)}-{digest(key)}") if key else None
        if cache_dir:
            write_json(os.path.join(cache_dir, "key.json"), key)
        cache_log, per_task = {}, {}
        for seed, tasks in tasks_by_seed.items():
            tasks = [t for t in tasks if t.name in run_tasks]
            if not tasks:
                continue
            res = evaluate(scorer, tasks, cache_dir=cache_dir, progress=not args.no_progress, run_name=run_name,
                           cache_log=cache_log)
            for name, r in res.items():
                per_task.setdefault(name, {})[seed] = r
        results[run_name] = {name: summarize(per_task[name]) for name in run_tasks}
        score_record[run_name] = cache_log
        for name, info in cache_log.items():
            if info["from_cache"]:
                say(f"{name} / {run_name}: {info['from_cache']} of {info['from_cache'] + info['computed']} splits "
                    f"from cache {info['dir']}")
        elapsed = round(time.time() - t0, 2)
        folder = os.path.join(args.output, folder_name(run_name))
        for name in run_tasks:
            write_mteb_json(os.path.join(folder, f"{_mteb_name(name)}.json"), name, results[run_name][name], elapsed,
                            mteb_version)
            if len(per_task[name]) > 1:  # one mteb file per seed as well
                for seed, r in per_task[name].items():
                    write_mteb_json(os.path.join(folder, f"seed_{seed}", f"{_mteb_name(name)}.json"), name, r,
                                    elapsed, mteb_version)
        log.info("%s done in %.1fs", run_name, time.time() - t0)
    say(format_table(results))
    config = {k: v for k, v in vars(args).items()}
    config.update(model_path=source.name_or_path, model_source=source.kind, resolved_device=_device(args),
                  elapsed_s=round(time.time() - start, 1),
                  versions=versions("torch", "transformers", "tokenizers", "numpy", "bm25s", "mteb"),
                  cache={"data": data_record, "scores": score_record})
    write_text_atomic(os.path.join(args.output, "run_config.json"), json.dumps(config, indent=2))
    title = f"{source.label}, target length {args.target_length}" + (
        f", {len(args.seeds)} seeds" if len(args.seeds) > 1 else "")
    seeds_note = (f" Cells: mean ± std over seeds {','.join(map(str, args.seeds))}." if len(args.seeds) > 1 else "")
    write_text_atomic(os.path.join(args.output, "results.md"),
                f"# LongEmbed results ({title})\n\n{scores_note(results)}{seeds_note}\n\n"
                + format_table(results, markdown=True))
    png = plot(results, os.path.join(args.output, "results.png"), title)
    write_text_atomic(os.path.join(args.output, "results.json"), json.dumps(results, indent=2))
    say(f"wrote {args.output}/results.md, results.json, run_config.json{', results.png' if png else ''} "
        f"({time.time() - start:.0f}s)")
    return results


def _mteb_name(task: str) -> str:
    from .tasks import MTEB_NAMES

    return MTEB_NAMES.get(task, task)


def main(argv=None, make_scorer=None) -> int:
    """The ``longctx-eval`` command: returns the exit status (0 done, 2 bad input, 130 interrupted)."""
    from .cache import CacheWarning
    from .tasks import TaskDataWarning

    try:
        args = parse(argv)
    except SystemExit as exc:  # --help, or argparse's message for bad arguments
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "httpx", "sentence_transformers", "bm25s", "mteb", "jax", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (CacheWarning, TaskDataWarning)):
            print(f"longctx-eval: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", CacheWarning)
        warnings.simplefilter("always", TaskDataWarning)
        warnings.showwarning = show
        try:
            run(args, make_scorer=make_scorer)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            return 130
        except OSError as exc:
            print(f"longctx-eval: error: {_file_problem(exc, args.output)}", file=sys.stderr)
            return 2
        except (ValueError, RuntimeError, ImportError) as exc:
            print(f"longctx-eval: error: {exc}", file=sys.stderr)
            return 2
    return 0


def _progress_bars(on: bool) -> bool:
    """Turn transformers' progress bars (e.g. "Loading weights") on or off; returns the previous state."""
    if "transformers" not in sys.modules and on:
        return True
    from transformers.utils import logging as tlog

    before = tlog.is_progress_bar_enabled()
    (tlog.enable_progress_bar if on else tlog.disable_progress_bar)()
    return before


if __name__ == "__main__":
    sys.exit(main())


def _file_problem(exc: OSError, output: str) -> str:
    """An OSError as a sentence that names the path, what went wrong and what to do."""
    if exc.filename is None:
        return str(exc)
    where = os.fspath(exc.filename)
    return (f"cannot use {where!r}: {exc.strerror or exc}. Check that path (a cache folder replaced by a file, "
            f"missing permissions, a full disk), or pass another --output than {output!r}; the run resumes from what "
            "is cached.")

