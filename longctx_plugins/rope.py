"""transformers adapter for the plugin RoPE types ``pi``, ``ntk`` and ``self_extend``.

Each type is an entry of ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` with signature
``fn(config, device=None, seq_len=None, layer_type=None, **kw) -> (inv_freq, attention_factor)`` and a
validator method ``_validate_<type>_rope_parameters`` on ``RotaryEmbeddingConfigMixin`` (transformers looks
it up by that name when a config is built).
"""
from __future__ import annotations

import logging
import math
from typing import Any

from . import _warn
from .ops import rope as rope_ops
from .rope_config import layer_parameters

logger = logging.getLogger(__name__)

PLUGIN_ROPE_TYPES = ("pi", "ntk", "self_extend")
# Optional keys understood by every type (transformers adds ``partial_rotary_factor`` itself).
_COMMON_OPTIONAL = {"rope_theta", "original_max_position_embeddings"}
_OPTIONAL_KEYS = {
    "pi": {"factor"} | _COMMON_OPTIONAL,
    "ntk": {"factor"} | _COMMON_OPTIONAL,
    "self_extend": {"group_size", "window", "temperature", "base_rope_type", "factor", "keep_trained_window"}
    | _COMMON_OPTIONAL,
}
_REQUIRED_KEYS = {"pi": {"factor"}, "ntk": {"factor"}, "self_extend": {"group_size", "window"}}
# Base types SelfExtend may sit on for its neighbour positions.
SELF_EXTEND_BASE_TYPES = ("default", "pi", "ntk")


def rotary_dim(config, rope_parameters: dict[str, Any]) -> int:
    """The rotary dimension d: ``head_dim * partial_rotary_factor`` (transformers' convention)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = rope_parameters.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0
    return int(head_dim * partial)


def _base(rope_parameters: dict[str, Any]) -> float:
    theta = rope_parameters.get("rope_theta")
    if theta is None:  # layer_parameters() restores or refuses before this; never fall back to a default base
        raise ValueError("rope_parameters has no 'rope_theta'; pass the model's RoPE base as rope_parameters['rope_theta'].")
    return float(theta)


def inv_freq_for(config, rope_parameters: dict[str, Any], device=None, rope_type: str | None = None):
    """Inverse frequencies for ``rope_type`` (default: the parameters' own type) of one parameter dict."""
    rope_type = rope_type or rope_parameters.get("rope_type", "default")
    dim = rotary_dim(config, rope_parameters)
    base = _base(rope_parameters)
    if rope_type == "pi":
        return rope_ops.pi_inv_freq(dim, base, float(rope_parameters["factor"]), device)
    if rope_type == "ntk":
        return rope_ops.ntk_inv_freq(dim, base, float(rope_parameters["factor"]), device)
    if rope_type == "default":
        return rope_ops.default_inv_freq(dim, base, device)
    raise ValueError(f"rope type {rope_type!r} is not computed by longctx_plugins")


def _init_pi(config, device=None, seq_len=None, layer_type=None, **kwargs):
    return inv_freq_for(config, layer_parameters(config, layer_type), device, "pi"), 1.0


def _init_ntk(config, device=None, seq_len=None, layer_type=None, **kwargs):
    return inv_freq_for(config, layer_parameters(config, layer_type), device, "ntk"), 1.0


def _init_self_extend(config, device=None, seq_len=None, layer_type=None, **kwargs):
    """SelfExtend keeps the base frequencies; the grouped positions are applied by the attention."""
    params = layer_parameters(config, layer_type)
    impl = getattr(config, "_attn_implementation", None)
    if impl is not None and impl != "self_extend":
        # Only the "self_extend" attention honours the grouped positions; any other would silently ignore them.
        raise ValueError(
            f"rope_type='self_extend' needs attn_implementation='self_extend' (got {impl!r}). Load the model with "
            "`from_pretrained(..., attn_implementation='self_extend')` or use `longctx_plugins.extend(model, "
            "method='self_extend', ...)`."
        )
    return inv_freq_for(config, params, device, params.get("base_rope_type", "default")), 1.0


INIT_FUNCTIONS = {"pi": _init_pi, "ntk": _init_ntk, "self_extend": _init_self_extend}


# ----------------------------------------------------------------------------------------------------- validators
def _number(rope_parameters, key, rope_type, minimum, *, integer=False, strict_min=False):
    if key not in rope_parameters or rope_parameters[key] is None:
        raise ValueError(
            f"rope_parameters for rope_type={rope_type!r} is missing {key!r}; allowed: "
            f"{'an integer' if integer else 'a number'} {'>' if strict_min else '>='} {minimum}."
        )
    value = rope_parameters[key]
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise ValueError(
            f"rope_parameters[{key!r}] for rope_type={rope_type!r} must be {'an integer' if integer else 'a number'} "
            f"{'>' if strict_min else '>='} {minimum}, got {value!r} ({type(value).__name__})."
        )
    if value < minimum or (strict_min and value == minimum):
        raise ValueError(
            f"rope_parameters[{key!r}] for rope_type={rope_type!r} must be {'>' if strict_min else '>='} {minimum}, "
            f"got {value!r}."
        )
    return value


def _warn_unknown(rope_parameters, rope_type, ignore_keys):
    known = _OPTIONAL_KEYS[rope_type] | {"rope_type", "type", "partial_rotary_factor"} | set(ignore_keys or ())
    unknown = set(rope_parameters) - known
    if unknown:
        _warn.warn(
            f"rope_parameters for rope_type={rope_type!r} has keys it does not use: {sorted(unknown)} (they are "
            f"ignored; known: {sorted(_OPTIONAL_KEYS[rope_type] | _REQUIRED_KEYS[rope_type])}).")


def _validate_pi(self, rope_parameters, ignore_keys=None):
    _number(rope_parameters, "factor", "pi", 1.0)
    _warn_unknown(rope_parameters, "pi", ignore_keys)


def _validate_ntk(self, rope_parameters, ignore_keys=None):
    _number(rope_parameters, "factor", "ntk", 1.0)
    _warn_unknown(rope_parameters, "ntk", ignore_keys)


def _validate_self_extend(self, rope_parameters, ignore_keys=None):
    group_size = _number(rope_parameters, "group_size", "self_extend", 1, integer=True)
    window = _number(rope_parameters, "window", "self_extend", 1, integer=True)
    trained = getattr(self, "max_position_embeddings", None)
    if trained is not None and window >= trained and group_size > 1:
        raise ValueError(
            f"rope_parameters['window']={window} must be smaller than the trained window "
            f"(max_position_embeddings={trained}); SelfExtend groups only positions beyond the window."
        )
    temp = rope_parameters.get("temperature")
    if temp not in (None, "log"):
        raise ValueError(f"rope_parameters['temperature'] must be None or 'log', got {temp!r}.")
    base = rope_parameters.get("base_rope_type", "default")
    if base not in SELF_EXTEND_BASE_TYPES:
        raise ValueError(
            f"rope_parameters['base_rope_type'] must be one of {SELF_EXTEND_BASE_TYPES}, got {base!r}."
        )
    if base in ("pi", "ntk"):
        _number(rope_parameters, "factor", "self_extend", 1.0)
    _warn_unknown(rope_parameters, "self_extend", ignore_keys)


VALIDATORS = {"pi": _validate_pi, "ntk": _validate_ntk, "self_extend": _validate_self_extend}
