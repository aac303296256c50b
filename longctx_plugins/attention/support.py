"""Detect models whose attention ignores transformers' AttentionInterface (MPNet, DeBERTa-v2, ...).

Such models accept any ``attn_implementation`` name and silently never call it. transformers offers no hook
at ``from_pretrained`` time for custom names, so the plugin checks wherever it touches a model (``extend``,
the embedder, the diagnostics) and users can call :func:`check_attention` themselves.
"""
from __future__ import annotations


class UnsupportedModelError(ValueError):
    pass


def uses_attention_registry(model) -> bool:
    from transformers import PreTrainedModel

    classes = {type(m) for m in model.modules() if isinstance(m, PreTrainedModel)} or {type(model)}
    return all(cls._can_set_attn_implementation() for cls in classes)


def check_attention(model, name: str | None = None) -> None:
    """Raise :class:`UnsupportedModelError` if ``model`` cannot honour plugin attention ``name``.

    ``name`` defaults to the model's configured implementation; a no-op for names the plugin does not own.
    """
    name = name or getattr(model.config, "_attn_implementation", None)
    from . import ATTENTION_FUNCTIONS

    if name not in ATTENTION_FUNCTIONS:
        return
    if not uses_attention_registry(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} ({model.config.model_type}) computes attention in its own modeling code and "
            f"never calls transformers' AttentionInterface, so attn_implementation={name!r} would be silently "
            "ignored. Use a model whose attention goes through the registry (Llama, Qwen2/3, Mistral, Gemma3, "
            "BERT, XLM-R, ModernBERT, NomicBert, ...)."
        )
