"""``longctx-eval`` arguments: the parser, the profiles and the checks (light: no torch / transformers import)."""

from __future__ import annotations

import argparse
import os
import re

from .._checks import positive_int

PROFILES = {
    # the README's main job: about 2 minutes on 2 CPU cores
    "quick": dict(
        tasks="passkey,needle",
        lengths="256,512,1024,2048",
        methods="none,pi",
        n_queries=10,
        n_docs=20,
        target_length=2048,
        strategies="naive,late,whole",
    ),
    # the LongEmbed paper protocol for the synthetic tasks (real tasks join when --data-dir is given)
    "full": dict(
        tasks="passkey,needle",
        lengths="256,512,1024,2048,4096,8192,16384,32768",
        methods="none,pi,gp,rp,pcw",
        n_queries=50,
        n_docs=100,
        target_length=32768,
        strategies="naive,late,whole",
    ),
    # chunk-level retrieval: naive vs late chunking vs whole-document vectors (about 5 minutes on 2 CPU cores)
    "chunks": dict(
        tasks="contextual,passkey_chunks,needle_chunks",
        lengths="256,512,1024,2048",
        methods="none,pi",
        n_queries=20,
        n_docs=20,
        target_length=2048,
        strategies="naive,late,whole",
    ),
}
# options whose value may look like a negative number list ("-5,256"): argparse would take it for an option
_VALUE_OPTIONS = (
    "--lengths",
    "--target-length",
    "--n-queries",
    "--n-docs",
    "--batch-size",
    "--seed",
    "--seeds",
    "--chunk-size",
    "--chunk-overlap",
    "--window-overlap",
)
_NEGATIVE = re.compile(r"^-[\d.,]")


def _profiles_epilog() -> str:
    import textwrap

    from .chunk_tasks import CHUNK_TASKS

    lines = ["profiles (an option given on the command line overrides its profile value):"]
    for name, p in PROFILES.items():
        chunked = any(t in CHUNK_TASKS for t in p["tasks"].split(","))
        lines.append(
            f"  {name:6s} tasks {p['tasks']}; methods {p['methods']};"
            + (f" strategies {p['strategies']};" if chunked else "")
        )
        lines.append(f"         lengths {p['lengths']};")
        lines.append(
            f"         {p['n_queries']} queries and {p['n_docs']} documents per length; "
            f"target length {p['target_length']}"
        )
    for text in (
        "Results: <output>/results.{md,json,png}, run_config.json and one folder per run in mteb format: "
        "<output>/<method>/LEMB*.json for the document tasks, <output>/naive|late-<method>|whole-<method>/Chunk*.json "
        "for the chunk tasks, <output>/bm25/ (with several seeds also <run>/seed_<k>/). "
        "Scores are x100 with a bootstrap 95% interval over "
        "queries; with several seeds, mean ± std over seeds (the real tasks are one fixed dataset: scored once).",
        "Generated data and per-split scores are cached under <output>/data and <output>/cache, keyed by everything "
        "that produced them (task files or generation parameters, the model's files, method and settings, versions); "
        "the run says what came from the cache, and an interrupted run resumes when rerun.",
        "Chunk tasks (contextual, passkey_chunks, needle_chunks): each document is split into chunks of --chunk-size "
        "tokens by one sentence-aware chunker, and every strategy ranks those chunks (main score nDCG@10): naive "
        "(each chunk embedded alone), late:<method> (late chunking: the document read whole by the extended model, "
        "each chunk the mean of its tokens; none = windows of the trained length, or of the extended length for a "
        "checkpoint saved extended), whole:<method> (each chunk gets "
        "its document's vector) and bm25 over the chunks. Runs are folders <output>/naive, <output>/late-pi, ...",
    ):
        lines += [""] + textwrap.wrap(text, 100)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from ..positions.catalog import ALL_METHODS
    from .chunk_tasks import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE
    from .tasks import TASKS

    p = argparse.ArgumentParser(
        prog="longctx-eval",
        description="LongEmbed retrieval evaluation of context-extended embedding models.",
        epilog=_profiles_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="default",
        help="a local model folder (absolute, starting with . or ~, or an existing folder), a hub id "
        "('org/name', used from the local Hugging Face cache or downloaded), or 'default' for the "
        "bundled all-MiniLM-L6-v2 (default: %(default)s)",
    )
    p.add_argument(
        "--method",
        default=None,
        help=f"extension method or comma list, of: {', '.join(ALL_METHODS)} (default: the profile's)",
    )
    p.add_argument(
        "--target-length", default=None, help="length in tokens the model is extended to (default: the profile's)"
    )
    p.add_argument(
        "--tasks",
        default=None,
        help=f"comma list of tasks, of: {', '.join(TASKS)} (default: the profile's; the real tasks "
        "need --data-dir or a reachable hub)",
    )
    p.add_argument(
        "--lengths",
        default=None,
        help="comma list of document lengths in tokens for the generated tasks (passkey, needle and the "
        "chunk tasks; default: the profile's)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder in the LongEmbed layout (<dir>/<task>/corpus.jsonl, queries.jsonl, qrels.jsonl) "
        "for the real tasks (default: none; the HF dataset dwzhu/LongEmbed when online)",
    )
    p.add_argument("--output", default="longembed_out", help="output and cache folder (default: %(default)s)")
    p.add_argument(
        "--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)"
    )
    p.add_argument("--batch-size", default="4", help="texts per forward pass (default: %(default)s)")
    p.add_argument(
        "--seed", default=None, help="seed of the generated tasks' data (default: 0); for several seeds use --seeds"
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="repeat the generated tasks over several seeds: a comma list (0,1,2) or a count N meaning "
        "0..N-1; "
        "the report gives mean, spread (std over seeds) and a bootstrap 95%% interval (default: "
        "one seed, --seed)",
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="defaults for tasks, methods, lengths, sizes and target length (see below; default: %(default)s)",
    )
    p.add_argument(
        "--baseline",
        choices=("bm25", "none"),
        default="bm25",
        help="lexical baseline run next to the methods (default: %(default)s)",
    )
    p.add_argument(
        "--n-queries", default=None, help="queries per length for the generated tasks (default: the profile's)"
    )
    p.add_argument(
        "--n-docs",
        default=None,
        help="candidate documents per length for the generated tasks (default: the profile's; contextual: at most 288)",
    )
    p.add_argument(
        "--strategies",
        default=None,
        help="for the chunk tasks: comma list of naive, late, whole (late and whole run once per "
        "--method) or late:<method> / whole:<method> for one method (default: the profile's)",
    )
    p.add_argument(
        "--chunk-size", default=None, help=f"chunk tasks: most tokens of a chunk (default: {DEFAULT_CHUNK_SIZE})"
    )
    p.add_argument(
        "--chunk-overlap",
        default=None,
        help=f"chunk tasks: tokens of whole sentences consecutive chunks share (default: {DEFAULT_CHUNK_OVERLAP})",
    )
    p.add_argument(
        "--window-overlap",
        default=None,
        help="late runs: tokens shared by consecutive windows over documents longer than the window "
        "(default: the embedder's, a quarter of the window)",
    )
    p.add_argument("--no-progress", action="store_true", help="turn progress bars off (default: on)")
    return p


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--lengths -5,256`` -> ``--lengths=-5,256``, so argparse reads it as a value (and our check rejects it)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in _VALUE_OPTIONS and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _positive_int(parser, name: str, value, least: int = 1) -> int:
    """``value`` (a command-line string) as an integer >= ``least``, else argparse's error naming ``--name``."""
    kind = "a positive" if least == 1 else "a non-negative"
    try:
        return positive_int(name, int(str(value).strip()), least)
    except ValueError:
        parser.error(f"--{name} must be {kind} integer, got {value!r}")


