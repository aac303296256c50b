"""The benchmarks' own model set-up does what their tables claim (checked on tiny models, CPU)."""

import torch

from benchmarks.bench_gemma_quality import extended

from .conftest import tiny_model


def _global_inv_freq(model, seq_len):
    """The full-attention layers' inverse frequencies after a forward over ``seq_len`` tokens."""
    with torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, seq_len)))
    rotary = model.model.rotary_emb
    return getattr(rotary, "full_attention_inv_freq", getattr(rotary, "inv_freq", None)).clone()


def test_transformers_dynamic_is_active_past_the_window():
    base = tiny_model("gemma3", max_position_embeddings=64)
    trained = _global_inv_freq(base, 32)
    model = extended(base, "dynamic", 256)
    assert torch.equal(_global_inv_freq(model, 32), trained)  # inside the window: unchanged
    assert not torch.allclose(_global_inv_freq(model, 200), trained)  # beyond it: rescaled
