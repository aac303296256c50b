"""Attention functions registered into transformers' AttentionInterface (thin adapters over ``ops/``)."""
