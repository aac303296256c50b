import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from longctx_plugins import LongContextEmbedder, extend
from longctx_plugins.embedder import default_model_path
from longctx_plugins.positions.ape import attach, position_ids_for

METHODS = ["none", "auto", "pi", "gp", "rp", "pcw"]


@pytest.fixture(scope="module")
def st_reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_path(), device="cpu")


@pytest.fixture(scope="module")
def short_texts():
    return [
        "A cat sat on the mat.",
        "The Senate adjourned after a long debate about tariffs and the navy. " * 4,
        "Numbers 12345 and symbols #$%",
        "x",
    ]


@pytest.mark.parametrize("method", METHODS)
def test_short_inputs_equal_sentence_transformers(method, st_reference, short_texts):
    emb = LongContextEmbedder("default", method=method, target_length=4096)
    ours = emb.encode(short_texts)
    ref = st_reference.encode(short_texts, normalize_embeddings=True)
    assert ours.dtype == np.float32 and ours.shape == (4, 384)
    np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=0)


def _long_pair():
    tok = AutoTokenizer.from_pretrained(default_model_path())
    base = " ".join(["The grass is green and the sky is blue."] * 80)
    assert len(tok(base)["input_ids"]) > 600
    return base + " The treasure is buried under the old oak.", base + " Nothing at all happened on that day."


@pytest.mark.parametrize("method", ["pi", "gp", "rp", "pcw"])
def test_long_input_is_really_read(method):
    a, b = _long_pair()
    ext = LongContextEmbedder("default", method=method, target_length=2048).encode([a, b])
    assert float(ext[0] @ ext[1]) < 0.9999
    with pytest.warns(UserWarning, match="truncated"):
        trunc = LongContextEmbedder("default", method="none").encode([a, b])
    np.testing.assert_allclose(trunc[0], trunc[1], atol=1e-6)


