"""The training-free position methods for RoPE models, in one table: SelfExtend, Dual Chunk Attention, STRING.

Each is a RoPE type (``rope_parameters["rope_type"]``) and an attention implementation of the same name (the
attention re-maps positions per pair, :mod:`longctx_plugins.attention.positional`). This module says, per method,
which parameters it takes and how they are checked (used by the config validators, so a bad value fails when the
config is built), which values ``extend(model, method, target_length)`` picks, how far the method reaches with
trained distances only, and its attention passes (:mod:`longctx_plugins.ops`, imported on first use). No torch or
transformers import.

Parameters every method takes: ``keep_trained_window`` (default True: the method acts only past the trained window,
which inputs inside it leave exactly unchanged), ``original_max_position_embeddings`` (the trained length),
``base_rope_type`` (``default`` | ``pi`` | ``ntk``, with ``factor``: the frequencies the true positions use) and
``rope_theta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from .._checks import MissingParameterError


def _ops(name: str):
    """``longctx_plugins.ops.<name>`` (imported on first use: it needs torch, this table does not)."""
    return import_module(f"longctx_plugins.ops.{name}")


COMMON_OPTIONAL = frozenset(
    {"keep_trained_window", "original_max_position_embeddings", "base_rope_type", "factor", "rope_theta"}
)
BASE_ROPE_TYPES = ("default", "pi", "ntk")


@dataclass(frozen=True)
class Method:
    name: str
    integers: dict[str, int]  # required integer parameters -> their minimum
    optional: frozenset
    causal_only: bool
    passes: Callable[[dict, bool], tuple]
    defaults: Callable[[int, int, dict], dict]  # (trained, target, given) -> every parameter
    check: Callable[[dict, int], None]  # cross-parameter rules against the trained length
    reach: Callable[[dict, int], int | None]  # longest input with trained distances only (None: no limit)
    paper: str


def _check_self_extend(p, trained):
    if p["window"] >= trained and p["group_size"] > 1:
        raise ValueError(
            f"rope_parameters['window']={p['window']} must be smaller than the trained window "
            f"({trained}); SelfExtend groups only positions beyond the window."
        )
    if p.get("temperature") not in (None, "log"):
        raise ValueError(f"rope_parameters['temperature'] must be None or 'log', got {p.get('temperature')!r}.")


def _check_dca(p, trained):
    if p["chunk_size"] + p["local_window"] > trained:
        raise ValueError(
            f"rope_parameters chunk_size + local_window = {p['chunk_size'] + p['local_window']} is the "
            f"largest distance DCA uses; it must not exceed the trained window ({trained})."
        )


def _check_string(p, trained):
    if p["shift"] >= trained:
        raise ValueError(f"rope_parameters['shift']={p['shift']} must be smaller than the trained window ({trained}).")
    if p["local_window"] >= p["shift"]:
        raise ValueError(
            f"rope_parameters['local_window']={p['local_window']} must be smaller than "
            f"shift={p['shift']} (distances below the local window stay reserved for neighbours)."
        )


def _se_defaults(trained, target, given):
    g, w = _ops("self_extend").pick_parameters(trained, target, given.get("window"), given.get("group_size"))
    return {"group_size": g, "window": w}


def _dca_defaults(trained, target, given):
    c, w = _ops("dca").default_parameters(trained)
    return {"chunk_size": given.get("chunk_size", c), "local_window": given.get("local_window", w)}


def _string_defaults(trained, target, given):
    s, w = _ops("string").default_parameters(trained, target, given.get("local_window"))
    return {"shift": given.get("shift", s), "local_window": w}


ROPE_METHODS: dict[str, Method] = {
    "self_extend": Method(
        "self_extend",
        {"group_size": 1, "window": 1},
        COMMON_OPTIONAL | {"temperature"},
        False,
        lambda p, causal: _ops("self_extend").passes(int(p["group_size"]), int(p["window"]), causal),
        _se_defaults,
        _check_self_extend,
        lambda p, L: _ops("self_extend").max_length(L, p["group_size"], p["window"]),
        "SelfExtend (Jin et al. 2024)",
    ),
    "dca": Method(
        "dca",
        {"chunk_size": 1, "local_window": 0},
        COMMON_OPTIONAL,
        True,
        lambda p, causal: _ops("dca").passes(int(p["chunk_size"]), int(p["local_window"])),
        _dca_defaults,
        _check_dca,
        lambda p, L: None,
        "Dual Chunk Attention (An et al. 2024)",
    ),
    "string": Method(
        "string",
        {"shift": 1, "local_window": 0},
        COMMON_OPTIONAL,
        True,
        lambda p, causal: _ops("string").passes(int(p["shift"]), int(p["local_window"])),
        _string_defaults,
        _check_string,
        lambda p, L: _ops("string").max_length(L, p["shift"], p["local_window"]),
        "STRING (An et al. 2024)",
    ),
}


def validate(name: str, params: dict, trained: int | None) -> None:
    """ValueError naming the bad parameter of method ``name`` (called when a config is built and by ``extend``); a
    missing one raises :class:`MissingParameterError`, also a ``KeyError`` as transformers' own types raise."""
    method = ROPE_METHODS[name]
    for key, minimum in method.integers.items():
        value = params.get(key)
        if value is None:
            unknown = sorted(unknown_keys(name, params))
            hint = f" (it has keys {name!r} does not use: {unknown}; a misspelling?)" if unknown else ""
            raise MissingParameterError(
                f"rope_parameters for rope_type={name!r} is missing {key!r} (an integer >= "
                f"{minimum}){hint}; longctx_plugins.extend(model, {name!r}, target_length) "
                "picks it for you."
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"rope_parameters[{key!r}] for rope_type={name!r} must be an integer >= {minimum}, got {value!r}."
            )
    keep = params.get("keep_trained_window", True)
    if not isinstance(keep, bool):
        raise ValueError(f"rope_parameters['keep_trained_window'] must be True or False, got {keep!r}.")
    base = params.get("base_rope_type", "default")
    if base not in BASE_ROPE_TYPES:
        raise ValueError(f"rope_parameters['base_rope_type'] must be one of {BASE_ROPE_TYPES}, got {base!r}.")
    if base != "default":
        factor = params.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(
                f"rope_parameters['factor'] must be a number >= 1 with base_rope_type={base!r}, got {factor!r}."
            )
    if trained is not None:
        method.check(params, trained)


def unknown_keys(name: str, params: dict) -> set:
    return (
        set(params)
        - set(ROPE_METHODS[name].integers)
        - ROPE_METHODS[name].optional
        - {"rope_type", "type", "partial_rotary_factor"}
    )


def reach_note(name: str, params: dict, trained: int, target: int) -> str | None:
    """A sentence when ``params`` do not reach ``target`` with trained distances only, else None."""
    reach = ROPE_METHODS[name].reach(params, trained)
    if reach is None or reach >= target:
        return None
    if name == "self_extend":
        need = math.ceil((target - params["window"]) / max(1, trained - params["window"]))
        return (
            f"self_extend with group_size={params['group_size']}, window={params['window']} reaches about "
            f"{reach} tokens ((L_train - W) * G + W with L_train={trained}), less than target_length={target}; "
            f"use group_size >= {need}."
        )
    return (
        f"{name} with {', '.join(f'{k}={params[k]}' for k in ROPE_METHODS[name].integers)} keeps every distance "
        f"inside the trained window ({trained}) only up to {reach} tokens, less than target_length={target}: "
        "longer inputs use distances the model never saw in training (STRING alone reaches at most about twice "
        "the trained length; dca and self_extend have no such limit)."
    )
