"""Attention functions registered into transformers' AttentionInterface (thin adapters over ``ops/``).

Layout: :mod:`.plan` (one plan per forward: options, backend choice, shared inputs), :mod:`.kernels` (one module per
backend), :mod:`.anchor` and :mod:`.positional` (what each attention computes on the plan), :mod:`.options`
(:func:`configure`), :mod:`.support` (models that ignore the registry).

The two tables below are what :mod:`longctx_plugins.registry` registers: ``attn_implementation`` name -> attention
function, and the same name -> mask function.
"""

from .anchor import anchor_attention_forward, anchor_mask
from .options import configure
from .positional import MASK_FUNCTIONS as _POSITIONAL_MASKS
from .positional import positional_attention_forward

ATTENTION_FUNCTIONS = {
    "anchor": anchor_attention_forward,
    **{name: positional_attention_forward for name in _POSITIONAL_MASKS},
}
MASK_FUNCTIONS = {"anchor": anchor_mask, **_POSITIONAL_MASKS}

__all__ = ["configure", "ATTENTION_FUNCTIONS", "MASK_FUNCTIONS"]
