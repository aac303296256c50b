import pytest
import torch

from longctx_plugins import AnchorPackingCollator
from longctx_plugins.attention.anchor import anchor_attention_forward
from longctx_plugins.ops.masks import doc_ids_from_cu_seqlens

from .conftest import DECODERS, TINY, outputs, tiny_model
from .references import eager_attention

# dtype -> (atol, rtol) for the attention function against the fp32 reference
TOL = {torch.float32: (2e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}


def python_anchor_mask(doc, causal, pad=None):
    """Independent loop-based anchor mask (True = attend): own document causally, plus the row's anchor."""
    B, T = doc.shape
    m = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b in range(B):
        for q in range(T):
            for k in range(T):
                ok = doc[b, q] == doc[b, k] or doc[b, k] == 0
                if causal:
                    ok = ok and k <= q
                if pad is not None:
                    ok = ok and bool(pad[b, k])
                m[b, 0, q, k] = ok
    return m


class Mod(torch.nn.Module):
    def __init__(self, causal):
        super().__init__()
        self.is_causal = causal

        class C:
            anchor_backend = "sdpa"

        self.config = C()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (3, 3, 24)])
def test_function_matches_reference_with_gradients(causal, dtype, heads, kv_heads, dim):
    torch.manual_seed(0)
    B, T = 2, 37  # odd length, batch > 1, padding at the end of row 1
    cu = torch.tensor([0, 1, 9, 20, 37, 38, 50, 66, 74], dtype=torch.int32)
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, 29:] = False
    doc = doc_ids_from_cu_seqlens(cu, B, T)
    q = torch.randn(B, heads, T, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(B, kv_heads, T, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(B, kv_heads, T, dim, dtype=dtype, requires_grad=True)
    base = torch.ones(B, 1, T, T, dtype=torch.bool)
    if causal:
        base = base.tril()
    base = base & pad[:, None, None, :]
    out, _ = anchor_attention_forward(Mod(causal), q, k, v, base, scaling=dim**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    ref_mask = python_anchor_mask(doc, causal, pad)
    ref = eager_attention(q, k, v, ref_mask, dim**-0.5).transpose(1, 2)
    atol, rtol = TOL[dtype]
    valid = pad[:, :, None, None]
    torch.testing.assert_close(out.float() * valid, ref * valid, atol=atol, rtol=rtol)
    g = torch.randn_like(ref) * valid
    grads = torch.autograd.grad((out.float() * g).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), atol=atol * 10, rtol=rtol * 10)


def packed_batch(max_length=48, lengths=(7, 12, 5, 20, 9, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [{"input_ids": torch.randint(3, 100, (n,), generator=g).tolist()} for n in lengths]
    return AnchorPackingCollator(None, max_length=max_length, anchor_token_id=1, pad_token_id=0)(docs)


def per_document(batch):
    T = batch["input_ids"].shape[1]
    cu = batch["cu_seq_lens_q"].tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        r, s0, e0 = s // T, s % T, s % T + (e - s)
        if s0 == 0 or not bool(batch["attention_mask"][r, s0]):
            continue  # the anchor segment, or padding
        yield r, s0, e0


def compare_packed_to_documents(model, batch, atol=1e-5):
    model.set_attn_implementation("anchor")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = outputs(model, **inputs, use_cache=False) if hasattr(model, "lm_head") else outputs(model, **inputs)
        encoder = not hasattr(model, "lm_head")
        # encoders: the shared anchor sees only itself (its row of the rule), so the per-document reference run
        # gets an explicit 4D mask with that row; decoders: plain causal eager
        model.set_attn_implementation("sdpa" if encoder else "eager")
        n = 0
        for r, s, e in per_document(batch):
            ids = torch.cat([batch["input_ids"][r, :1], batch["input_ids"][r, s:e]])[None]
            pos = torch.tensor([[0] + list(range(s, e))])
            kw = dict(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids))
            if encoder:
                mask = torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool)
                mask[0, 0, 0, 1:] = False
                kw["attention_mask"] = mask
            else:
                kw["use_cache"] = False
            ref = outputs(model, **kw)
            torch.testing.assert_close(packed[r, s:e], ref[0, 1:], atol=atol, rtol=1e-5)
            torch.testing.assert_close(packed[r, 0], ref[0, 0], atol=atol, rtol=1e-5)  # the anchor itself
            n += 1
    model.set_attn_implementation("anchor")
    assert n >= 4


@pytest.mark.parametrize("model_type", DECODERS)
def test_packed_decoder_equals_per_document_runs(model_type):
    over = {"sliding_window": 64} if model_type == "gemma3" else {}
    compare_packed_to_documents(tiny_model(model_type, **over), packed_batch())


@pytest.mark.parametrize("model_type", ["bert", "modernbert", "nomic_bert"])
def test_packed_encoder_equals_per_document_runs(model_type):
    over = {"local_attention": 128} if model_type == "modernbert" else {}
    compare_packed_to_documents(tiny_model(model_type, **over), packed_batch())


@pytest.mark.parametrize("model_type", list(TINY))
def test_unpacked_batch_equals_sdpa(model_type):
    model = tiny_model(model_type)
    ids = torch.randint(3, 100, (3, 21))
    ids[:, 0] = 1
    am = torch.ones_like(ids)
    am[1, 15:] = 0  # right padding
    if TINY[model_type][3]:
        am[2, :4] = 0  # left padding (decoders)
    with torch.no_grad():
        model.set_attn_implementation("anchor")
        a = outputs(model, input_ids=ids, attention_mask=am)
        model.set_attn_implementation("sdpa")
        s = outputs(model, input_ids=ids, attention_mask=am)
    keep = am.bool()
    torch.testing.assert_close(a[keep], s[keep], atol=1e-5, rtol=1e-5)


def test_gemma3_sliding_layers_compose_window_and_anchor():
    model = tiny_model("gemma3", sliding_window=6)
    batch = packed_batch(max_length=32, lengths=(9, 14, 5))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    seen = []
    from longctx_plugins.attention.kernels import sdpa

    original = sdpa.attention

    def spy(q, k, v, mask, *a, **kw):
        seen.append(mask[0, 0].clone())
        return original(q, k, v, mask, *a, **kw)

    sdpa.attention = spy
    try:
        model.set_attn_implementation("anchor")
        with torch.no_grad():
            outputs(model, **inputs, use_cache=False)
    finally:
        sdpa.attention = original
    doc = doc_ids_from_cu_seqlens(batch["cu_seq_lens_q"], 1, batch["input_ids"].shape[1])
    full = python_anchor_mask(doc, True, batch["attention_mask"].bool())[0, 0]
    idx = torch.arange(full.shape[0])
    window = (idx[:, None] - idx[None, :]) < 6
    assert torch.equal(seen[0], full & window)  # layer 0: sliding
    assert torch.equal(seen[1], full)  # layer 1: global


def test_packing_with_kv_cache_is_rejected():
    model = tiny_model("llama", attn_implementation="anchor")
    batch = packed_batch()
    inputs = {k: v for k, v in batch.items() if k not in ("labels",)}
    with pytest.raises(ValueError, match="KV cache|use_cache=False"):
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            nxt = torch.ones(inputs["input_ids"].shape[0], 1, dtype=torch.long)
            model(
                input_ids=nxt,
                past_key_values=out.past_key_values,
                cu_seq_lens_q=inputs["cu_seq_lens_q"],
                cu_seq_lens_k=inputs["cu_seq_lens_k"],
            )


def test_model_that_bypasses_registry_raises():
    from transformers import MPNetConfig, MPNetModel

    from longctx_plugins.attention.support import UnsupportedModelError, check_attention

    model = MPNetModel(
        MPNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    )
    with pytest.raises(UnsupportedModelError, match="never calls transformers' AttentionInterface"):
        check_attention(model, "anchor")
    check_attention(tiny_model("llama"), "anchor")  # fine


def test_trainer_few_steps_lower_the_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("llama", attn_implementation="anchor")
    g = torch.Generator().manual_seed(0)
    pattern = torch.arange(3, 40)
    docs = [
        {"input_ids": pattern[torch.randint(0, 20, (1,), generator=g).item() :][: int(n)].tolist()}
        for n in torch.randint(8, 30, (64,), generator=g)
    ]
    coll = AnchorPackingCollator(None, max_length=64, anchor_token_id=1, pad_token_id=0)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=30,
        learning_rate=3e-3,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(docs)

        def __getitem__(self, i):
            return docs[i]

    trainer = Trainer(model=model, args=args, train_dataset=DS(), data_collator=coll)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] * 0.7, losses
