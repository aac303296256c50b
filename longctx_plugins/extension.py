"""``extend(model, method, target_length, **params)``: training-free context extension, in place.

Dispatch is on the position-embedding type, read from ``config.model_type`` through a table (with a structural
fallback for model types not in it): absolute tables get ``pi`` / ``gp`` / ``rp`` (and ``pcw``, which is applied
by :class:`~longctx_plugins.LongContextEmbedder` at encode time and leaves the model unchanged); RoPE models
get ``pi`` / ``ntk`` (static RoPE types) and ``self_extend``.

``method="auto"``: APE -> ``pi`` and RoPE -> ``self_extend``, the methods that keep inputs no longer than the
trained window exactly unchanged and read the whole long input (see the README's evaluator table).
"""
from __future__ import annotations

import logging
import math

from . import _warn, rope_config
from .ape import apply_ape, trained_length
from .methods import APE_MODEL_TYPES, AUTO, METHODS, ROPE_MODEL_TYPES, check_method_name
from .ops import self_extend as se_ops

logger = logging.getLogger(__name__)


def position_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    mt = config.model_type
    if mt in APE_MODEL_TYPES:
        return "ape"
    if mt in ROPE_MODEL_TYPES:
        return "rope"
    if getattr(config, "rope_parameters", None):  # structural fallback
        return "rope"
    model = model_or_config if hasattr(model_or_config, "config") else None
    if model is not None and hasattr(getattr(getattr(model, "base_model", model), "embeddings", None),
                                     "position_embeddings"):
        return "ape"
    raise ValueError(f"cannot tell the position-embedding type of model_type={mt!r} (neither an absolute table "
                     "nor RoPE parameters were found).")


def resolve_method(model_or_config, method: str) -> str:
    check_method_name(method)
    ptype = position_type(model_or_config)
    if method == "auto":
        return AUTO[ptype]
    if method not in METHODS[ptype]:
        other = "absolute-position (APE)" if ptype == "rope" else "RoPE"
        raise ValueError(
            f"method {method!r} does not apply to this {ptype.upper()} model: "
            f"{'APE' if ptype == 'ape' else 'RoPE'} models take {METHODS[ptype][1:]}; {method!r} is for "
            f"{other} models."
        )
    return method


def original_length(model) -> int:
    config = model.config
    if position_type(model) == "ape":
        return trained_length(config)
    flat = rope_config.global_parameters(config)
    return int(flat.get("original_max_position_embeddings") or getattr(config, "longctx_original_length", None)
               or config.max_position_embeddings)


def extend(model, method: str = "auto", target_length: int = 32768, **params):
    """Extend ``model`` in place to ``target_length`` tokens and return it. See the module docstring."""
    from .attention.support import check_attention

    if isinstance(target_length, bool) or not isinstance(target_length, int) or target_length < 1:
        raise ValueError(f"target_length must be a positive integer, got {target_length!r}.")
    method = resolve_method(model, method)
    if method in ("none", "pcw"):
        return model
    trained = original_length(model)
    if target_length <= trained:
        _warn.warn(f"target_length={target_length} is not beyond the trained window ({trained}); "
                      "the model is left unchanged.")
        return model
    if position_type(model) == "ape":
        if params:
            raise TypeError(f"unexpected parameters for APE method {method!r}: {sorted(params)}")
        return apply_ape(model, method, target_length)
    model.config.longctx_original_length = trained
    if method in ("pi", "ntk"):
        factor = float(params.pop("factor", target_length / trained))
        if params:
            raise TypeError(f"unexpected parameters for {method!r}: {sorted(params)}")
        rope_config.set_global_parameters(model.config, {"rope_type": method, "factor": factor})
        _rebuild_rotary(model)
        model.config.max_position_embeddings = max(model.config.max_position_embeddings, target_length)
        return model
    # self_extend
    group = params.pop("group_size", None)
    window = params.pop("window", None)
    temperature = params.pop("temperature", None)
    if params:
        raise TypeError(f"unexpected parameters for 'self_extend': {sorted(params)}")
    for name, value in (("group_size", group), ("window", window)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if window is not None and window >= trained:
        raise ValueError(f"window={window} must be smaller than the trained window ({trained}).")
    group, window = se_ops.pick_parameters(trained, target_length, window, group)
    reach = se_ops.max_length(trained, group, window)
    if reach < target_length:
        _warn.warn(f"self_extend with group_size={group}, window={window} reaches about {reach} tokens "
                      f"((L_train - W) * G + W with L_train={trained}), less than target_length={target_length}; "
                      f"use group_size >= {math.ceil((target_length - window) / (trained - window))}.")
    new = {"rope_type": "self_extend", "group_size": group, "window": window,
           "original_max_position_embeddings": trained}
    if temperature is not None:
        new["temperature"] = temperature
    check_attention(model, "self_extend")
    rope_config.set_global_parameters(model.config, new)
    model.set_attn_implementation("self_extend")
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, target_length)
    return model


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
