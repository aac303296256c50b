"""Read pooling / normalisation / prompts from a sentence-transformers model folder (no ST import needed)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .pooling import POOLING_MODES


@dataclass
class STInfo:
    pooling: str | None = None
    normalize: bool | None = None
    prompts: dict = field(default_factory=dict)
    pooling_unreadable: bool = False  # a Pooling module exists but names no mode this package implements


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def read_st_folder(path: str) -> STInfo:
    info = STInfo()
    if not os.path.isdir(path):
        return info
    modules = _read(os.path.join(path, "modules.json")) or []
    for mod in modules:
        kind = mod.get("type", "")
        if kind.endswith("Pooling"):
            cfg = _read(os.path.join(path, mod.get("path", ""), "config.json")) or {}
            for key, mode in (
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_lasttoken", "lasttoken"),
                ("pooling_mode_max_tokens", "max"),
            ):
                if cfg.get(key):
                    info.pooling = mode
                    break
            if cfg.get("pooling_mode") in POOLING_MODES:
                info.pooling = cfg["pooling_mode"]
            info.pooling_unreadable = info.pooling is None
        if kind.endswith("Normalize"):
            info.normalize = True
    if modules and info.normalize is None:
        info.normalize = False
    st_cfg = _read(os.path.join(path, "config_sentence_transformers.json")) or {}
    info.prompts = dict(st_cfg.get("prompts") or {})
    return info
