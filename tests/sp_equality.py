"""Ulysses sequence parallelism (DeepSpeed) with anchor attention == one process, logits / loss / gradients.

Launch with one process per rank (CPU gloo or one GPU each)::

    python -m torch.distributed.run --nproc_per_node 2 tests/sp_equality.py --out result.json [--device cuda]

Every rank first runs the whole packed batch without sequence parallelism (the reference), then registers DeepSpeed's
``UlyssesSPAttentionHF`` around "anchor", takes its shard from DeepSpeed's ``UlyssesSPDataLoaderAdapter`` and runs
forward + backward on it: loss = summed token loss / all valid tokens (what ``Trainer`` does under SP), gradients summed
over ranks. Rank 0 writes the largest differences to ``--out``. ``tests/test_sequence_parallel.py`` runs it on CPU.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers

import longctx_plugins  # noqa: F401  (registers "anchor")
from longctx_plugins import AnchorPackingCollator

CONFIGS = {  # tiny Llama-shaped models: MHA-like GQA (kv heads divisible by the SP degree) and kv heads < SP degree
    "llama": dict(num_key_value_heads=2),
    "llama_mqa": dict(num_key_value_heads=1),
}


def build(case: str, device, dtype):
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **CONFIGS[case],
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="anchor", dtype=dtype)
    return model.to(device).train()


def batch_for(world: int, seq: int):
    g = torch.Generator().manual_seed(1)
    docs = [
        {"input_ids": torch.randint(3, 128, (int(n),), generator=g).tolist()}
        for n in torch.randint(5, seq // 2, (12,), generator=g)
    ]
    collator = AnchorPackingCollator(anchor_token_id=1, pad_token_id=0, max_length=seq, sequence_parallel_size=world)
    return collator(docs)


def token_loss_sum(logits, shift_labels):
    return F.cross_entropy(logits.float().flatten(0, 1), shift_labels.flatten(), ignore_index=-100, reduction="sum")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--case", default="llama", choices=sorted(CONFIGS))
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device(args.device, int(os.environ["LOCAL_RANK"])) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = getattr(torch, args.dtype)
    import deepspeed
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF, UlyssesSPDataLoaderAdapter

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    batch = batch_for(world, args.seq)

    # reference: the whole window in one process
    model = build(args.case, device, dtype)
    full = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "labels"}
    ref_logits = model(**full).logits
    with torch.no_grad():  # control: the boundaries matter for this batch (else equality below would prove little)
        plain = model(**{k: v for k, v in full.items() if not k.startswith(("cu_seq_lens", "max_length"))}).logits
    real_all = batch["attention_mask"].to(device).bool()
    boundary_effect = float((plain.detach().float() - ref_logits.detach().float()).abs().max(-1).values[real_all].max())
    shift = F.pad(batch["labels"], (0, 1), value=-100)[:, 1:].to(device)
    ref_loss = token_loss_sum(ref_logits, shift) / (shift != -100).sum()
    ref_loss.backward()
    ref_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    # sequence parallel: DeepSpeed's wrapper around "anchor", DeepSpeed's sequence-sharding loader
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model,
        core_attn_implementation="anchor",
        sequence_parallel_size=world,
        micro_batch_size=batch["input_ids"].shape[0],
    )
    loader = UlyssesSPDataLoaderAdapter(
        [batch],
        sp_rank=mpu.get_sequence_parallel_rank(),
        sp_group=mpu.get_sequence_parallel_group(),
        sp_world_size=world,
        device=device,
    )
    shard = next(iter(loader))
    shard_labels = shard.pop("shift_labels").to(device)
    shard = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in shard.items()}
    logits = model(**shard).logits
    valid = (shard_labels != -100).sum()
    dist.all_reduce(valid)
    loss = token_loss_sum(logits, shard_labels) / valid
    loss.backward()
    loss_total = loss.detach().clone()
    dist.all_reduce(loss_total)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)

    chunk = logits.shape[1]
    mine = ref_logits[:, rank * chunk : (rank + 1) * chunk]
    # real tokens only: padding rows differ by design (the SP wrapper drops the padding mask; padding attends
    # inside its own trailing segment instead of to nothing) and carry no loss
    real = batch["attention_mask"][:, rank * chunk : (rank + 1) * chunk].to(device).bool()
    diffs = torch.stack(
        [
            (logits.float() - mine.float()).abs().max(-1).values[real].max(),
            max((grads[n].float() - ref_grads[n].float()).abs().max() for n in grads),
            (loss_total.float() - ref_loss.float()).abs(),
        ]
    ).to(device)
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    if rank == 0:
        result = {
            "world_size": world,
            "case": args.case,
            "device": str(device),
            "dtype": args.dtype,
            "seq_len": batch["input_ids"].shape[1],
            "batch": batch["input_ids"].shape[0],
            "documents": len(batch["cu_seq_lens_q"]) - 1,
            "loss": float(ref_loss.detach()),
            "max_abs_diff_logits": float(diffs[0]),
            "max_abs_diff_grads": float(diffs[1]),
            "abs_diff_loss": float(diffs[2]),
            "boundary_effect_on_logits": boundary_effect,
            "max_abs_grad": max(float(g.abs().max()) for g in ref_grads.values()),
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
