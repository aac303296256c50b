"""Train a Llama-shaped model on packed 128k windows across N GPUs: AnchorAttention + DeepSpeed Ulysses + Trainer.

    accelerate launch --config_file examples/accelerate_sp.yaml examples/train_anchor_sp.py --model llama-1b \
        --max-length 131072 --steps 20                                   # 2 GPUs (set num_processes for more)
    torchrun --nproc_per_node 8 examples/train_anchor_sp.py --model PATH --max-length 131072
    python examples/train_anchor_sp.py --model tiny --max-length 1024    # world size 1: no sequence parallelism

Every window of ``--max-length`` tokens is split along the sequence over the ``--sp-size`` ranks (default: all of
them); DeepSpeed's Ulysses all-to-all gives each rank the whole window for heads/N heads around every attention call,
where the anchor rule applies unchanged. Weights, gradients and optimizer state go through DeepSpeed ZeRO
(``examples/ds_config_sp.json``, stage 1; use stage 3 for models that do not fit one GPU). Documents: the bundled State
of the Union addresses (public domain), pre-packed into windows, one window per step.

``--model`` is a local checkpoint, ``llama-1b`` (random init, TinyLlama-1.1B shape: 22 layers, hidden 2048, 32 heads,
4 KV heads) or ``tiny``. ``--metrics-out FILE`` writes step times and tokens/s per GPU
(benchmarks/results/multi_gpu.json).
"""

import argparse
import json
import os
import time

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import longctx_plugins  # noqa: F401  (registers attn_implementation="anchor")
from longctx_plugins import AnchorPackingCollator
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed.synthetic import sotu_documents

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {
    "tiny": dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
}


def documents():
    return [d["text"] for d in sotu_documents()]


class Windows(torch.utils.data.Dataset):
    """Documents pre-packed into windows (lists of documents); the collator turns one item into one window."""

    def __init__(self, collator, docs):
        self.windows = collator.pack([{"input_ids": d} for d in docs])

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return {"documents": self.windows[i]}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.times.append(time.perf_counter() - self._t)


def build_model(name, tokenizer, max_length, dtype):
    if name in SHAPES:  # random init, the bundled word-piece vocabulary ([CLS] plays the anchor: no BOS)
        cfg = LlamaConfig(
            vocab_size=32000 if name == "llama-1b" else tokenizer.vocab_size,
            max_position_embeddings=max_length,
            rope_theta=10000.0,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **SHAPES[name],
        )
        torch.manual_seed(0)
        return LlamaForCausalLM._from_config(cfg, attn_implementation="anchor", dtype=dtype), tokenizer.cls_token_id
    return AutoModelForCausalLM.from_pretrained(name, attn_implementation="anchor", dtype=dtype), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tokenizer", default=None, help="default: the model's, or the bundled MiniLM for tiny/llama-1b")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sp-size", type=int, default=None, help="ranks per window (default: all ranks)")
    ap.add_argument(
        "--deepspeed",
        default=None,
        help="DeepSpeed config, or 'none'; default examples/ds_config_sp.json under a launcher (torchrun / "
        "accelerate launch, also with one process), none for a plain `python` run",
    )
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--metrics-out", default=None)
    ap.add_argument("--output", default="anchor_sp_out")
    args = ap.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    sp = args.sp_size or world
    bf16 = torch.cuda.is_available()
    tok_path = args.tokenizer or (default_model_path() if args.model in SHAPES else args.model)
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    model, anchor = build_model(args.model, tokenizer, args.max_length, torch.float32)
    collator = AnchorPackingCollator(
        tokenizer, max_length=args.max_length, anchor_token_id=anchor, padding="max_length", sequence_parallel_size=sp
    )
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in documents()]
    data = Windows(collator, docs)
    extra = {}
    if sp > 1:
        from longctx_plugins.training import ulysses_parallelism_config

        extra["parallelism_config"] = ulysses_parallelism_config(sp)
    launched = "WORLD_SIZE" in os.environ
    ds = args.deepspeed or (os.path.join(HERE, "ds_config_sp.json") if launched else "none")
    if ds != "none":
        extra["deepspeed"] = ds
    elif sp > 1:
        raise SystemExit("sequence parallelism runs on DeepSpeed: drop --deepspeed none")
    targs = TrainingArguments(
        output_dir=args.output,
        per_device_train_batch_size=1,
        max_steps=args.steps,
        learning_rate=2e-5,
        lr_scheduler_type="constant",
        weight_decay=0.1,
        adam_beta2=0.95,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=bf16,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        seed=0,
        **extra,
    )
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=data,
        callbacks=[timer],
        data_collator=lambda items: collator([{"input_ids": d} for it in items for d in it["documents"]]),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steady = timer.times[2:] or timer.times  # the first steps compile kernels
    step_s = sorted(steady)[len(steady) // 2]
    tokens_per_step = args.max_length * world // sp  # one window per SP group per step
    result = {
        "model": args.model,
        "seq_len": args.max_length,
        "world_size": world,
        "sp_size": sp,
        "engine": ("DeepSpeed ZeRO-1 (" + ("bf16 weights" if bf16 else "fp32") + ")")
        if ds != "none"
        else "Trainer without DeepSpeed (" + ("fp32 weights, bf16 autocast" if bf16 else "fp32") + ")",
        "params": sum(p.numel() for p in model.parameters()),
        "steps": len(timer.times),
        "median_step_s": round(step_s, 4),
        "tokens_per_s_per_gpu": round(tokens_per_step / step_s / world),
        "losses": [round(x, 4) for x in losses],
        "windows_in_data": len(data),
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None),
    }
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
        if args.metrics_out:
            with open(args.metrics_out, "w") as f:
                json.dump(result, f, indent=1)
    if torch.distributed.is_initialized():
        # orderly shutdown: a process group left alive at interpreter exit can abort it ("terminate called without an
        # active exception", SIGABRT, seen once in CI after training had finished)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
