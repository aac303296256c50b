"""transformers adapter for the plugin RoPE types: ``pi``, ``ntk`` and the position methods ``self_extend``,
``dca``, ``string`` (:mod:`longctx_plugins.positions.rope_methods`).

Each type is an entry of ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` with signature
``fn(config, device=None, seq_len=None, layer_type=None, **kw) -> (inv_freq, attention_factor)`` and a
validator method ``_validate_<type>_rope_parameters`` on ``RotaryEmbeddingConfigMixin`` (transformers looks
it up by that name when a config is built). Parameter checks live only in these validators.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .. import _warn
from .._checks import MissingParameterError
from ..ops import rope as rope_ops
from . import rope_methods
from .catalog import DECODER_MODEL_TYPES, SCALING_TYPES
from .rope_config import layer_rope_parameters
from .rope_methods import ROPE_METHODS

logger = logging.getLogger(__name__)

# Optional keys understood by the scaling types (transformers adds ``partial_rotary_factor`` itself).
_SCALING_OPTIONAL = {"rope_theta", "original_max_position_embeddings"}


def rotary_dim(config, rope_parameters: dict[str, Any]) -> int:
    """The rotary dimension d: ``head_dim * partial_rotary_factor`` (transformers' convention)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = rope_parameters.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0
    return int(head_dim * partial)


def _base(rope_parameters: dict[str, Any]) -> float:
    theta = rope_parameters.get("rope_theta")
    if theta is None:  # layer_rope_parameters() restores or refuses before this; never fall back to a default base
        raise ValueError(
            "rope_parameters has no 'rope_theta'; pass the model's RoPE base as rope_parameters['rope_theta']."
        )
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


def checked_parameters(config, layer_type: str | None, rope_type: str) -> dict[str, Any]:
    """The layer's RoPE dict (:func:`layer_rope_parameters`), validated with the type's validator.

    transformers validates a config when it is built, but ``from_pretrained(path, rope_parameters=...)`` (and legacy
    ``rope_scaling=``) set the dict on the loaded config afterwards, unvalidated. Every model build calls the init
    functions, so checking here covers every way parameters arrive: a config built in code, ``from_pretrained``
    keyword arguments, a saved ``config.json`` and :func:`longctx_plugins.extend`.
    """
    params = layer_rope_parameters(config, layer_type)
    VALIDATORS[rope_type](config, params, getattr(config, "ignore_keys_at_rope_validation", None))
    return params


def _scaling_init(rope_type: str):
    def init(config, device=None, seq_len=None, layer_type=None, **kwargs):
        return inv_freq_for(config, checked_parameters(config, layer_type, rope_type), device, rope_type), 1.0

    init.__name__ = f"_init_{rope_type}"
    return init


def _method_init(name: str):
    """A position method keeps the base frequencies; its attention re-maps the positions per pair."""

    def init(config, device=None, seq_len=None, layer_type=None, **kwargs):
        params = checked_parameters(config, layer_type, name)
        impl = getattr(config, "_attn_implementation", None)
        if impl is not None and impl != name:
            # Only the method's own attention honours the re-mapped positions; any other would silently ignore them.
            raise ValueError(
                f"rope_type={name!r} needs attn_implementation={name!r} (got {impl!r}). Load the model with "
                f"`from_pretrained(..., attn_implementation={name!r})` or use `longctx_plugins.extend(model, "
                f"{name!r}, target_length)`."
            )
        if (
            ROPE_METHODS[name].causal_only
            and config.model_type not in DECODER_MODEL_TYPES
            and not getattr(config, "is_decoder", False)
        ):
            raise ValueError(
                f"rope_type={name!r} ({ROPE_METHODS[name].paper}) is defined for causal "
                f"decoders; {config.model_type!r} is not one. Use 'self_extend' for encoders."
            )
        return inv_freq_for(config, params, device, params.get("base_rope_type", "default")), 1.0

    init.__name__ = f"_init_{name}"
    return init


INIT_FUNCTIONS = {**{t: _scaling_init(t) for t in SCALING_TYPES}, **{m: _method_init(m) for m in ROPE_METHODS}}


# ----------------------------------------------------------------------------------------------------- validators
def _factor(rope_parameters, rope_type):
    value = rope_parameters.get("factor")
    if value is None:
        raise MissingParameterError(
            f"rope_parameters for rope_type={rope_type!r} is missing 'factor' (a number >= 1.0)"
            f"; e.g. rope_parameters={{'rope_type': {rope_type!r}, 'factor': 4.0}}."
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(
            f"rope_parameters['factor'] for rope_type={rope_type!r} must be a number >= 1.0, got "
            f"{value!r} ({type(value).__name__})."
        )
    if value < 1.0:
        raise ValueError(f"rope_parameters['factor'] for rope_type={rope_type!r} must be >= 1.0, got {value!r}.")


def _warn_unknown(unknown: set, rope_type: str, known, ignore_keys):
    unknown = set(unknown) - set(ignore_keys or ())
    if unknown:
        _warn.warn(
            f"rope_parameters for rope_type={rope_type!r} has keys it does not use: {sorted(unknown)} (they "
            f"are ignored; known: {sorted(known)})."
        )


def _scaling_validator(rope_type: str):
    def validate(self, rope_parameters, ignore_keys=None):
        _factor(rope_parameters, rope_type)
        known = _SCALING_OPTIONAL | {"factor"}
        _warn_unknown(
            set(rope_parameters) - known - {"rope_type", "type", "partial_rotary_factor"}, rope_type, known, ignore_keys
        )

    return validate


def _method_validator(name: str):
    def validate(self, rope_parameters, ignore_keys=None):
        trained = rope_parameters.get("original_max_position_embeddings") or getattr(
            self, "max_position_embeddings", None
        )
        rope_methods.validate(name, rope_parameters, trained)
        method = ROPE_METHODS[name]
        _warn_unknown(
            rope_methods.unknown_keys(name, rope_parameters), name, set(method.integers) | method.optional, ignore_keys
        )

    return validate


VALIDATORS = {**{t: _scaling_validator(t) for t in SCALING_TYPES}, **{m: _method_validator(m) for m in ROPE_METHODS}}
