"""Sequence parallelism (DeepSpeed Ulysses) with anchor attention: 2 and 4 CPU processes (gloo) == one process.

Runs tests/sp_equality.py under torch's own launcher; DeepSpeed's UlyssesSPAttentionHF wraps "anchor" and its
UlyssesSPDataLoaderAdapter shards the collator's batch. The same script runs on GPUs
(benchmarks/results/multi_gpu.json).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from longctx_plugins import AnchorPackingCollator

from .conftest import tiny_model

pytest.importorskip("deepspeed", reason="sequence parallelism needs deepspeed: pip install -e '.[sp]'")

SCRIPT = os.path.join(os.path.dirname(__file__), "sp_equality.py")
TOL = {"float32": 1e-5}  # dtype -> max |difference| (the gathered computation is the same arithmetic)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case", ["llama", "llama_mqa"])
def test_ulysses_processes_equal_one(tmp_path, case, world):
    """N gloo processes (KV heads 2 and 1: fewer than the SP degree 4 in both cases) == one process."""
    out = tmp_path / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(world),
        "--master_port",
        str(_free_port()),
        SCRIPT,
        "--out",
        str(out),
        "--case",
        case,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == world and r["documents"] > 4
    assert r["boundary_effect_on_logits"] > 1e-2  # the anchor rule changes this batch
    tol = TOL[r["dtype"]]
    assert r["max_abs_diff_logits"] <= tol
    assert r["max_abs_diff_grads"] <= tol * max(1.0, r["max_abs_grad"])
    assert r["abs_diff_loss"] <= tol


def test_collator_sequence_parallel_form():
    docs = [{"input_ids": list(range(3, 3 + n))} for n in (5, 7, 4)]
    plain = AnchorPackingCollator(anchor_token_id=1, max_length=32)(docs)
    sp = AnchorPackingCollator(anchor_token_id=1, max_length=32, sequence_parallel_size=4)(docs)
    assert sp["input_ids"].shape[1] % 4 == 0 and sp["input_ids"].shape[1] >= plain["input_ids"].shape[1]
    assert isinstance(sp["cu_seq_lens_q"], tuple) and all(isinstance(x, int) for x in sp["cu_seq_lens_q"])
    # same documents and boundaries; only a trailing padding segment is added
    n = len(plain["cu_seq_lens_q"])
    assert list(sp["cu_seq_lens_q"][:n]) == plain["cu_seq_lens_q"].tolist()
    assert sp["cu_seq_lens_q"][-1] == sp["input_ids"].numel()
    with pytest.raises(ValueError, match="multiple of it"):
        AnchorPackingCollator(anchor_token_id=1, max_length=30, padding="max_length", sequence_parallel_size=4)
    with pytest.raises(ValueError, match="sequence_parallel_size"):
        AnchorPackingCollator(anchor_token_id=1, max_length=30, sequence_parallel_size=0)


def test_tuple_boundaries_equal_tensor_boundaries():
    model = tiny_model("llama", attn_implementation="anchor")
    docs = [{"input_ids": list(range(3, 3 + n))} for n in (9, 6, 11)]
    batch = AnchorPackingCollator(anchor_token_id=1, max_length=40)(docs)
    as_tuple = {
        **batch,
        "cu_seq_lens_q": tuple(batch["cu_seq_lens_q"].tolist()),
        "cu_seq_lens_k": tuple(batch["cu_seq_lens_k"].tolist()),
    }
    with torch.no_grad():
        a = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        b = model(**{k: v for k, v in as_tuple.items() if k != "labels"}).logits
    assert torch.equal(a, b)
    other = {**as_tuple, "cu_seq_lens_k": as_tuple["cu_seq_lens_k"][:-2] + as_tuple["cu_seq_lens_k"][-1:]}
    with pytest.raises(ValueError, match="differ"), torch.no_grad():
        model(**{k: v for k, v in other.items() if k != "labels"})


def test_ulysses_parallelism_config():
    from longctx_plugins.training import ulysses_parallelism_config

    pc = ulysses_parallelism_config(2)
    assert pc.sp_size == 2 and pc.sp_backend == "deepspeed" and pc.sp_enabled
    assert pc.sp_handler.sp_attn_implementation == "anchor" and pc.sp_handler.sp_seq_length_is_variable
    fixed = ulysses_parallelism_config(4, seq_length=131072)
    assert fixed.sp_handler.sp_seq_length == 131072 and not fixed.sp_handler.sp_seq_length_is_variable
    with pytest.raises(ValueError, match="sp_size"):
        ulysses_parallelism_config(0)


@pytest.mark.slow
def test_trainer_end_to_end_two_processes(tmp_path):
    """examples/train_anchor_sp.py: Trainer + DeepSpeed + Ulysses over 2 CPU processes; its first-step loss (same first
    window, same initial weights) equals the one-process run of the same script."""
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "train_anchor_sp.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    common = [script, "--model", "tiny", "--max-length", "512", "--steps", "2", "--output", str(tmp_path / "o")]
    runs = {}
    for name, launcher in {
        "sp2": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())],
        "single": [],
    }.items():
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [sys.executable, *launcher, *common, "--metrics-out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = json.loads(out.read_text())
    assert runs["sp2"]["sp_size"] == 2 and runs["sp2"]["engine"].startswith("DeepSpeed")
    assert runs["single"]["sp_size"] == 1 and runs["single"]["engine"].startswith("Trainer without DeepSpeed")
    assert len(runs["sp2"]["losses"]) == 2
    assert abs(runs["sp2"]["losses"][0] - runs["single"]["losses"][0]) < 1e-3


def test_dropped_mask_is_rebuilt_and_refused_on_sliding_layers():
    """A wrapper that drops the mask (DeepSpeed Ulysses) gets the anchor rule from the boundaries alone; on a
    sliding-window layer that would silently lose the window, so it raises."""
    import types

    from longctx_plugins.attention.anchor import anchor_attention_forward

    class Layer(torch.nn.Module):
        is_causal, sliding_window = True, None
        config = types.SimpleNamespace(anchor_backend="sdpa")

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    cu = (0, 1, 7, 16)
    out, _ = anchor_attention_forward(Layer(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    # reference: token 10 (document 2) sees the anchor and tokens 7..10 only
    keys = torch.tensor([0, 7, 8, 9, 10])
    w = torch.softmax(torch.einsum("hd,hkd->hk", q[0, :, 10], k[0, :, keys]) / 8**0.5, dim=-1)
    torch.testing.assert_close(out[0, 10], torch.einsum("hk,hkd->hd", w, v[0, :, keys]), atol=1e-5, rtol=1e-5)
    layer = Layer()
    layer.sliding_window = 4
    with pytest.raises(NotImplementedError, match="sliding"):
        anchor_attention_forward(layer, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
