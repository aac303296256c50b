"""``extend(model, method, target_length, **params)``: training-free context extension, in place.

Dispatch is on the position-embedding type, read from ``config.model_type`` through a table (with a structural
fallback for model types not in it): absolute tables get ``pi`` / ``gp`` / ``rp`` (and ``pcw``, which is applied
by :class:`~longctx_plugins.LongContextEmbedder` at encode time and leaves the model unchanged); RoPE models
get ``pi`` / ``ntk`` (static RoPE types) and the position methods ``self_extend``, ``dca`` and ``string``
(decoders; :mod:`longctx_plugins.position_methods` says which parameters each picks for a target length).

``method="auto"``: APE -> ``pi`` and RoPE -> ``self_extend``, the methods that keep inputs no longer than the
trained window exactly unchanged and read the whole long input (see the README's evaluator table).
"""
from __future__ import annotations

import logging

from . import _warn, position_methods, rope_config
from ._checks import positive_int
from .ape import apply_ape, trained_length
from .methods import APE_MODEL_TYPES, AUTO, METHODS, ROPE_MODEL_TYPES, check_method_name

logger = logging.getLogger(__name__)
# The longest target length accepted (2**24 tokens): far beyond any model's use, and it keeps an interpolated APE
# table or a mistyped length from allocating memory without bound.
MAX_TARGET_LENGTH = 2 ** 24


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
        "model, or a supported one.")


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


def original_length(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    if position_type(config) == "ape":
        return trained_length(config)
    flat = rope_config.global_parameters(config)
    # longctx_original_length: what extend() of longctx-plugins 0.1 saved into config.json
    return int(flat.get("original_max_position_embeddings") or getattr(config, "longctx_original_length", None)
               or config.max_position_embeddings)


def extend(model, method: str = "auto", target_length: int = 32768, **params):
    """Extend ``model`` in place to ``target_length`` tokens and return it. See the module docstring."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"extend() takes a loaded transformers model (a PreTrainedModel), got "
                        f"{type(model).__name__}; load it first, e.g. AutoModel.from_pretrained(path).")
    target_length = positive_int("target_length", target_length)
    if target_length > MAX_TARGET_LENGTH:
        raise ValueError(f"target_length={target_length} is beyond the longest input this package extends to "
                         f"({MAX_TARGET_LENGTH:,} tokens); pass the length you will actually read.")
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
    if method in ("pi", "ntk"):
        factor = float(params.pop("factor", target_length / trained))
        if params:
            raise TypeError(f"unexpected parameters for {method!r}: {sorted(params)}")
        rope_config.set_global_parameters(model.config, {"rope_type": method, "factor": factor,
                                                         "original_max_position_embeddings": trained})
        _rebuild_rotary(model)
    else:
        _extend_position_method(model, method, trained, target_length, params)
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, target_length)
    return model


def _extend_position_method(model, name: str, trained: int, target: int, given: dict) -> None:
    """SelfExtend / DCA / STRING: the method's own parameters (``extend`` picks the ones not given, see
    :mod:`longctx_plugins.position_methods`), validated, then the method's attention."""
    from .attention.support import check_attention

    spec = position_methods.METHODS[name]
    unknown = set(given) - set(spec.integers) - spec.optional
    if unknown:
        raise TypeError(f"unexpected parameters for {name!r}: {sorted(unknown)}; it takes "
                        f"{sorted(set(spec.integers) | spec.optional - {'original_max_position_embeddings'})}.")
    new = {**given, **spec.defaults(trained, target, given)}
    new.update(rope_type=name, original_max_position_embeddings=trained)
    position_methods.validate(name, new, trained)
    note = position_methods.reach_note(name, new, trained, target)
    if note:
        _warn.warn(note)
    check_attention(model, name)
    rope_config.set_global_parameters(model.config, new)
    model.set_attn_implementation(name)


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
