"""Position-only tuning of all-MiniLM-L6-v2 to 4096 tokens (LongEmbed's E5-Base-4k recipe), with the HF Trainer.

Only the new (interpolated) rows of the PI-extended position table train; the original rows and every other weight
stay exactly as they were, so inputs of up to 512 tokens embed exactly as before. Training pairs come from long
public-domain text (bundled State of the Union addresses): a sentence from somewhere in a 1-4k-token passage is the
query, the passage is its positive, the other passages of the batch are negatives (InfoNCE). Passkey retrieval is
measured with the bundled evaluator before and after.

    python examples/position_tuning.py --steps 200 --output tuned_minilm_4k
    python examples/position_tuning.py --output tuned_minilm_4k --eval-only --eval-tasks passkey,needle \
        --eval-queries 50 --eval-docs 100 --eval-lengths 256,1024,2048      # re-evaluate before/after

    python examples/position_tuning.py --steps 3000 --max-minutes 5.5 --batch 16 --target-length 4096 --deep-query \
        --hard-negatives --bf16 --eval-tasks passkey,needle --eval-queries 50 --eval-docs 100 \
        --eval-lengths 1024,2048,4096 --output RUN                        # the H200 run

Three CPU runs at 2048 tokens changed nothing measurable, the H200 run above (846 steps) lowered passkey 52.7 ->
44.7 and a CPU --pose run 52.7 -> 50.0 (both better only at 4096): benchmarks/results/position_tuning/.
"""

import argparse
import json
import os
import time

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from longctx_plugins import LongContextEmbedder, extend
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed import evaluate, get_task
from longctx_plugins.training.position_tuning import prepare_position_tuning
from longctx_plugins.training.position_tuning_data import pairs, pose_positions, pose_shifts


