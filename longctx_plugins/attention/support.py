"""Detect models that cannot honour a plugin attention: models whose attention ignores transformers'
AttentionInterface (MPNet, DeBERTa-v2, ...), and a position-method attention on a model whose RoPE parameters do not
name that method (or that has no RoPE at all).

Such models accept any ``attn_implementation`` name and would silently run something else. transformers offers no
hook at ``from_pretrained`` time for custom names, so the plugin checks wherever it touches a model (``extend``,
the embedder, the diagnostics, the first forward of a position-method attention) and users can call
:func:`check_attention` themselves.
"""

from __future__ import annotations

from ..positions import rope_config
from ..positions.rope_methods import ROPE_METHODS


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
    configured = getattr(model.config, "_attn_implementation", None)
    name = name or configured
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
    if name == configured:
        problem = position_method_problem(model.config, name)
        if problem:
            raise UnsupportedModelError(problem)


def position_method_problem(config, name: str) -> str | None:
    """Why attention ``name`` cannot run on a model with ``config``, or None. A position method (``self_extend``,
    ``dca``, ``string``) re-maps the positions its RoPE parameters describe: without them it would silently be
    plain attention."""
    if name not in ROPE_METHODS:
        return None
    params = rope_config.global_parameters(config)
    if not params:
        return (
            f"attn_implementation={name!r} re-maps RoPE positions, but {config.model_type!r} has no RoPE "
            "parameters (it uses absolute position embeddings). Extend it with longctx_plugins.extend(model, "
            "'pi' | 'gp' | 'rp', target_length), or LongContextEmbedder(path, method='pi'), and keep its "
            "attention as it is."
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != name:
        return (
            f"attn_implementation={name!r} needs rope_parameters with rope_type={name!r}; this "
            f"{config.model_type!r} model has rope_type={rope_type!r}, so the attention would run as plain "
            f"attention. Load it with rope_parameters={{'rope_type': {name!r}, ...}} (docs/methods.md lists the "
            f"keys) or call longctx_plugins.extend(model, {name!r}, target_length)."
        )
    return None
