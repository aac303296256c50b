"""Version checks, in one place, with the reason beside each.

Checked once, on import of :mod:`longctx_plugins`.
"""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger("longctx_plugins")

# transformers >= 5.17: `rope_parameters` (not `rope_scaling`), `AttentionMaskInterface.register`,
# `masking_utils.and_masks`, the `(config, device, seq_len, layer_type)` RoPE init signature and the
# `_validate_<type>_rope_parameters` validator lookup all exist from 5.x on; 5.17 is the oldest we test
# (it is the GPU image's version). < 6: the next major may rename these hooks again.
MIN_TRANSFORMERS = (5, 17)
MAX_TRANSFORMERS_EXCLUSIVE = (6, 0)
# torch >= 2.5: `torch.nn.attention.flex_attention` with `create_block_mask(_compile=True)` and
# `return_lse`, and `scaled_dot_product_attention(enable_gqa=...)`.
MIN_TORCH = (2, 5)


def _parse(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def _installed(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_versions(torch_version: str | None = None, transformers_version: str | None = None) -> None:
    """Raise ImportError for unusable torch/transformers; warn above the tested range. Reads the installed versions
    from package metadata (importing torch or transformers here would make ``import longctx_plugins`` slow)."""
    torch_version = torch_version or _installed("torch")
    if torch_version is None:
        raise ImportError(
            "longctx_plugins needs PyTorch >= 2.5. Install the CPU build with `pip install torch==2.13.0` "
            "(or a CUDA build for GPUs)."
        )
    if _parse(torch_version) < MIN_TORCH:
        raise ImportError(
            f"longctx_plugins needs torch >= {'.'.join(map(str, MIN_TORCH))} (FlexAttention, SDPA enable_gqa); "
            f"found {torch_version}. Upgrade with `pip install -U torch`."
        )
    transformers_version = transformers_version or _installed("transformers")
    if transformers_version is None:
        raise ImportError("longctx_plugins needs transformers>=5.17,<6: `pip install 'transformers>=5.17,<6'`.")
    tv = _parse(transformers_version)
    if tv < MIN_TRANSFORMERS:
        raise ImportError(
            f"longctx_plugins needs transformers >= 5.17 (it registers through AttentionInterface, "
            f"AttentionMaskInterface and `rope_parameters`, which older releases lack or spell differently); "
            f"found {transformers_version}. Upgrade with `pip install 'transformers>=5.17,<6'`."
        )
    if tv >= MAX_TRANSFORMERS_EXCLUSIVE:
        warnings.warn(
            f"longctx_plugins is tested with transformers >=5.17,<6; found {transformers_version}. "
            "Registration hooks may have changed; please report problems.",
            RuntimeWarning,
            stacklevel=3,
        )


# DeepSpeed >= 0.18.2: `UlyssesSPAttentionHF` / `UlyssesSPDataLoaderAdapter` for HF models (the minimum accelerate
# itself checks for ALST/Ulysses); accelerate >= 1.10: `ParallelismConfig(sp_backend="deepspeed")`.
MIN_DEEPSPEED_SP = (0, 18)
# accelerate 1.10-1.15 (`DeepSpeedSequenceParallelConfig.__post_init__`) accepts only flash_attention_2/3, sdpa or a
# hub flash kernel as `sp_attn_implementation`, although DeepSpeed's `register_with_transformers` accepts any name in
# transformers' attention registry. `training.ulysses_parallelism_config` therefore sets the name after validation.


def require_deepspeed_sp() -> None:
    """Raise ImportError naming the fix when DeepSpeed Ulysses / accelerate's ParallelismConfig are missing."""
    try:
        import deepspeed
        from accelerate.parallelism_config import ParallelismConfig  # noqa: F401
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "Sequence parallelism needs DeepSpeed >= 0.18.2 (Ulysses for HF models) and accelerate >= 1.10: "
            "`pip install -e '.[sp]'` (or `pip install 'deepspeed>=0.18.2' 'accelerate>=1.10'`)."
        ) from exc
    if _parse(deepspeed.__version__) < MIN_DEEPSPEED_SP:
        raise ImportError(f"Sequence parallelism needs deepspeed >= 0.18.2; found {deepspeed.__version__}.")


# torch >= 2.8: FlexAttention kernel options may carry a "fwd_" / "bwd_" prefix (FlexKernelOptions); the tuned Hopper
# forward configuration (attention/kernels/flex.SM90_FWD_OPTIONS) relies on it to leave the backward on torch's default.
# Older releases hand unknown keys to the Triton template, so the tuned default is not applied there.
MIN_TORCH_FLEX_PREFIXED_OPTIONS = (2, 8)


def flex_prefixed_options() -> bool:
    import torch

    return _parse(torch.__version__) >= MIN_TORCH_FLEX_PREFIXED_OPTIONS


def nested_rope_keys(config, rope_parameters: dict) -> list[str]:
    """The layer-type keys ``rope_parameters`` is nested under (Gemma3: ``full_attention``/``sliding_attention``), or
    ``[]`` for flat parameters. transformers >= 5.2x has ``config.nested_rope_parameter_keys``; 5.17 (the GPU image)
    lacks it and its ``validate_rope`` treats the dict as nested when a key is one of ``config.layer_types``, so that
    is the fallback (without it a flat update of a nested dict breaks validation)."""
    if hasattr(config, "nested_rope_parameter_keys"):
        return list(config.nested_rope_parameter_keys(rope_parameters))
    labels = getattr(config, "_rope_type_labels", None) or getattr(config, "layer_types", None) or ()
    return [key for key in rope_parameters if key in labels]


# transformers standardises a legacy ``rope_scaling={"type": ...}`` set after a config is built (what
# ``from_pretrained(path, rope_scaling=...)`` does) from 5.22 on; before, its rotary modules read ``rope_type`` from
# the raw dict and fail with ``KeyError: 'rope_type'`` for every RoPE type, built-in ones included.
MIN_TRANSFORMERS_LEGACY_ROPE_KWARG = (5, 22)


def legacy_rope_scaling_kwarg() -> bool:
    """Whether ``from_pretrained(path, rope_scaling={"type": ...})`` works with the installed transformers."""
    return _parse(_installed("transformers") or "0") >= MIN_TRANSFORMERS_LEGACY_ROPE_KWARG
