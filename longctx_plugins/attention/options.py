"""Options of the plugin attentions, typed and validated in one place.

Set them with :func:`configure` (validated at once, kept on the model's attention layers, never written to
``config.json``)::

    longctx_plugins.attention.configure(model, backend="flex")

For compatibility they are also read, in this order, from ``config.<name>_backend`` /
``config.<name>_flex_kernel_options`` / ``config.anchor_flex_expand_kv`` and the environment variables
``LONGCTX_<NAME>_BACKEND`` / ``LONGCTX_DENSE_LSE_KERNELS``; those are validated once per forward pass, when the
attention plan is built, never per layer.

* ``backend``: ``auto`` (default), ``flex`` (FlexAttention; inference-only on CPU), ``sdpa`` (the exact dense path)
  or, for ``anchor`` only, ``flash`` (flash-attn-4 varlen; CUDA).
* ``flex_kernel_options``: FlexAttention kernel options (``{}`` = torch's defaults; None = a tuned Hopper forward
  configuration where one was measured).
* ``flex_expand_kv``: copy KV heads per query head before FlexAttention (None = when gradients are on).
* ``dense_lse_kernels``: the fused kernels the position methods' grouped passes may use, in order of preference
  (``cudnn``, ``flash``; empty = FlexAttention only), and, opt-in (measured slower than the default), ``tiles``:
  neighbour windows and Dual Chunk Attention's chunk relations as causal-kernel calls over chunks, ``window``: the
  same on flash attention's local window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BACKENDS = {"anchor": ("auto", "flex", "sdpa", "flash")}
POSITIONAL_BACKENDS = ("auto", "flex", "sdpa")
DENSE_LSE_KERNELS = ("cudnn", "flash")  # the default
KNOWN_LSE_KERNELS = (*DENSE_LSE_KERNELS, "tiles", "window")
_ATTR = "_longctx_attention_options"  # module attribute (modules are not serialised; configs are)


@dataclass(frozen=True)
class AttentionOptions:
    backend: str = "auto"
    flex_kernel_options: tuple | None = None  # sorted items of the dict
    flex_expand_kv: bool | None = None
    dense_lse_kernels: tuple[str, ...] = DENSE_LSE_KERNELS

    def kernel_options(self) -> dict | None:
        return None if self.flex_kernel_options is None else dict(self.flex_kernel_options)


def backends_for(name: str) -> tuple[str, ...]:
    return BACKENDS.get(name, POSITIONAL_BACKENDS)


def make_options(
    name: str,
    backend: str = "auto",
    flex_kernel_options: dict | None = None,
    flex_expand_kv: bool | None = None,
    dense_lse_kernels=DENSE_LSE_KERNELS,
) -> AttentionOptions:
    """Validated :class:`AttentionOptions` for attention ``name`` (ValueError naming the bad value)."""
    allowed = backends_for(name)
    if backend not in allowed:
        raise ValueError(f"{name} backend must be one of {allowed}, got {backend!r}.")
    if flex_kernel_options is not None and not isinstance(flex_kernel_options, dict):
        raise ValueError(f"flex_kernel_options must be a dict (or None), got {type(flex_kernel_options).__name__}.")
    if flex_expand_kv not in (None, True, False):
        raise ValueError(f"flex_expand_kv must be True, False or None, got {flex_expand_kv!r}.")
    if isinstance(dense_lse_kernels, str):
        dense_lse_kernels = tuple(k.strip() for k in dense_lse_kernels.split(",") if k.strip() not in ("", "none"))
    unknown = [k for k in dense_lse_kernels if k not in KNOWN_LSE_KERNELS]
    if unknown:
        raise ValueError(f"unknown dense lse kernel(s) {unknown}; choose from {KNOWN_LSE_KERNELS} or 'none'.")
    if {"tiles", "window"} & set(dense_lse_kernels) and not set(DENSE_LSE_KERNELS) & set(dense_lse_kernels):
        raise ValueError(
            f"dense_lse_kernels={tuple(dense_lse_kernels)}: 'tiles' and 'window' run beside a causal kernel; add "
            "'cudnn' and/or 'flash', e.g. ('cudnn', 'flash', 'tiles')."
        )
    items = None if flex_kernel_options is None else tuple(sorted(flex_kernel_options.items()))
    return AttentionOptions(backend, items, flex_expand_kv, tuple(dense_lse_kernels))


def configure(model, name: str | None = None, **options) -> None:
    """Set the plugin attention options of ``model`` (all plugin attentions, or only ``name``), validated now."""
    from ..positions.rope_methods import ROPE_METHODS

    names = [name] if name else ["anchor", *ROPE_METHODS]
    made = {
        n: make_options(
            n, **{k: v for k, v in options.items() if not (k == "backend" and v == "flash" and n != "anchor")}
        )
        for n in names
    }
    for module in model.modules():
        current = dict(getattr(module, _ATTR, {}))
        current.update(made)
        setattr(module, _ATTR, current)


def configured_options(module, name: str) -> AttentionOptions | None:
    """The options :func:`configure` set on ``module`` for attention ``name``, else None."""
    return getattr(module, _ATTR, {}).get(name)


def options_for(module, name: str) -> AttentionOptions:
    """The options of attention ``name`` for ``module``: set by :func:`configure`, else from the config attributes
    and environment variables (see the module docstring). Called once per forward pass."""
    configured = configured_options(module, name)
    if configured is not None:
        return configured
    config = getattr(module, "config", None)
    raw = (
        getattr(config, f"{name}_backend", None) or os.environ.get(f"LONGCTX_{name.upper()}_BACKEND") or "auto",
        getattr(config, f"{name}_flex_kernel_options", None),
        getattr(config, f"{name}_flex_expand_kv", None),
        os.environ.get("LONGCTX_DENSE_LSE_KERNELS", ",".join(DENSE_LSE_KERNELS)),
    )
    try:
        return make_options(name, raw[0], raw[1], raw[2], raw[3])
    except ValueError as exc:
        raise ValueError(
            f"{exc} (read from config.{name}_* / LONGCTX_* settings; prefer "
            "longctx_plugins.attention.configure(model, ...))."
        ) from None
