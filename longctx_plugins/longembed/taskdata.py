"""The tasks of a ``longctx-eval`` run: generated data per seed (passkey/needle and the chunk tasks; cached under
``<output>/data``, keyed by the generation parameters, chunk sizes included, the tokenizer's files, the generator's
code and the tokenizer libraries) and the real tasks (read from their files on every run: reading them costs what
hashing them would)."""

from __future__ import annotations

import os

from .cache import code_fingerprint, digest, haystack_source, read_json, versions, write_json
from .chunk_tasks import CHUNK_TASKS, check_entry
from .tasks import GENERATED_TASKS, Task, get_task

_GENERATOR = ("longembed/synthetic.py", "longembed/tasks.py")
_CHUNK_GENERATOR = _GENERATOR + ("longembed/chunk_tasks.py", "longembed/contextual.py", "embedding/chunking.py")


def generation_key(
    name: str,
    seed: int,
    lengths,
    n_queries: int,
    n_docs: int,
    tokenizer_id,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
) -> dict:
    key = {
        "task": name,
        "seed": seed,
        "lengths": list(lengths),
        "n_queries": n_queries,
        "n_docs": n_docs,
        "tokenizer": tokenizer_id,
        "generator": code_fingerprint(*(_CHUNK_GENERATOR if name in CHUNK_TASKS else _GENERATOR)),
        "haystack": haystack_source(),
        "versions": versions("transformers", "tokenizers"),
    }
    if name in CHUNK_TASKS:
        key.update(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return key


def check_task_entry(entry, key: dict, name: str, lengths, n_queries: int, n_docs: int) -> str | None:
    """The problem with a cached generated task, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("task"), dict):
        return "expected a JSON object with 'key' and 'task'"
    if entry.get("key") != key:
        return "it was generated with other parameters than its file name says"
    t = entry["task"]
    missing = [k for k in ("name", "corpus", "queries", "qrels", "main_score", "description") if k not in t]
    if missing:
        return f"the task lacks {', '.join(missing)}"
    if name in CHUNK_TASKS:
        return check_entry(t, name, lengths, n_queries, n_docs)
    if t["name"] != name or t["main_score"] != "ndcg_at_1":
        return f"it holds task {t['name']!r} scored by {t['main_score']!r}"
    splits = [f"test_{n}" for n in lengths]
    for part in ("corpus", "queries", "qrels"):
        if not isinstance(t[part], dict) or list(t[part]) != splits:
            return f"its {part} splits are not {', '.join(splits)}"
    for split in splits:
        corpus, queries, qrels = t["corpus"][split], t["queries"][split], t["qrels"][split]
        if not (isinstance(corpus, dict) and isinstance(queries, dict) and isinstance(qrels, dict)):
            return f"split {split} is not made of JSON objects"
        if len(corpus) != n_docs or len(queries) != n_queries:
            return f"split {split} has {len(corpus)} documents and {len(queries)} queries"
        if not all(isinstance(v, str) and v for v in (*corpus.values(), *queries.values())):
            return f"split {split} has a text that is not a non-empty string"
        if set(qrels) != set(queries) or not all(
            isinstance(rel, dict) and len(rel) == 1 and set(rel) <= set(corpus) and list(rel.values()) == [1]
            for rel in qrels.values()
        ):
            return f"split {split} has judgements that do not match its queries and documents"
    return None


def load_tasks(args, tokenizer, tokenizer_id, say) -> tuple[dict, dict]:
    """``({seed: [Task, ...]}, record)``: the synthetic tasks for each of ``args.seeds`` and the real tasks (under the
    key None). ``tokenizer_id`` None means the tokenizer cannot be identified: no data cache. ``say`` prints a line."""
    out: dict = {}
    record = {}
    for name in args.tasks:
        if name not in GENERATED_TASKS:
            out.setdefault(None, []).append(get_task(name, data_dir=args.data_dir))
            record[name] = {"source": args.data_dir or "hub dataset dwzhu/LongEmbed"}
            continue
        for seed in args.seeds:
            task, path = None, None
            if tokenizer_id is not None:
                key = generation_key(
                    name,
                    seed,
                    args.lengths,
                    args.n_queries,
                    args.n_docs,
                    tokenizer_id,
                    *((args.chunk_size, args.chunk_overlap) if name in CHUNK_TASKS else ()),
                )
                path = os.path.join(args.output, "data", f"{name}-seed{seed}-{digest(key)}.json")
                entry = read_json(
                    path, lambda e: check_task_entry(e, key, name, args.lengths, args.n_queries, args.n_docs)
                )
                if entry is not None:
                    task = Task.from_dict(entry["task"])
                    say(f"{name} (seed {seed}): generated data from cache {path}")
            from_cache = task is not None
            if task is None:
                task = get_task(
                    name,
                    lengths=args.lengths,
                    seed=seed,
                    tokenizer=tokenizer,
                    n_queries=args.n_queries,
                    n_docs=args.n_docs,
                    chunk_size=args.chunk_size,
                    chunk_overlap=args.chunk_overlap,
                )
                if path:
                    write_json(path, {"key": key, "task": task.to_dict()})
            record[f"{name}/seed{seed}"] = {"from_cache": from_cache, "path": path}
            out.setdefault(seed, []).append(task)
    return out, record