@pytest.mark.parametrize("method", ["pi", "gp", "rp", "pcw"])
def test_mixed_batch_equals_one_by_one(method):
    """Per-sequence positions (GP's factor too) do not depend on what else is in the padded batch."""
    a, b = _long_pair()
    texts = [a, "short one", b[:1500], "medium text " * 40]
    emb = LongContextEmbedder("default", method=method, target_length=2048, batch_size=4)
    batch = emb.encode(texts)
    single = np.stack([emb.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=2e-5)


def test_pcw_is_mean_of_window_embeddings():
    a, _ = _long_pair()
    emb = LongContextEmbedder("default", method="pcw", target_length=4096)
    tok = emb.tokenizer
    ids = tok(a)["input_ids"]
    body = ids[1:-1]
    w = 510
    chunks = [body[i : i + w] for i in range(0, len(body) - w, w)] + [body[-w:]]
    plain = LongContextEmbedder("default", method="none")
    win = plain.embed_token_ids([[ids[0]] + c + [ids[-1]] for c in chunks], normalize=False)
    mean = win.mean(0)
    mean /= np.linalg.norm(mean)
    np.testing.assert_allclose(emb.encode([a])[0], mean, atol=1e-5)


def test_pi_extended_model_saves_and_reloads(tmp_path):
    a, _ = _long_pair()
    path = default_model_path()
    model = extend(AutoModel.from_pretrained(path).eval(), "pi", target_length=2048)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    again = attach(AutoModel.from_pretrained(tmp_path).eval())
    assert again.config.longctx_ape["method"] == "pi" and again.embeddings.position_embeddings.num_embeddings == 2048
    tok = AutoTokenizer.from_pretrained(path)
    for text in (a, "short text"):
        ids = tok([text], return_tensors="pt")
        with torch.no_grad():
            torch.testing.assert_close(again(**ids).last_hidden_state, model(**ids).last_hidden_state)
    # the embedder recognises an already-extended checkpoint
    e1 = LongContextEmbedder(str(tmp_path), pooling="mean").encode([a])
    e2 = LongContextEmbedder("default", method="pi", target_length=2048).encode([a])
    np.testing.assert_allclose(e1, e2, atol=1e-5)


@pytest.mark.parametrize("model_type", ["xlm-roberta", "mpnet"])
def test_padding_offset_models(model_type):
    """XLM-R and MPNet start real positions at pad_id + 1 (MPNet adds a relative bias that needs no change)."""
    import transformers

    config_cls, model_cls = {
        "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel"),
        "mpnet": ("MPNetConfig", "MPNetModel"),
    }[model_type]
    cfg = getattr(transformers, config_cls)(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    base = getattr(transformers, model_cls)(cfg).eval()
    ext = getattr(transformers, model_cls)(cfg).eval()
    ext.load_state_dict(base.state_dict())
    extend(ext, "pi", target_length=256)
    assert ext.config.longctx_ape["original_max_position_embeddings"] == 64  # 66 - (pad + 1)
    assert ext.embeddings.position_embeddings.num_embeddings == 2 + 64 * 4
    short = torch.tensor([[0, 5, 6, 7, 2, 1, 1]])  # right-padded with pad id 1
    pos = position_ids_for(ext.config, short)
    assert pos.tolist() == [[2, 6, 10, 14, 18, 1, 1]]  # real rows at offset 2, scaled by s=4; padding at padding_idx
    with torch.no_grad():
        torch.testing.assert_close(ext(short).last_hidden_state[:, :5], base(short).last_hidden_state[:, :5])
        long = torch.randint(3, 100, (1, 200))
        assert torch.isfinite(ext(long).last_hidden_state).all()


def test_unknown_position_rules_are_refused():
    """DeBERTa-v2 (relative positions, no RoPE parameters): nothing the plugin knows how to extend."""
    from transformers import DebertaV2Config, DebertaV2Model

    model = DebertaV2Model(
        DebertaV2Config(
            vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    with pytest.raises(ValueError, match=r"model_type='deberta-v2' is not one longctx_plugins knows how to extend"):
        extend(model, "pi", target_length=2048)


def test_rope_models_extend():
    from .conftest import inv_freqs, outputs, tiny_model

    for method in ("pi", "ntk"):
        model = tiny_model("llama", max_position_embeddings=64)
        before = inv_freqs(model)["model.rotary_emb.inv_freq"].clone()
        extend(model, method, target_length=256)
        after = inv_freqs(model)["model.rotary_emb.inv_freq"]
        assert model.config.rope_parameters["rope_type"] == method and model.config.rope_parameters["factor"] == 4.0
        assert (
            (after < before).any() and after[0] == before[0] if method == "ntk" else torch.allclose(after, before / 4)
        )
    model = tiny_model("gemma3", max_position_embeddings=64)
    base = tiny_model("gemma3", max_position_embeddings=64)
    extend(model, "auto", target_length=256)
    assert model.config._attn_implementation == "self_extend"
    p = model.config.rope_parameters["full_attention"]
    assert p["rope_type"] == "self_extend" and (64 - p["window"]) * p["group_size"] + p["window"] >= 256
    assert model.config.rope_parameters["sliding_attention"]["rope_type"] == "default"
    ids = torch.randint(3, 100, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(outputs(model, input_ids=ids), outputs(base, input_ids=ids))


def test_bad_inputs():
    emb = LongContextEmbedder("default", method="none")
    assert emb.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        emb.encode("a bare string")
    with pytest.raises(TypeError, match="list of strings"):
        emb.encode(None)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        emb.encode(["ok", 3])
    with pytest.raises(ValueError, match="valid methods"):
        LongContextEmbedder("default", method="yarn")
    with pytest.raises(ValueError, match="RoPE"):
        LongContextEmbedder("default", method="ntk")
    with pytest.raises(ValueError, match="RoPE"):
        LongContextEmbedder("default", method="self_extend")
    with pytest.raises(ValueError, match="pooling"):
        LongContextEmbedder("default", pooling="median")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        extend(AutoModel.from_pretrained(default_model_path()), "pi", target_length=300)
    assert any("not beyond the trained window" in str(x.message) for x in w)


def test_truncation_warns_once_or_raises():
    a, _ = _long_pair()
    emb = LongContextEmbedder("default", method="pi", target_length=600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb.encode([a, a])
        emb.encode([a])
    assert sum("truncated" in str(w.message) for w in caught) == 1
    for strict in (
        LongContextEmbedder("default", method="pi", target_length=600, overlength="error"),
        LongContextEmbedder("default", method="pi", target_length=600, truncate=False),
    ):
        with pytest.raises(ValueError, match="target_length=600"):
            strict.encode([a])


def test_wraps_an_existing_sentence_transformer(st_reference, short_texts):
    emb = LongContextEmbedder(st_reference, method="pi", target_length=2048)
    np.testing.assert_allclose(
        emb.encode(short_texts), st_reference.encode(short_texts, normalize_embeddings=True), atol=2e-6
    )


def test_unreadable_pooling_needs_explicit_pooling(tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(default_model_path(), folder)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_weightedmean_tokens": True})
    )
    with pytest.raises(ValueError, match="pass pooling="):
        LongContextEmbedder(str(folder))
    assert LongContextEmbedder(str(folder), pooling="cls").pooling == "cls"


@pytest.mark.parametrize("method", ["pi", "pcw"])
def test_encode_over_several_devices_equals_one_device(method):
    """Batches spread over model replicas (threads, token-balanced) give the single-device result exactly."""
    a, b = _long_pair()
    texts = [a, "short one", b, "medium text " * 40, b[:900], "x", a[:2000]]
    emb = LongContextEmbedder("default", method=method, target_length=2048, batch_size=2)
    one = emb.encode(texts)
    many = emb.encode(texts, devices=["cpu", "cpu:0"])  # "cpu:0" gets its own replica
    assert torch.device("cpu:0") in emb.reader.replicas
    np.testing.assert_allclose(many, one, atol=1e-6)
