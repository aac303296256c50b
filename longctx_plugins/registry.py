"""Additive, idempotent, reversible registration into transformers' official hooks.

``register()`` adds the attention names ``anchor``, ``self_extend``, ``dca``, ``string`` (``AttentionInterface``
and ``AttentionMaskInterface``, both through their ``register`` classmethods), the RoPE init functions ``pi``,
``ntk``, ``self_extend``, ``dca``, ``string`` (``ROPE_INIT_FUNCTIONS``) and their validators (methods
``_validate_<type>_rope_parameters`` of ``RotaryEmbeddingConfigMixin``). A name that transformers already
defines itself is never overwritten. ``unregister()`` restores exactly the state before ``register()``.

``register(deferred=True)`` (what ``import longctx_plugins`` does) registers each group as soon as the transformers
module that holds its registry is imported: at once for modules already loaded, else right after the module has
executed (a post-import hook; nothing of transformers is imported early, so the package import stays light).
Every path that can use an entry imports that module first, so the result is the same as registering at once.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import sys
import threading

from . import _warn

logger = logging.getLogger(__name__)

_MISSING = object()
_lock = threading.RLock()
# (kind, name) -> previous value (or _MISSING); present only while registered.
_saved: dict[tuple[str, str], object] = {}
# group -> the transformers module that holds its registry
HOSTS = {
    "rope": "transformers.modeling_rope_utils",
    "mask": "transformers.masking_utils",
    "attention": "transformers.modeling_utils",
}
_registered: set[str] = set()
_armed: set[str] = set()  # groups waiting for their host module


def _targets(group: str):
    """(kind, container, name, value) for everything the plugin adds in ``group``."""
    if group == "rope":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RotaryEmbeddingConfigMixin

        from .positions import rope

        items = [("rope", ROPE_INIT_FUNCTIONS, name, fn) for name, fn in rope.INIT_FUNCTIONS.items()]
        items += [
            ("validator", RotaryEmbeddingConfigMixin, f"_validate_{name}_rope_parameters", fn)
            for name, fn in rope.VALIDATORS.items()
        ]
        return items
    from .attention import ATTENTION_FUNCTIONS, MASK_FUNCTIONS

    if group == "mask":
        from transformers.masking_utils import AttentionMaskInterface

        return [("mask", AttentionMaskInterface._global_mapping, name, fn) for name, fn in MASK_FUNCTIONS.items()]
    from transformers.modeling_utils import AttentionInterface

    return [("attention", AttentionInterface._global_mapping, name, fn) for name, fn in ATTENTION_FUNCTIONS.items()]


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


def _register_group(group: str) -> None:
    for kind, container, name, value in _targets(group):
        previous = _get(container, name)
        if previous is not _MISSING and previous is not value:
            # A built-in (or someone else's) entry with that name: leave it alone.
            _warn.warn(
                f"longctx_plugins: {kind} {name!r} already exists in transformers and is not overwritten; "
                f"the plugin's {name!r} is not available."
            )
            continue
        _saved[(kind, name)] = previous
        if kind == "attention":
            from transformers import AttentionInterface

            AttentionInterface.register(name, value)
        elif kind == "mask":
            from transformers import AttentionMaskInterface

            AttentionMaskInterface.register(name, value)
        else:
            _set(container, name, value)
    _registered.add(group)


def _loaded(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def is_registered() -> bool:
    """Whether the plugin's names are registered (or will be, the moment transformers loads their registries)."""
    return bool(_registered or _armed)


def register(deferred: bool = False) -> None:
    """Register the plugin's names into transformers. Idempotent; never overwrites a built-in name.

    ``deferred=True``: groups whose transformers module is not imported yet are registered right after it is.
    """
    with _lock:
        for group, host in HOSTS.items():
            if group in _registered:
                continue
            if deferred and not _loaded(host):
                _armed.add(group)
                _install_hook()
                continue
            _armed.discard(group)
            _register_group(group)


def unregister() -> None:
    """Remove exactly what :func:`register` added (and any registration still waiting). A no-op when nothing is."""
    with _lock:
        _armed.clear()
        for group in [g for g in HOSTS if g in _registered]:
            for kind, container, name, _value in _targets(group):
                key = (kind, name)
                if key not in _saved:
                    continue
                previous = _saved.pop(key)
                if previous is _MISSING:
                    _delete(container, name)
                else:
                    _set(container, name, previous)
            _registered.discard(group)
        _saved.clear()


def _on_imported(module_name: str) -> None:
    with _lock:
        for group, host in HOSTS.items():
            if host == module_name and group in _armed:
                _armed.discard(group)
                _register_group(group)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds the host modules with the other finders and runs the registration right after the module executed;
    the module's own loader is put back afterwards, so nothing of the hook stays visible."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in HOSTS.values() or not any(HOSTS[g] == fullname for g in _armed):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, fullname):
        self._loader, self._fullname = loader, fullname

    def __getattr__(self, name):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _on_imported(self._fullname)


_HOOK = _PostImportHook()


def _install_hook() -> None:
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


@contextlib.contextmanager
def temporary_attention(name: str, attention_fn, mask_fn):
    """Register attention ``name`` (function and mask function) for the duration of a ``with`` block, then remove it
    (used by the diagnostics' probe). Refuses names that exist already."""
    from transformers import AttentionInterface, AttentionMaskInterface

    with _lock:
        if name in AttentionInterface._global_mapping or name in AttentionMaskInterface._global_mapping:
            raise ValueError(f"attention {name!r} is already registered; choose another name.")
        AttentionInterface.register(name, attention_fn)
        AttentionMaskInterface.register(name, mask_fn)
    try:
        yield name
    finally:
        with _lock:
            AttentionInterface._global_mapping.pop(name, None)
            AttentionMaskInterface._global_mapping.pop(name, None)
