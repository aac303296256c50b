"""Training helpers: the AnchorAttention packing collator."""
from .collator import AnchorPackingCollator

__all__ = ["AnchorPackingCollator"]
