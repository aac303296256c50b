"""Sharing loaded embedders between framework wrappers: one model load per configuration, a bounded number kept.

It sits above :mod:`longctx_plugins.embedder` (it builds embedders), so nothing below imports it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .embedder import LongContextEmbedder

SHARED_MAX = 4  # embedders kept by get_embedder (least recently used dropped first)
_SHARED: OrderedDict = OrderedDict()
_SHARED_LOCK = threading.Lock()


def get_embedder(
    model_name_or_path: str = "default",
    method: str = "auto",
    target_length: int = 8192,
    device: str | None = None,
    **kwargs,
):
    """A shared :class:`LongContextEmbedder`: one model load per (path, method, target length, device, other
    options, model kwargs), as the framework wrappers use it. At most ``SHARED_MAX`` are kept (least recently used
    dropped); :func:`clear_shared` drops them all."""
    key = (str(model_name_or_path), method, target_length, device, repr(sorted(kwargs.items(), key=lambda kv: kv[0])))
    with _SHARED_LOCK:
        emb = _SHARED.get(key)
        if emb is None:
            emb = LongContextEmbedder(
                model_name_or_path, method=method, target_length=target_length, device=device, **kwargs
            )
            _SHARED[key] = emb
            while len(_SHARED) > SHARED_MAX:
                _SHARED.popitem(last=False)
        _SHARED.move_to_end(key)
        return emb


def clear_shared() -> None:
    with _SHARED_LOCK:
        _SHARED.clear()