def _list(parser, name: str, value: str, explicit: bool) -> list[str]:
    items = _csv(value)
    if not items:
        parser.error(
            f"--{name} is empty{' (got ' + repr(value) + ')' if explicit else ''}; give a comma list "
            f"or leave the option out to use the profile's"
        )
    twice = sorted({x for x in items if items.count(x) > 1})
    if twice:
        parser.error(f"--{name} lists {', '.join(twice)} twice")
    return items


def _seeds(parser, args) -> list[int]:
    if args.seeds is not None and args.seed is not None:
        parser.error("give --seed or --seeds, not both (--seeds 0,1,2 includes seed 0)")
    if args.seeds is None:
        if args.seed is None:
            return [0]
        return [_positive_int(parser, "seed", args.seed, least=0)]
    items = _csv(args.seeds)
    try:
        values = [int(x) for x in items]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        parser.error(
            f"--seeds must be a count N >= 1 (seeds 0..N-1) or a comma list of non-negative integers, "
            f"got {args.seeds!r}"
        )
    if len(items) == 1 and "," not in args.seeds:
        if values[0] == 0:
            parser.error(
                "--seeds 0 would run no seed (one number is a count: seeds 0..N-1); for seed 0 alone use --seed 0"
            )
        return list(range(values[0]))
    if len(set(values)) != len(values):
        parser.error(f"--seeds lists a seed twice: {args.seeds!r}")
    return values


