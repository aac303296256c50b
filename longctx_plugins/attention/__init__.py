"""Attention functions registered into transformers' AttentionInterface (thin adapters over ``ops/``).

The two tables below are what :mod:`longctx_plugins.registry` registers: ``attn_implementation`` name -> attention
function, and the same name -> mask function.
"""
from .anchor import anchor_attention_forward, anchor_mask
from .self_extend import self_extend_attention_forward, self_extend_mask

ATTENTION_FUNCTIONS = {"anchor": anchor_attention_forward, "self_extend": self_extend_attention_forward}
MASK_FUNCTIONS = {"anchor": anchor_mask, "self_extend": self_extend_mask}
