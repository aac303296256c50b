"""Training helpers: the AnchorAttention packing collator and sequence-parallel (Ulysses) configuration."""

from .collator import AnchorPackingCollator
from .sequence_parallel import ulysses_parallelism_config

__all__ = ["AnchorPackingCollator", "ulysses_parallelism_config"]
