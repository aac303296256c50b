"""Reading and writing a config's RoPE parameters, flat or nested per layer type, in one place.

Gemma3 and ModernBERT nest ``rope_parameters`` by layer type (``{"full_attention": {...}, "sliding_attention":
{...}}``); most models keep one flat dict. The plugin's methods act on the *global* layers (``full_attention``) of
nested configs and leave sliding-window layers unchanged.

``from_pretrained(path, rope_parameters={...})`` (and the legacy ``rope_scaling=``) replace the checkpoint's whole
RoPE dict, so its ``rope_theta`` is gone from the config (``None``). :func:`layer_rope_parameters` puts back what the
user
did not override (``rope_theta``, ``partial_rotary_factor``, ``original_max_position_embeddings``) from the
checkpoint the config was loaded from, or raises naming the lost value and how to pass it. It never falls back to a
default base.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import _warn
from .._compat import nested_rope_keys
from .catalog import METHODS_BY_TYPE

logger = logging.getLogger(__name__)

GLOBAL_LAYER = "full_attention"
# Fields of a checkpoint's RoPE dict that describe the model itself rather than a scaling method: they are kept when
# a plugin type replaces the dict and the user did not give them.
KEPT_FIELDS = ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings")
# The plugin's RoPE types, in one place (rope.py registers exactly these): scaling types and position methods.
PLUGIN_TYPES = tuple(m for m in METHODS_BY_TYPE["rope"] if m != "none")  # the RoPE types the plugin registers


def nested_keys(config) -> list[str]:
    params = getattr(config, "rope_parameters", None) or {}
    return nested_rope_keys(config, params) if isinstance(params, dict) else []


def global_key(config) -> str | None:
    """The nested key the plugin's methods act on (``full_attention``), or None for flat parameters."""
    keys = nested_keys(config)
    if not keys:
        return None
    return GLOBAL_LAYER if GLOBAL_LAYER in keys else keys[0]


def _raw(config, layer_type: str | None) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params and isinstance(params[layer_type], dict):
        return params[layer_type]
    key = global_key(config) if layer_type is None else None
    return params[key] if key is not None else params


def global_parameters(config) -> dict[str, Any]:
    """The RoPE dict of the global layers (the flat dict for flat configs), as stored (no standardisation)."""
    return _raw(config, None)


def module_layer_type(module) -> str | None:
    """The layer type of an attention module (``config.layer_types[module.layer_idx]``), None without layer types."""
    layer_types = getattr(module.config, "layer_types", None)
    idx = getattr(module, "layer_idx", None)
    if not layer_types or idx is None:
        return None
    return layer_types[idx]


def module_parameters(module) -> dict[str, Any]:
    """The RoPE dict that applies to an attention module's layer."""
    layer_type = module_layer_type(module)
    params = getattr(module.config, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params:
        return params[layer_type]
    return params


def layer_rope_parameters(config, layer_type: str | None = None) -> dict[str, Any]:
    """The RoPE dict for ``layer_type`` (transformers' rotary modules pass it), standardised, with the checkpoint's
    own ``rope_theta`` (and the other kept fields) put back where a ``from_pretrained`` override dropped them."""
    config.standardize_rope_params()
    params = _raw(config, layer_type)
    if params.get("rope_type", params.get("type")) in PLUGIN_TYPES and params.get("rope_theta") is None:
        _restore_from_checkpoint(config, params, layer_type)
    return params


def _checkpoint_rope(config, layer_type: str | None) -> dict[str, Any] | None:
    """The effective RoPE dict of the checkpoint ``config`` was loaded from: its ``config.json`` (local folder or the
    local hub cache) read through the config class, so legacy fields are converted as transformers converts them
    and a base the file does not state is the class default the checkpoint itself runs with. None when no
    ``config.json`` can be read."""
    import json

    from transformers.utils import cached_file

    path = getattr(config, "_name_or_path", None) or ""
    if not path:
        return None
    try:
        file = cached_file(path, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False)
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
        saved = type(config).from_dict(raw)
    except Exception as exc:  # not a folder / not cached / unreadable / another config class
        logger.debug("could not read the checkpoint config of %r: %s", path, exc)
        return None
    saved.standardize_rope_params()
    return _raw(saved, layer_type)


def _restore_from_checkpoint(config, params: dict[str, Any], layer_type: str | None) -> None:
    rope_type = params.get("rope_type", params.get("type"))
    saved = _checkpoint_rope(config, layer_type)
    where = f" (layer type {layer_type!r})" if layer_type else ""
    if saved is None or saved.get("rope_theta") is None:
        raise ValueError(
            f"rope_parameters for rope_type={rope_type!r}{where} has no 'rope_theta': from_pretrained(path, "
            "rope_parameters=...) (and rope_scaling=...) replace the checkpoint's whole RoPE dict, and the "
            "checkpoint's own base could not be read back from "
            f"{getattr(config, '_name_or_path', '') or 'its path'!r}. "
            f"Pass it with your override, e.g. rope_parameters={{'rope_type': {rope_type!r}, ..., 'rope_theta': "
            "<rope_theta from the checkpoint's config.json>}, or load the model unchanged and call "
            f"longctx_plugins.extend(model, {rope_type!r}, target_length), which keeps it."
        )
    for key in KEPT_FIELDS:
        if params.get(key) is None and saved.get(key) is not None:
            params[key] = saved[key]
    saved_type = saved.get("rope_type", "default")
    if saved_type not in ("default", rope_type):
        detail = {k: v for k, v in saved.items() if k not in ("rope_type", "type") + KEPT_FIELDS}
        _warn.warn(
            f"the checkpoint's RoPE scaling rope_type={saved_type!r} {detail}{where} is replaced by "
            f"rope_type={rope_type!r}: positions follow {rope_type!r} on top of the checkpoint's base "
            f"rope_theta={params['rope_theta']}, without {saved_type!r}'s own scaling."
        )


def set_global_parameters(config, new: dict[str, Any]) -> None:
    """Merge ``new`` into the global layers' RoPE dict (the flat dict for flat configs) and validate."""
    params = config.rope_parameters
    key = global_key(config)
    if key is not None:
        params[key] = {**params[key], **new}
    else:
        params.update(new)
    config.validate_rope()
