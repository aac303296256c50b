"""The extension methods and the model tables they dispatch on, in one place.

Pure data (no torch / transformers import), so the command line can validate names before anything heavy loads.
"""

from __future__ import annotations

from .rope_methods import ROPE_METHODS

# Position-embedding type of a model, by ``config.model_type``. Model types not listed are detected structurally
# (``longctx_plugins.extension.position_type``): RoPE parameters in the config, or an absolute position table.
# APE types carry their position-id offset rule: "padding_idx" = XLM-R / RoBERTa start real positions at pad_id + 1.
APE_MODEL_TYPES: dict[str, str | None] = {
    "bert": None,
    "electra": None,
    "ernie": None,
    "roformer": None,
    "xlm-roberta": "padding_idx",
    "roberta": "padding_idx",
    "camembert": "padding_idx",
    "xlm-roberta-xl": "padding_idx",
    "mpnet": "padding_idx",  # plus a bucketed relative bias, which needs no change
}
# Causal decoders with RoPE: embedders built on these pool the last token and pad on the left by default.
DECODER_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "modernbert_decoder"}
)
# RoPE models: the decoders and these encoders.
ROPE_MODEL_TYPES = DECODER_MODEL_TYPES | {"modernbert", "nomic_bert", "gte", "eurobert", "jina_embeddings_v3"}

# RoPE scaling types (a new inv_freq; no attention change), registered as transformers RoPE types.
SCALING_TYPES = ("pi", "ntk")
# Methods per position type ("none" = unextended). "pcw" works at encode time (LongContextEmbedder).
METHODS_BY_TYPE = {
    "ape": ("none", "pi", "gp", "rp", "pcw"),
    "rope": ("none", *SCALING_TYPES, *ROPE_METHODS),
}
# What "auto" picks: the methods that keep inputs inside the trained window exactly unchanged and read the whole input.
AUTO = {"ape": "pi", "rope": "self_extend"}
ALL_METHODS = ("auto",) + tuple(dict.fromkeys(m for methods in METHODS_BY_TYPE.values() for m in methods))


def check_method_name(method: str) -> str:
    """``method`` itself, or ValueError naming the valid methods."""
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(ALL_METHODS)}.")
    return method
