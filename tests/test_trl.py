"""TRL's SFTTrainer with ``attn_implementation="anchor"`` on CPU, tiny Llama, real TRL: (a) with
``AnchorPackingCollator`` as the data collator; (b) with TRL's own packing (``packing=True``, padding-free): anchor
reads the document boundaries TRL passes, and the packed forward equals each document run alone."""

from __future__ import annotations

import pytest
import torch
import transformers

trl = pytest.importorskip("trl", reason="install longctx-plugins[dev] (TRL) for the TRL tests")
from datasets import Dataset  # noqa: E402

from longctx_plugins import AnchorPackingCollator  # noqa: E402
from longctx_plugins.embedding.loading import default_model_path  # noqa: E402
from longctx_plugins.longembed.synthetic import sotu_sentences  # noqa: E402

TEXTS = [" ".join(sotu_sentences()[i * 3 : i * 3 + 2 + i % 3]) for i in range(12)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trl_llama")
    tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _config(tmp_path, **kw):
    return trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        **kw,
    )


def test_sft_trainer_with_the_anchor_packing_collator(checkpoint, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="anchor")
    data = Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in TEXTS]})
    trainer = trl.SFTTrainer(
        model=model,
        args=_config(tmp_path, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}),
        train_dataset=data,
        processing_class=tok,
        data_collator=AnchorPackingCollator(tok, max_length=256),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["cu_seq_lens_q"].numel() > 3 and batch["input_ids"][0, 0] == tok.bos_token_id
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_trl_padding_free_packing_equals_each_document_alone(checkpoint, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="anchor").eval()
    alone = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    trainer = trl.SFTTrainer(
        model=model,
        args=_config(tmp_path, packing=True, max_length=256),
        train_dataset=Dataset.from_dict({"text": TEXTS}),
        processing_class=tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    cu = batch["cu_seq_lens_q"].tolist()
    assert len(cu) > 3, "TRL packed more than one document into the row"
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**inputs).logits[0]
        for a, b in zip(cu[:-1], cu[1:]):
            ref = alone(input_ids=batch["input_ids"][:, a:b]).logits[0]
            torch.testing.assert_close(packed[a:b], ref, atol=2e-5, rtol=0)
        # the same boundaries read from the restarting position_ids alone (no cu_seq_lens)
        without = {k: v for k, v in inputs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
        torch.testing.assert_close(model(**without).logits[0], packed, atol=2e-5, rtol=0)
    model.train()
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
