"""Position-only tuning of all-MiniLM-L6-v2 to 4096 tokens (LongEmbed's E5-Base-4k recipe), with the HF Trainer.

Only the new (interpolated) rows of the PI-extended position table train; the original rows and every other weight
stay exactly as they were, so inputs of up to 512 tokens embed exactly as before. Training pairs come from long
public-domain text (bundled State of the Union addresses): a sentence from somewhere in a 1-4k-token passage is the
query, the passage is its positive, the other passages of the batch are negatives (InfoNCE). Passkey retrieval is
measured with the bundled evaluator before and after.

    python examples/position_tuning.py --steps 200 --output tuned_minilm_4k
"""
import argparse
import gzip
import json
import os
import random

import torch
from transformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments

import longctx_plugins
from longctx_plugins import LongContextEmbedder, extend
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed import evaluate, get_task
from longctx_plugins.training.position_tuning import prepare_position_tuning


def pairs(tokenizer, n, max_tokens, seed=0):
    path = os.path.join(os.path.dirname(longctx_plugins.__file__), "longembed", "data", "sotu.jsonl.gz")
    with gzip.open(path, "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        words = rng.choice(texts).split()
        length = rng.randint(600, int(max_tokens * 0.7))
        start = rng.randrange(max(1, len(words) - length))
        passage = " ".join(words[start:start + length])
        sentences = [s for s in passage.split(". ") if len(s.split()) > 10]
        if sentences:
            out.append({"query": rng.choice(sentences), "passage": passage})
    return out


class PairCollator:
    def __init__(self, tokenizer, max_tokens):
        self.tok, self.max_tokens = tokenizer, max_tokens

    def __call__(self, rows):
        q = self.tok([r["query"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        p = self.tok([r["passage"] for r in rows], padding=True, truncation=True, max_length=self.max_tokens,
                     return_tensors="pt")
        return {"q_ids": q["input_ids"], "q_mask": q["attention_mask"], "p_ids": p["input_ids"], "p_mask": p["attention_mask"]}


class InfoNCETrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        def embed(ids, mask):
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask[..., None].to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

        q, p = embed(inputs["q_ids"], inputs["q_mask"]), embed(inputs["p_ids"], inputs["p_mask"])
        logits = q @ p.T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(q), device=q.device))
        return (loss, logits) if return_outputs else loss


def passkey(model_dir, lengths, seed=1):
    task = get_task("passkey", lengths=lengths, seed=seed, n_queries=10, n_docs=20)
    res = evaluate(LongContextEmbedder(model_dir, pooling="mean"), [task], progress=False)["passkey"]
    return {s: round(100 * v["main_score"], 1) for s, v in res["splits"].items()} | {"avg": round(100 * res["main_score"], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--target-length", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--output", default="tuned_minilm_4k")
    ap.add_argument("--eval-lengths", default="1024,2048,4096")
    args = ap.parse_args()
    lengths = [int(x) for x in args.eval_lengths.split(",")]
    tok = AutoTokenizer.from_pretrained(default_model_path())
    model = extend(AutoModel.from_pretrained(default_model_path()), "pi", args.target_length)
    before_dir = os.path.join(args.output, "before")
    model.save_pretrained(before_dir)
    tok.save_pretrained(before_dir)
    tuning = prepare_position_tuning(model)
    targs = TrainingArguments(output_dir=args.output, per_device_train_batch_size=args.batch, max_steps=args.steps,
                              learning_rate=args.lr, warmup_steps=min(100, args.steps // 10), weight_decay=0.0,
                              logging_steps=10, save_strategy="no", report_to=[], remove_unused_columns=False)
    trainer = InfoNCETrainer(model=model, args=targs, train_dataset=pairs(tok, args.steps * args.batch, args.target_length),
                             data_collator=PairCollator(tok, args.target_length), callbacks=[tuning.callback()])
    trainer.train()
    after_dir = os.path.join(args.output, "after")
    model.save_pretrained(after_dir)
    tok.save_pretrained(after_dir)
    result = {"steps": args.steps, "target_length": args.target_length, "passkey_before": passkey(before_dir, lengths),
              "passkey_after": passkey(after_dir, lengths)}
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.output, "position_tuning.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
