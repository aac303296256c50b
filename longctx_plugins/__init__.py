"""longctx_plugins: long context for the Hugging Face ecosystem.

Importing the package registers, additively, the attention implementations ``anchor``, ``self_extend``, ``dca`` and
``string`` and the RoPE types ``pi``, ``ntk``, ``self_extend``, ``dca`` and ``string`` into transformers (set
``LONGCTX_PLUGINS_DISABLE=1`` to skip).
Each entry is added as soon as the transformers module that holds its registry is imported (at once when it
already is), so ``import longctx_plugins`` itself stays light: it loads neither torch nor transformers.
"""

from __future__ import annotations

import logging

from ._checks import env_flag
from ._compat import check_versions

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

check_versions()

from ._moved import install as _install_moved  # noqa: E402

_install_moved()  # the old module names (longctx_plugins.rope, ...) keep working, with a DeprecationWarning

from .registry import is_registered, register, unregister  # noqa: E402

__all__ = [
    "__version__",
    "register",
    "unregister",
    "is_registered",
    "extend",
    "LongContextEmbedder",
    "AnchorPackingCollator",
]

_LAZY = {
    "LongContextEmbedder": ("longctx_plugins.embedder", "LongContextEmbedder"),
    "AnchorPackingCollator": ("longctx_plugins.training.collator", "AnchorPackingCollator"),
}


def extend(model, method: str = "auto", target_length: int = 32768, **params):
    """Extend ``model`` in place to ``target_length`` tokens and return it (see :mod:`longctx_plugins.extension`)."""
    from .extension import extend as _extend

    return _extend(model, method, target_length, **params)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'longctx_plugins' has no attribute {name!r}")


if not env_flag("LONGCTX_PLUGINS_DISABLE"):
    register(deferred=True)
