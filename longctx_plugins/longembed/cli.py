"""``longctx-eval``: the LongEmbed evaluator on the command line.

    longctx-eval --model default --profile quick
    longctx-eval --model PATH --method none,pi,gp,rp,pcw --target-length 8192 --lengths 256,512,...,8192 --seeds 3

``main(argv) -> int`` is the whole command (exit status returned, nothing calls ``sys.exit``); ``run(args)`` does the
work on parsed arguments. Importing this module and parsing arguments load neither torch nor transformers.

The command in three parts: this module (arguments, the notes said before a run, exit statuses and warnings),
:mod:`.runs` (the run loop: scorers, cache keys, the device check) and :mod:`.outputs` (the files written);
:mod:`.args` parses and checks the arguments.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

from .args import PROFILES, build_parser, parse  # noqa: F401  (re-exported: the CLI's public names)
from .runs import build_scorer, late_windows, score_key  # noqa: F401  (re-exported: the CLI's public names)

log = logging.getLogger("longctx_plugins.longembed")
INTERRUPTED = "longctx-eval: interrupted; rerun the same command to resume from the cache"


def run(args, make_scorer=None, say=print) -> dict:
    """Evaluate as ``args`` say and write the outputs; returns ``{run: {task: summary}}``. ``make_scorer(run_name,
    args, source)`` builds each run's scorer (default :func:`build_scorer`)."""
    from .model_source import resolve_model
    from .outputs import write_summary
    from .runs import resolved_device, run_all

    start = time.time()
    source = resolve_model(args.model)
    resolved_device(args)  # a bad --device fails before anything loads
    _notes(args, source, say)
    bars = _progress_bars(not args.no_progress)
    try:
        results, data_record, score_record = run_all(args, source, make_scorer, say)
        write_summary(args, source, results, resolved_device(args), data_record, score_record, start, say)
        return results
    finally:
        _progress_bars(bars)


def _notes(args, source, say) -> None:
    """Say what the run does with the arguments before any work: options that do not apply, what the profile filled
    in, the chunk settings (defaults included); checks --window-overlap against the late runs' windows."""
    from .chunk_tasks import CHUNK_TASKS
    from .tasks import GENERATED_TASKS

    real = [t for t in args.tasks if t not in GENERATED_TASKS]
    chunked = [t for t in args.tasks if t in CHUNK_TASKS]
    generated = "passkey/needle" + (f" and {'/'.join(chunked)}" if chunked else "")
    if real and len(args.seeds) > 1:
        say(
            f"note: --seeds applies to {generated}; {', '.join(real)} (one fixed dataset) is scored once, with a "
            "bootstrap interval over its queries"
        )
    if len(real) == len(args.tasks):
        given = args.explicit
        if given:
            say(
                f"note: {', '.join('--' + o.replace('_', '-') for o in given)} only apply to passkey/needle, "
                "which this run leaves out"
            )
    if args.from_profile:
        say(
            f"profile {args.profile} fills in: "
            + "; ".join(f"{k.replace('_', '-')} {v}" for k, v in args.from_profile.items())
        )
    windows = late_windows(args, source) if chunked else {}
    _chunk_notes(args, chunked, say, windows)


def _chunk_notes(args, chunked, say, windows) -> None:
    """Say the chunk settings a run with chunk tasks uses (defaults included), and chunk options that do not apply."""
    from .strategies import parse_run

    unused = list(getattr(args, "chunk_options_unused", []))
    if chunked:
        say(
            f"chunk tasks {', '.join(chunked)}: chunks of at most {args.chunk_size} tokens"
            f"{' (default)' if 'chunk_size' in args.chunk_defaults else ''}, consecutive chunks sharing up to "
            f"{args.chunk_overlap} tokens{' (default)' if 'chunk_overlap' in args.chunk_defaults else ''}; runs "
            f"{', '.join(args.runs)}; main score nDCG@10"
        )
        for run, why in getattr(args, "skipped_runs", {}).items():
            say(f"note: {run} left out: {why}")
        late = [r for r in args.runs if parse_run(r)[0] == "late"]
        if late:
            overlap = (
                f"{args.window_overlap} tokens"
                if args.window_overlap is not None
                else "a quarter of the window (--window-overlap not given: the embedder's default)"
            )
            sizes = (
                ", ".join(f"{r}: {windows[r]} tokens" for r in late)
                if windows
                else f"none: the model's trained length; other methods: --target-length {args.target_length}"
            )
            say(
                f"{', '.join(late)}: documents longer than the window ({sizes}) are read in windows overlapping by "
                f"{overlap}"
            )
        elif args.window_overlap is not None:
            unused.append("window_overlap")
    if unused:
        say(
            f"note: {', '.join('--' + o.replace('_', '-') for o in unused)} only apply to "
            f"{'late runs' if unused == ['window_overlap'] else 'the chunk tasks'}, which this run leaves out"
        )


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


def _file_problem(exc: OSError, output: str) -> str:
    """An OSError as a sentence that names the path, what went wrong and what to do."""
    if exc.filename is None:
        return str(exc)
    where = os.fspath(exc.filename)
    return (
        f"cannot use {where!r}: {exc.strerror or exc}. Check that path (a cache folder replaced by a file, "
        f"missing permissions, a full disk), or pass another --output than {output!r}; the run resumes from what "
        "is cached."
    )


if __name__ == "__main__":
    sys.exit(main())
