"""Tiny random configs built in code (no download) and shared helpers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import transformers

import longctx_plugins  # noqa: F401  (registers)

VOCAB = 128
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB)

# model_type -> (config class, model class, extra config kwargs, causal?)
TINY = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2), True),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2), True),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16), True),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=None), True),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(num_key_value_heads=2, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
        True,
    ),
    "modernbert": (
        "ModernBertConfig",
        "ModernBertModel",
        dict(num_hidden_layers=3, local_attention=8, cls_token_id=1, sep_token_id=2),
        False,
    ),
    "nomic_bert": ("NomicBertConfig", "NomicBertModel", dict(), False),
    "bert": ("BertConfig", "BertModel", dict(max_position_embeddings=64), False),
}
DECODERS = [k for k, v in TINY.items() if v[3]]
ROPE_MODELS = [k for k in TINY if k != "bert"]


def tiny_config(model_type: str, **overrides):
    cfg_cls, _, extra, _ = TINY[model_type]
    kwargs = {**_BASE, **SPECIAL, **extra, **overrides}
    return getattr(transformers, cfg_cls)(**kwargs)


def tiny_model(model_type: str, seed: int = 0, attn_implementation: str | None = None, **overrides):
    _, model_cls, _, _ = TINY[model_type]
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def outputs(model, **inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def inv_freqs(model) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers() if n.endswith("inv_freq") and "original" not in n}


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def interpreter_results(test_file: str, timeout: int) -> dict:
    """Run ``test_file --worker`` in a subprocess under Triton's interpreter (``TRITON_INTERPRET=1`` set before
    Triton is first imported; nothing leaks into this process) and return its JSON lines by ``name``."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(test_file), "--worker"],
        capture_output=True,
        text=True,
        env=dict(os.environ, TRITON_INTERPRET="1"),
        cwd=root,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["name"]: r for r in map(json.loads, filter(None, proc.stdout.splitlines()))}


def pytest_report_header(config):
    try:
        import mteb

        return f"retrieval metrics are checked against mteb {mteb.__version__} (tests/test_mteb_agreement.py)"
    except ImportError:
        return "mteb is not installed: tests/test_mteb_agreement.py cannot run (pip install -e '.[dev]')"
