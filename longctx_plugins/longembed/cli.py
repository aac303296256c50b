"""``longctx-eval``: the LongEmbed evaluator on the command line.

    longctx-eval --model default --profile quick
    longctx-eval --model PATH --method none,pi,gp,rp,pcw --target-length 8192 --lengths 256,512,...,8192
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

PROFILES = {
    # the README's main job: about 2 minutes on 2 CPU cores
    "quick": dict(tasks="passkey,needle", lengths="256,512,1024,2048", methods="none,pi",
                  n_queries=10, n_docs=20, target_length=2048),
    # the LongEmbed paper protocol for the synthetic tasks (real tasks join when --data-dir is given)
    "full": dict(tasks="passkey,needle", lengths="256,512,1024,2048,4096,8192,16384,32768",
                 methods="none,pi,gp,rp,pcw", n_queries=50, n_docs=100, target_length=32768),
}
log = logging.getLogger("longctx_plugins.longembed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longctx-eval", description="LongEmbed evaluation of extended embedders.")
    p.add_argument("--model", default="default", help="local model folder, hub id, or 'default' (all-MiniLM-L6-v2)")
    p.add_argument("--method", default=None, help="extension method or comma list (none, auto, pi, gp, rp, pcw, "
                                                  "ntk, self_extend)")
    p.add_argument("--target-length", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma list of passkey, needle, narrativeqa, qmsum, 2wikimqa, summscreenfd")
    p.add_argument("--lengths", default=None, help="comma list of document lengths in tokens (synthetic tasks)")
    p.add_argument("--data-dir", default=None, help="LongEmbed-layout folder for the real tasks")
    p.add_argument("--output", default="longembed_out")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--baseline", choices=("bm25", "none"), default="bm25")
    p.add_argument("--n-queries", type=int, default=None)
    p.add_argument("--n-docs", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="turn progress bars off")
    return p


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse(argv=None):
    from ..methods import ALL_METHODS
    from .tasks import TASKS

    parser = build_parser()
    args = parser.parse_args(argv)
    prof = PROFILES[args.profile]
    args.tasks = _csv(args.tasks or prof["tasks"])
    args.methods = _csv(args.method or prof["methods"])
    args.target_length = args.target_length or prof["target_length"]
    args.n_queries = args.n_queries or prof["n_queries"]
    args.n_docs = args.n_docs or prof["n_docs"]
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        parser.error(f"unknown task(s) {', '.join(bad)}; valid tasks: {', '.join(TASKS)}")
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        parser.error(f"unknown method(s) {', '.join(bad)}; valid methods: {', '.join(ALL_METHODS)}")
    try:
        args.lengths = [int(x) for x in _csv(args.lengths or prof["lengths"])]
        if any(x <= 0 for x in args.lengths):
            raise ValueError
    except ValueError:
        parser.error(f"--lengths must be a comma list of positive integers, got {args.lengths!r}")
    for name in ("target_length", "batch_size", "n_queries", "n_docs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.n_queries > args.n_docs:
        parser.error("--n-queries must not exceed --n-docs")
    try:
        os.makedirs(args.output, exist_ok=True)
        probe = os.path.join(args.output, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        parser.error(f"output directory {args.output!r} is not writable ({exc.strerror}); choose another --output")
    return args


def _load_tasks(args, tokenizer, tok_id):
    from .tasks import Task, get_task

    tasks = []
    for name in args.tasks:
        key = hashlib.sha1(json.dumps([name, tok_id, args.lengths, args.seed, args.n_queries, args.n_docs,
                                       args.data_dir]).encode()).hexdigest()[:12]
        path = os.path.join(args.output, "data", f"{name}-{key}.json")
        if os.path.exists(path):
            with open(path) as f:
                tasks.append(Task.from_dict(json.load(f)))
            continue
        task = get_task(name, lengths=args.lengths, seed=args.seed, data_dir=args.data_dir, tokenizer=tokenizer,
                        n_queries=args.n_queries, n_docs=args.n_docs)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(task.to_dict(), f)
        os.replace(path + ".tmp", path)
        tasks.append(task)
    return tasks


def run(args) -> dict:
    from ..embedder import LongContextEmbedder, default_model_path
    from .evaluate import BM25, evaluate
    from .report import format_table, plot, write_mteb_json

    start = time.time()
    progress = not args.no_progress
    model_path = default_model_path() if args.model == "default" else args.model
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise SystemExit(_offline_message(args.model, exc))
    tasks = _load_tasks(args, tokenizer, os.path.basename(str(model_path).rstrip("/")))
    try:
        import mteb

        mteb_version = mteb.__version__
    except ImportError:
        mteb_version = None
    results = {}
    runs = list(args.methods) + (["bm25"] if args.baseline == "bm25" else [])
    for run_name in runs:
        t0 = time.time()
        if run_name == "bm25":
            scorer = BM25()
        else:
            try:
                scorer = LongContextEmbedder(model_path, method=run_name, target_length=args.target_length,
                                             device=args.device, batch_size=args.batch_size,
                                             show_progress_bar=False)
            except OSError as exc:
                raise SystemExit(_offline_message(args.model, exc))
        cache = os.path.join(args.output, "cache", _run_key(args, run_name))
        results[run_name] = evaluate(scorer, tasks, cache_dir=cache, progress=progress, run_name=run_name)
        for task in tasks:
            write_mteb_json(os.path.join(args.output, run_name, f"{task.mteb_name}.json"), task.name,
                            results[run_name][task.name], round(time.time() - t0, 2), mteb_version)
        log.info("%s done in %.1fs", run_name, time.time() - t0)
    table = format_table(results)
    print(table)
    config = {k: v for k, v in vars(args).items()}
    config.update(model_path=str(model_path), elapsed_s=round(time.time() - start, 1))
    with open(os.path.join(args.output, "run_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    model_name = "all-MiniLM-L6-v2 (default)" if args.model == "default" else os.path.basename(str(model_path).rstrip("/"))
    title = f"{model_name}, target length {args.target_length}"
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(f"# LongEmbed results ({title})\n\nScores: main score x100 (nDCG@1 for passkey/needle).\n\n")
        f.write(format_table(results, markdown=True))
    png = plot(results, os.path.join(args.output, "results.png"), title)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.output}/results.md, results.json, run_config.json{', results.png' if png else ''} "
          f"({time.time() - start:.0f}s)")
    return results


def _run_key(args, run_name):
    return hashlib.sha1(json.dumps([args.model, run_name, args.target_length, args.device]).encode()).hexdigest()[:12] \
        + f"-{run_name}"


def _offline_message(model, exc):
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"longctx-eval: cannot load model {model!r}: {exc}\n"
            + ("HF_HUB_OFFLINE=1 is set: only local folders and the local cache can be used. " if offline else
               "No hub is reachable from this machine? ")
            + "Pass a local model folder with --model, or --model default for the bundled all-MiniLM-L6-v2.")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "httpx", "sentence_transformers", "bm25s", "mteb", "jax", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args = parse(argv)
    try:
        run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"longctx-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
