"""transformers adapter for absolute-position embedders (BERT, MiniLM, XLM-R/bge-m3, E5, RoBERTa, Electra).

``apply_ape(model, method, target_length)`` resizes what must grow (the PI table; the ``position_ids`` /
``token_type_ids`` buffers) and attaches a forward pre-hook on the embeddings module that fills
``position_ids`` per sequence when the caller passes none. The choice is recorded in
``config.longctx_ape`` so that a saved model reloads extended (call :func:`attach` or load it through
``LongContextEmbedder`` to restore the per-sequence positions; a plain forward then uses positions ``0..T-1``).
"""

from __future__ import annotations

import logging

import torch

from ..ops import ape as ape_ops
from .catalog import APE_MODEL_TYPES

logger = logging.getLogger(__name__)

_HOOK_ATTR = "_longctx_ape_hook"


def embeddings_module(model):
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    if emb is None or not hasattr(emb, "position_embeddings"):
        raise ValueError(f"{type(model).__name__} has no `embeddings.position_embeddings`; not an APE model.")
    return emb


def position_offset(config) -> int:
    rule = APE_MODEL_TYPES.get(config.model_type)
    return (config.pad_token_id + 1) if rule == "padding_idx" else 0


def trained_length(config) -> int:
    """The usable trained window: XLM-R's table has ``pad_id + 1`` reserved rows (514 -> 512)."""
    info = getattr(config, "longctx_ape", None)
    if info:
        return int(info["original_max_position_embeddings"])
    return int(config.max_position_embeddings) - position_offset(config)


def _resize_buffers(emb, rows: int):
    device = emb.position_embeddings.weight.device
    emb.position_ids = torch.arange(rows, device=device).expand(1, -1)
    if hasattr(emb, "token_type_ids"):
        emb.token_type_ids = torch.zeros((1, rows), dtype=torch.long, device=device)


def apply_ape(model, method: str, target_length: int):
    """Extend an APE model in place (``pi`` | ``gp`` | ``rp``); see the module docstring."""
    if method not in ape_ops.APE_METHODS:
        raise ValueError(f"unknown APE method {method!r}; expected one of {ape_ops.APE_METHODS}")
    config = model.config
    if getattr(config, "longctx_ape", None):
        raise ValueError(
            "this model is already extended (config.longctx_ape is set); reload the original to re-extend."
        )
    emb = embeddings_module(model)
    trained = trained_length(config)
    offset = position_offset(config)
    scale = ape_ops.pi_scale(trained, target_length) if method == "pi" else 1
    if method == "pi":
        old = emb.position_embeddings
        new_weight = ape_ops.interpolate_table(old.weight.data, trained, scale, offset)
        new = torch.nn.Embedding(
            new_weight.shape[0],
            new_weight.shape[1],
            padding_idx=old.padding_idx,
            device=new_weight.device,
            dtype=new_weight.dtype,
        )
        new.weight.data.copy_(new_weight)
        emb.position_embeddings = new
        config.max_position_embeddings = new_weight.shape[0]
    else:
        # table unchanged; inputs up to target_length are accepted (positions stay < L via the map)
        config.max_position_embeddings = max(config.max_position_embeddings, target_length + offset)
    _resize_buffers(emb, max(config.max_position_embeddings, target_length + offset))
    config.longctx_ape = {
        "method": method,
        "original_max_position_embeddings": trained,
        "scale": scale,
        "target_length": int(target_length),
    }
    attach(model)
    return model


def position_ids_for(config, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence position ids for an APE-extended model (offset included)."""
    info = config.longctx_ape
    offset = position_offset(config)
    pad = config.pad_token_id
    if lengths is None:
        lengths = (
            (input_ids != pad).sum(-1)
            if pad is not None
            else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
        )
    pos = (
        ape_ops.positions(
            info["method"], lengths, input_ids.shape[1], info["original_max_position_embeddings"], info["scale"]
        )
        + offset
    )
    # padding slots of short rows can map past the table (p * s); they are masked, but must stay in range
    table_rows = offset + info["original_max_position_embeddings"] * info["scale"]
    pos = pos.clamp(max=table_rows - 1)
    if offset and pad is not None:  # XLM-R: padding tokens sit at padding_idx
        pos = torch.where(input_ids == pad, torch.full_like(pos, pad), pos)
    return pos


def attach(model):
    """(Re-)attach the per-sequence position hook of an APE-extended model (after ``from_pretrained``)."""
    info = getattr(model.config, "longctx_ape", None)
    if not info:
        return model
    emb = embeddings_module(model)
    old = getattr(emb, _HOOK_ATTR, None)
    if old is not None:
        old.remove()
    _resize_buffers(
        emb, max(model.config.max_position_embeddings, info["target_length"] + position_offset(model.config))
    )
    config = model.config

    def hook(module, args, kwargs):
        if kwargs.get("position_ids") is not None:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return None  # inputs_embeds only: transformers' default positions
        kwargs["position_ids"] = position_ids_for(config, input_ids)
        return args, kwargs

    setattr(emb, _HOOK_ATTR, emb.register_forward_pre_hook(hook, with_kwargs=True))
    return model
