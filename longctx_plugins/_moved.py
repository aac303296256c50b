"""Modules that moved, importable under their old names for one release with a ``DeprecationWarning``.

``import longctx_plugins.rope`` (and the other names in :data:`MOVED`) gives a small module that forwards every
attribute to the new module, under the new name where one was renamed (:data:`RENAMED`). Installed by
``import longctx_plugins``; nothing is imported until an old name is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "longctx_plugins.methods": "longctx_plugins.positions.catalog",
    "longctx_plugins.position_methods": "longctx_plugins.positions.rope_methods",
    "longctx_plugins.rope": "longctx_plugins.positions.rope",
    "longctx_plugins.rope_config": "longctx_plugins.positions.rope_config",
    "longctx_plugins.ape": "longctx_plugins.positions.ape",
}
# old module -> {old attribute: new attribute}
RENAMED = {
    "longctx_plugins.methods": {"METHODS": "METHODS_BY_TYPE"},
    "longctx_plugins.position_methods": {"METHODS": "ROPE_METHODS"},
    "longctx_plugins.rope_config": {"layer_parameters": "layer_rope_parameters"},
}


class _Forwarder(importlib.abc.Loader):
    def exec_module(self, module) -> None:
        old = module.__name__
        new = MOVED[old]
        warnings.warn(
            f"{old} moved to {new}; the old name will be removed in a future release.", DeprecationWarning, stacklevel=2
        )
        target = importlib.import_module(new)
        renamed = RENAMED.get(old, {})

        def forward(name: str):
            return getattr(target, renamed.get(name, name))

        module.__getattr__ = forward  # type: ignore[attr-defined]
        module.__doc__ = f"Moved to :mod:`{new}` (deprecated alias)."


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Forwarder())


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
