"""Fine-tune a causal LM on packed long public-domain text with AnchorAttention and the HF Trainer.

    python examples/train_anchor.py                      # tiny random Llama on CPU (a runnable smoke run)
    python examples/train_anchor.py --model PATH --max-length 32768 --bf16 --gradient-checkpointing   # real run

Documents are State of the Union addresses (public domain, bundled). Packing: AnchorPackingCollator puts one anchor
(BOS, else EOS) at the start of each window, keeps positions continuous and passes document boundaries as
cu_seq_lens_*; the "anchor" attention keeps documents apart. On CUDA the attention runs on FlexAttention.
"""

import argparse

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

import longctx_plugins  # noqa: F401  (registers attn_implementation="anchor")
from longctx_plugins import AnchorPackingCollator
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed.synthetic import sotu_documents


def documents():
    return [d["text"] for d in sotu_documents()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-docs", type=int, default=8, help="documents per collator call (packed into windows)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--output", default="anchor_out")
    args = ap.parse_args()

    if args.model == "tiny":  # random tiny Llama with the bundled MiniLM word-piece vocabulary
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        cfg = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=args.max_length,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="anchor")
        anchor = tokenizer.cls_token_id  # this vocabulary has no BOS: [CLS] plays the anchor
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="anchor")
        anchor = None  # BOS, else EOS
    texts = documents()
    features = [{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
    collator = AnchorPackingCollator(
        tokenizer, max_length=args.max_length, anchor_token_id=anchor, pad_to_multiple_of=128
    )
    targs = TrainingArguments(
        output_dir=args.output,
        per_device_train_batch_size=args.batch_docs,
        max_steps=args.steps,
        learning_rate=1e-3 if args.model == "tiny" else 2e-5,
        logging_steps=min(5, args.steps),
        save_strategy="no",
        report_to=[],
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        remove_unused_columns=False,
    )  # keep input_ids for the collator
    trainer = Trainer(model=model, args=targs, train_dataset=features, data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"loss: first logged {losses[0]:.3f} -> last logged {losses[-1]:.3f}")


if __name__ == "__main__":
    main()
