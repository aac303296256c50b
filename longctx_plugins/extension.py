"""``extend(model, method, target_length, **params)``: training-free context extension, in place.

Dispatch is on the position-embedding type, read from ``config.model_type`` through a table (with a structural
fallback for model types not in it): absolute tables get ``pi`` / ``gp`` / ``rp`` (and ``pcw``, which is applied
by :class:`~longctx_plugins.LongContextEmbedder` at encode time and leaves the model unchanged); RoPE models
get ``pi`` / ``ntk`` (static RoPE types) and the position methods ``self_extend``, ``dca`` and ``string``
(decoders; :mod:`longctx_plugins.positions.rope_methods` says which parameters each picks for a target length).

Each decision is made once, by :func:`resolve`: the method, the trained length, the target and the method's full
parameters, checked, as an :class:`Extension` that ``extend(model, extension)`` applies as is (the embedder resolves
what it reads first, then extends with that choice).

``method="auto"``: APE -> ``pi`` and RoPE -> ``self_extend``, the methods that keep inputs no longer than the
trained window exactly unchanged and read the whole long input (see the README's evaluator table).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from . import _warn
from ._checks import positive_int
from .positions import rope_config, rope_methods
from .positions.ape import apply_ape, trained_length
from .positions.catalog import (
    APE_MODEL_TYPES,
    AUTO,
    METHODS_BY_TYPE,
    ROPE_MODEL_TYPES,
    SCALING_TYPES,
    check_method_name,
)

logger = logging.getLogger(__name__)
# The longest target length accepted (2**24 tokens): far beyond any model's use, and it keeps an interpolated APE
# table or a mistyped length from allocating memory without bound.
MAX_TARGET_LENGTH = 2**24
DEFAULT_TARGET_LENGTH = 32768


@dataclass(frozen=True)
class Extension:
    """A resolved extension request (:func:`resolve`): what ``extend(model, extension)`` applies without deciding
    anything again.

    ``method`` is never ``"auto"``; ``parameters`` are the RoPE dict entries the method writes (empty for APE
    methods, ``none`` and ``pcw``); ``note`` is the warning ``extend`` raises when applying it (a reach below the
    target), if any."""

    position_type: str
    method: str
    trained_length: int
    target_length: int
    parameters: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def changes_model(self) -> bool:
        """Whether applying it changes the model (a method that acts on the model, a target beyond the window)."""
        return self.method not in ("none", "pcw") and self.target_length > self.trained_length


def check_target_length(target_length) -> int:
    """``target_length`` if it is an integer in ``1..MAX_TARGET_LENGTH``, else ValueError naming the fix."""
    target_length = positive_int("target_length", target_length)
    if target_length > MAX_TARGET_LENGTH:
        raise ValueError(
            f"target_length={target_length} is beyond the longest input this package extends to "
            f"({MAX_TARGET_LENGTH:,} tokens); pass the length you will actually read."
        )
    return target_length


def position_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    mt = config.model_type
    if mt in APE_MODEL_TYPES:
        return "ape"
    if mt in ROPE_MODEL_TYPES:
        return "rope"
    if getattr(config, "rope_parameters", None):  # structural fallback
        return "rope"
    raise ValueError(
        f"model_type={mt!r} is not one longctx_plugins knows how to extend: neither RoPE parameters in its config nor "
        f"a known absolute-position model ({', '.join(sorted(APE_MODEL_TYPES))}). Absolute tables are only extended "
        "for model types whose position-id rule (offsets, relative biases) is known; use method='none' for this "
        "model, or a supported one."
    )


def resolve_method(model_or_config, method: str) -> str:
    check_method_name(method)
    ptype = position_type(model_or_config)
    if method == "auto":
        return AUTO[ptype]
    if method not in METHODS_BY_TYPE[ptype]:
        other = "absolute-position (APE)" if ptype == "rope" else "RoPE"
        raise ValueError(
            f"method {method!r} does not apply to this {ptype.upper()} model: "
            f"{'APE' if ptype == 'ape' else 'RoPE'} models take {METHODS_BY_TYPE[ptype][1:]}; {method!r} is for "
            f"{other} models."
        )
    return method


def original_length(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    if position_type(config) == "ape":
        return trained_length(config)
    flat = rope_config.global_parameters(config)
    # longctx_original_length: what extend() of longctx-plugins 0.1 saved into config.json
    return int(
        flat.get("original_max_position_embeddings")
        or getattr(config, "longctx_original_length", None)
        or config.max_position_embeddings
    )


def resolve(model_or_config, method: str = "auto", target_length: int = DEFAULT_TARGET_LENGTH, **params) -> Extension:
    """Every decision of ``extend(model_or_config, method, target_length, **params)``, checked, without changing
    anything: ValueError / TypeError naming the fix for a bad method, length or parameter."""
    return _resolve(model_or_config, method, check_target_length(target_length), params)


def _resolve(model_or_config, method: str, target: int, params: dict) -> Extension:
    config = getattr(model_or_config, "config", model_or_config)
    method = resolve_method(config, method)
    ptype, trained = position_type(config), original_length(config)
    if method in ("none", "pcw") or ptype == "ape" or target <= trained:
        if params and (ptype == "ape" or method in ("none", "pcw")):
            raise TypeError(f"unexpected parameters for {ptype.upper()} method {method!r}: {sorted(params)}")
        return Extension(ptype, method, trained, target)
    if method in SCALING_TYPES:
        given = dict(params)
        factor = float(given.pop("factor", target / trained))
        if given:
            raise TypeError(f"unexpected parameters for {method!r}: {sorted(given)}")
        return Extension(
            ptype,
            method,
            trained,
            target,
            {"rope_type": method, "factor": factor, "original_max_position_embeddings": trained},
        )
    spec = rope_methods.ROPE_METHODS[method]
    unknown = set(params) - set(spec.integers) - spec.optional
    if unknown:
        raise TypeError(
            f"unexpected parameters for {method!r}: {sorted(unknown)}; it takes "
            f"{sorted(set(spec.integers) | spec.optional - {'original_max_position_embeddings'})}."
        )
    new = {**params, **spec.defaults(trained, target, params)}
    new.update(rope_type=method, original_max_position_embeddings=trained)
    rope_methods.validate(method, new, trained)
    return Extension(ptype, method, trained, target, new, rope_methods.reach_note(method, new, trained, target))


def extend(model, method: str | Extension = "auto", target_length: int = DEFAULT_TARGET_LENGTH, **params):
    """Extend ``model`` in place to ``target_length`` tokens and return it. See the module docstring.

    ``method`` may be an :class:`Extension` from :func:`resolve` (or the embedder's reading window): it is applied as
    is, and ``target_length`` / ``params`` must then be left out."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"extend() takes a loaded transformers model (a PreTrainedModel), got "
            f"{type(model).__name__}; load it first, e.g. AutoModel.from_pretrained(path)."
        )
    if isinstance(method, Extension):
        if params or target_length not in (DEFAULT_TARGET_LENGTH, method.target_length):
            raise TypeError(
                "extend(model, extension) takes no target_length or parameters: the Extension carries "
                "them (resolve() again to change them)."
            )
        choice = method
    else:
        choice = resolve(model, method, target_length, **params)
    if choice.method in ("none", "pcw"):
        return model
    if choice.target_length <= choice.trained_length:
        _warn.warn(
            f"target_length={choice.target_length} is not beyond the trained window "
            f"({choice.trained_length}); the model is left unchanged."
        )
        return model
    if choice.position_type == "ape":
        return apply_ape(model, choice.method, choice.target_length)
    if choice.method in SCALING_TYPES:
        rope_config.set_global_parameters(model.config, dict(choice.parameters))
        _rebuild_rotary(model)
    else:
        _apply_position_method(model, choice)
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, choice.target_length)
    return model


def _apply_position_method(model, choice: Extension) -> None:
    """SelfExtend / DCA / STRING: the resolved parameters into the config, then the method's attention."""
    from .attention.support import check_attention

    if choice.note:
        _warn.warn(choice.note)
    check_attention(model, choice.method)
    rope_config.set_global_parameters(model.config, dict(choice.parameters))
    model.set_attn_implementation(choice.method)


def _rebuild_rotary(model):
    """Recompute the rotary modules' frequencies from the new config (transformers' own init functions)."""
    rebuilt = 0
    for name, module in list(model.named_modules()):
        if not any(n.endswith("inv_freq") for n, _ in module.named_buffers(recurse=False)):
            continue
        try:
            fresh = type(module)(config=model.config)
        except TypeError as exc:
            raise ValueError(f"cannot rebuild rotary module {name} ({type(module).__name__}): {exc}") from exc
        ref = next(iter(module.buffers()))
        fresh.to(ref.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)
        rebuilt += 1
    if not rebuilt:
        raise ValueError(f"{type(model).__name__}: no rotary embedding module found to rebuild.")