class PairCollator:
    def __init__(self, tokenizer, max_tokens, pose=False, seed=0):
        self.tok, self.max_tokens, self.pose = tokenizer, max_tokens, pose
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows):
        q = self.tok([r["query"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        p = self.tok(
            [r["passage"] for r in rows],
            padding=True,
            truncation=True,
            max_length=512 if self.pose else self.max_tokens,
            return_tensors="pt",
        )
        out = {
            "q_ids": q["input_ids"],
            "q_mask": q["attention_mask"],
            "p_ids": p["input_ids"],
            "p_mask": p["attention_mask"],
        }
        if "negative" in rows[0]:
            n = self.tok(
                [r["negative"] for r in rows],
                padding=True,
                truncation=True,
                max_length=512 if self.pose else self.max_tokens,
                return_tensors="pt",
            )
            out.update(n_ids=n["input_ids"], n_mask=n["attention_mask"])
        if self.pose:  # a passage and its hard negative share the shift (only the replaced sentence differs)
            shift = pose_shifts(p["attention_mask"], self.max_tokens, self.generator)
            out["p_pos"] = pose_positions(p["attention_mask"], shift, self.max_tokens)
            if "negative" in rows[0]:
                out["n_pos"] = pose_positions(n["attention_mask"], shift, self.max_tokens)
        return out


class TimeLimit(TrainerCallback):
    """Ends training once ``minutes`` have passed (checked after every step)."""

    def __init__(self, minutes):
        self.deadline = time.monotonic() + 60 * minutes

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() > self.deadline:
            control.should_training_stop = True
        return control


class InfoNCETrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        def embed(ids, mask, pos=None):
            h = model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
            m = mask[..., None].to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

        q = embed(inputs["q_ids"], inputs["q_mask"])
        p = embed(inputs["p_ids"], inputs["p_mask"], inputs.get("p_pos"))
        if "n_ids" in inputs:  # candidates: every positive, then every hard negative
            p = torch.cat([p, embed(inputs["n_ids"], inputs["n_mask"], inputs.get("n_pos"))])
        logits = q @ p.T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(q), device=q.device))
        return (loss, logits) if return_outputs else loss


def scores(model_dir, lengths, tasks=("passkey",), n_queries=10, n_docs=20, seed=1):
    ts = [get_task(t, lengths=lengths, seed=seed, n_queries=n_queries, n_docs=n_docs) for t in tasks]
    res = evaluate(LongContextEmbedder(model_dir, pooling="mean"), ts, progress=False)
    return {
        t: {s: round(100 * v["main_score"], 1) for s, v in r["splits"].items()}
        | {"avg": round(100 * r["main_score"], 1)}
        for t, r in res.items()
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--target-length", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--output", default="tuned_minilm_4k")
    ap.add_argument("--deep-query", action="store_true", help="query sentences from beyond the first 512 tokens")
    ap.add_argument(
        "--hard-negatives", action="store_true", help="add the passage with the query sentence replaced as a negative"
    )
    ap.add_argument("--eval-lengths", default="1024,2048,4096")
    ap.add_argument("--eval-tasks", default="passkey", help="comma-separated: passkey,needle")
    ap.add_argument("--eval-queries", type=int, default=10)
    ap.add_argument("--eval-docs", type=int, default=20)
    ap.add_argument("--eval-only", action="store_true", help="evaluate OUTPUT/before and OUTPUT/after again")
    ap.add_argument(
        "--max-minutes", type=float, default=None, help="stop training after this long (steps done are recorded)"
    )
    ap.add_argument(
        "--pose",
        action="store_true",
        help="PoSE-style: passages of <= 512 tokens whose positions are "
        "shifted to random rows of the extended table (LongEmbed's E5-Base-4k recipe)",
    )
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in training (GPU); weights stay float32")
    args = ap.parse_args()
    lengths = [int(x) for x in args.eval_lengths.split(",")]
    evaluate_kw = {"tasks": args.eval_tasks.split(","), "n_queries": args.eval_queries, "n_docs": args.eval_docs}
    if args.eval_only:
        result = {name: scores(os.path.join(args.output, name), lengths, **evaluate_kw) for name in ("before", "after")}
        print(json.dumps(result, indent=2))
        return
    tok = AutoTokenizer.from_pretrained(default_model_path())
    model = extend(AutoModel.from_pretrained(default_model_path(), dtype=torch.float32), "pi", args.target_length)
    before_dir = os.path.join(args.output, "before")
    model.save_pretrained(before_dir)
    tok.save_pretrained(before_dir)
    tuning = prepare_position_tuning(model)
    targs = TrainingArguments(
        output_dir=args.output,
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=args.lr,
        warmup_steps=min(100, args.steps // 10),
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        bf16=args.bf16,
    )
    data = pairs(
        tok,
        args.steps * args.batch,
        args.target_length,
        deep_query=args.deep_query,
        hard_negatives=args.hard_negatives,
        pose=args.pose,
    )
    trainer = InfoNCETrainer(
        model=model,
        args=targs,
        train_dataset=data,
        data_collator=PairCollator(tok, args.target_length, pose=args.pose),
        callbacks=[tuning.callback()] + ([TimeLimit(args.max_minutes)] if args.max_minutes else []),
    )
    start = time.monotonic()
    trainer.train()
    train_seconds = round(time.monotonic() - start, 1)
    after_dir = os.path.join(args.output, "after")
    model.save_pretrained(after_dir)
    tok.save_pretrained(after_dir)
    result = {
        "steps": args.steps,
        "steps_done": trainer.state.global_step,
        "train_seconds": train_seconds,
        "last_logged_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "mean_train_loss": trainer.state.log_history[-1].get("train_loss"),
        "target_length": args.target_length,
        "batch": args.batch,
        "lr": args.lr,
        "deep_query": args.deep_query,
        "hard_negatives": args.hard_negatives,
        "pose": args.pose,
        "bf16": args.bf16,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "before": scores(before_dir, lengths, **evaluate_kw),
        "after": scores(after_dir, lengths, **evaluate_kw),
    }
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.output, "position_tuning.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
