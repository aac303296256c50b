"""Additive, idempotent, reversible registration into transformers' official hooks.

``register()`` adds the attention names ``anchor`` / ``self_extend`` (AttentionInterface and
AttentionMaskInterface, both through their ``register`` classmethods), the RoPE init functions ``pi`` /
``ntk`` / ``self_extend`` (``ROPE_INIT_FUNCTIONS``) and their validators (methods
``_validate_<type>_rope_parameters`` of ``RotaryEmbeddingConfigMixin``). A name that transformers already
defines itself is never overwritten. ``unregister()`` restores exactly the state before ``register()``.
"""
from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

_MISSING = object()
_lock = threading.Lock()
# (kind, name) -> previous value (or _MISSING); present only while registered.
_saved: dict[tuple[str, str], object] = {}


def _targets():
    """(kind, mapping-or-class, name, value) for everything the plugin adds."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RotaryEmbeddingConfigMixin

    from . import rope
    from .attention import anchor, self_extend

    items = [
        ("attention", AttentionInterface._global_mapping, "anchor", anchor.anchor_attention_forward),
        ("attention", AttentionInterface._global_mapping, "self_extend", self_extend.self_extend_attention_forward),
        ("mask", AttentionMaskInterface._global_mapping, "anchor", anchor.anchor_mask),
        ("mask", AttentionMaskInterface._global_mapping, "self_extend", self_extend.self_extend_mask),
    ]
    for name, fn in rope.INIT_FUNCTIONS.items():
        items.append(("rope", ROPE_INIT_FUNCTIONS, name, fn))
    for name, fn in rope.VALIDATORS.items():
        items.append(("validator", RotaryEmbeddingConfigMixin, f"_validate_{name}_rope_parameters", fn))
    return items


def _get(container, name):
    if isinstance(container, dict):
        return container.get(name, _MISSING)
    return container.__dict__.get(name, _MISSING)


def _set(container, name, value):
    if isinstance(container, dict):
        container[name] = value
    else:
        setattr(container, name, value)


def _delete(container, name):
    if isinstance(container, dict):
        container.pop(name, None)
    elif name in container.__dict__:
        delattr(container, name)


def is_registered() -> bool:
    return bool(_saved)


def register() -> None:
    """Register the plugin's names into transformers. Idempotent; never overwrites a built-in name."""
    from transformers import AttentionInterface, AttentionMaskInterface

    with _lock:
        if _saved:
            return
        targets = _targets()
        for kind, container, name, value in targets:
            previous = _get(container, name)
            if previous is not _MISSING and previous is not value:
                # A built-in (or someone else's) entry with that name: leave it alone.
                logger.warning("longctx_plugins: %s %r already exists in transformers; not overwritten.", kind, name)
                continue
            _saved[(kind, name)] = previous
            if kind == "attention":
                AttentionInterface.register(name, value)
            elif kind == "mask":
                AttentionMaskInterface.register(name, value)
            else:
                _set(container, name, value)


def unregister() -> None:
    """Remove exactly what :func:`register` added. A no-op when nothing is registered."""
    with _lock:
        if not _saved:
            return
        for kind, container, name, _value in _targets():
            key = (kind, name)
            if key not in _saved:
                continue
            previous = _saved.pop(key)
            if previous is _MISSING:
                _delete(container, name)
            else:
                _set(container, name, previous)
        _saved.clear()