def _chunk_options(parser, args, prof, all_methods) -> None:
    """--strategies (expanded into ``args.runs``), --chunk-size, --chunk-overlap, --window-overlap. For a run with
    chunk tasks the profile's strategies join ``args.from_profile`` and the chunk sizes left out ``args.chunk_defaults``
    (both said at the start of the run); options given for chunk tasks the run leaves out:
    ``args.chunk_options_unused``."""
    from .chunk_tasks import CHUNK_TASKS, DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE
    from .strategies import expand

    chunked = any(t in CHUNK_TASKS for t in args.tasks)
    given = [o for o in ("strategies", "chunk_size", "chunk_overlap", "window_overlap") if getattr(args, o) is not None]
    args.chunk_options_unused = given if not chunked else []
    args.chunk_defaults = {}
    if chunked:
        if args.strategies is None:
            args.from_profile["strategies"] = prof["strategies"]
        args.chunk_defaults = {
            k: v
            for k, v in (("chunk_size", DEFAULT_CHUNK_SIZE), ("chunk_overlap", DEFAULT_CHUNK_OVERLAP))
            if getattr(args, k) is None
        }
    items = _list(
        parser,
        "strategies",
        prof["strategies"] if args.strategies is None else args.strategies,
        args.strategies is not None,
    )
    # crossed runs a method cannot do: left out (and said at the start) when the profile filled in the strategies or
    # the methods, or when no chunk task runs; an explicit --strategies late with an explicit --method pcw is an error
    args.skipped_runs = {}
    lenient = args.strategies is None or args.method is None or not chunked
    try:
        args.runs = expand(items, args.methods, all_methods, args.skipped_runs if lenient else None)
    except ValueError as exc:
        parser.error(str(exc))
    args.strategies = items
    args.chunk_size = _positive_int(
        parser, "chunk-size", DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size
    )
    args.chunk_overlap = _positive_int(
        parser, "chunk-overlap", DEFAULT_CHUNK_OVERLAP if args.chunk_overlap is None else args.chunk_overlap, least=0
    )
    if args.chunk_overlap >= args.chunk_size:
        parser.error(f"--chunk-overlap ({args.chunk_overlap}) must be smaller than --chunk-size ({args.chunk_size})")
    if args.window_overlap is not None:
        args.window_overlap = _positive_int(parser, "window-overlap", args.window_overlap, least=0)


def parse(argv=None) -> argparse.Namespace:
    """Parse and check ``argv``; errors exit 2 (argparse's ``SystemExit``) with a message naming the fix."""
    import sys

    from ..positions.catalog import ALL_METHODS
    from .tasks import TASKS

    parser = build_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    prof = PROFILES[args.profile]
    # the values the profile fills in, said out loud at the start of the run and kept in run_config.json
    args.from_profile = {
        name: prof["methods" if name == "method" else name]
        for name in ("tasks", "method", "lengths", "target_length", "n_queries", "n_docs")
        if getattr(args, name) is None
    }
    args.explicit = [
        name for name in ("lengths", "n_queries", "n_docs", "seed", "seeds") if getattr(args, name) is not None
    ]
    args.tasks = _list(parser, "tasks", prof["tasks"] if args.tasks is None else args.tasks, args.tasks is not None)
    args.methods = _list(
        parser, "method", prof["methods"] if args.method is None else args.method, args.method is not None
    )
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        parser.error(f"unknown task(s) {', '.join(bad)}; valid tasks: {', '.join(TASKS)}")
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        parser.error(f"unknown method(s) {', '.join(bad)}; valid methods: {', '.join(ALL_METHODS)}")
    raw = prof["lengths"] if args.lengths is None else args.lengths
    items = _list(parser, "lengths", raw, args.lengths is not None)
    try:
        args.lengths = [int(x) for x in items]
    except ValueError:
        args.lengths = None
    if args.lengths is None or any(x <= 0 for x in args.lengths):
        parser.error(f"--lengths must be a comma list of positive integers, got {raw!r}")
    for name in ("target_length", "n_queries", "n_docs", "batch_size"):
        value = getattr(args, name)
        setattr(args, name, _positive_int(parser, name.replace("_", "-"), prof[name] if value is None else value))
    if args.n_queries > args.n_docs:
        parser.error(
            f"--n-queries ({args.n_queries}) must not exceed --n-docs ({args.n_docs}): each query has "
            "its own relevant document"
        )
    if "contextual" in args.tasks:
        from .contextual import MAX_DOCS

        if args.n_docs > MAX_DOCS:
            parser.error(
                f"--n-docs {args.n_docs}: the contextual task invents one subject name per document and has "
                f"{MAX_DOCS}; use --n-docs {MAX_DOCS} or fewer"
            )
    args.seeds = _seeds(parser, args)
    args.seed = args.seeds[0]
    _chunk_options(parser, args, prof, ALL_METHODS)
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir!r} is not a folder")
    from .files import check_writable_folder

    problem = check_writable_folder(args.output)
    if problem:
        parser.error(
            f"--output {args.output!r} cannot hold the results ({problem}); pass a folder you can write to "
            "(it is created if missing)"
        )
    return args
