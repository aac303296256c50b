import numpy as np
import pytest
import torch
from transformers import AutoModel

from longctx_plugins import LongContextEmbedder, diagnostics, extend
from longctx_plugins.embedder import default_model_path
from longctx_plugins.training.position_tuning import prepare_position_tuning
from longctx_plugins.training.position_tuning_data import pairs, pose_positions, pose_shifts

from .conftest import outputs, tiny_model


def test_position_only_tuning_keeps_original_rows_and_short_inputs():
    model = extend(AutoModel.from_pretrained(default_model_path()), "pi", target_length=1024)
    before = model.embeddings.position_embeddings.weight.detach().clone()
    tuning = prepare_position_tuning(model)
    opt = tuning.attach(torch.optim.AdamW(tuning.parameters(), lr=1e-2, weight_decay=0.1))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["embeddings.position_embeddings.weight"]
    ids = torch.randint(1000, 2000, (2, 900))
    for _ in range(3):
        loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.embeddings.position_embeddings.weight.detach()
    orig = torch.arange(512) * 2
    new = orig + 1
    assert torch.equal(after[orig], before[orig])  # exactly unchanged, weight decay included
    assert not torch.equal(after[new], before[new])
    # short inputs: identical to the unextended model
    emb = LongContextEmbedder("default", method="none")
    tuned = LongContextEmbedder("default", method="pi", target_length=1024)
    tuned.model.embeddings.position_embeddings.weight.data.copy_(after)
    texts = ["short text one", "another short text " * 10]
    np.testing.assert_allclose(tuned.encode(texts), emb.encode(texts), atol=2e-6)


def test_bf16_diagnostics_on_a_tiny_llama():
    model = tiny_model("llama", max_position_embeddings=4096)
    ids = torch.randint(3, 100, (2, 128))
    res = diagnostics.run(model, ids, deltas=(0, 16, 64), reference_delta=16, lengths=(32, 128))
    for name in ("bfloat16", "float32"):
        assert res[name]["D"][16] == 0.0  # same shift: no difference at all
    assert res["float32"]["D"][64] < 1e-4  # RoPE's relative property holds in fp32
    assert res["bfloat16"]["D"][64] > 50 * res["float32"]["D"][64]  # and breaks in bf16
    assert res["bfloat16"]["logit_diff"][128] > 50 * res["float32"]["logit_diff"][128]
    # the probe computes the real attention and is removed afterwards
    from transformers import AttentionInterface

    assert "longctx_probe" not in AttentionInterface._global_mapping
    rec = diagnostics._Recorder()
    with torch.no_grad():
        plain = outputs(model, input_ids=ids)
        with diagnostics._probe(model, rec):
            probed = outputs(model, input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(probed, plain, atol=1e-5, rtol=1e-5)
    assert len(rec.probs) == model.config.num_hidden_layers


def test_diagnostics_plot(tmp_path):
    res = {
        "bfloat16": {"D": {0: 1e-3, 8: 2e-3}, "logit_diff": {32: 1e-4, 64: 2e-4}},
        "float32": {"D": {0: 1e-7, 8: 2e-7}, "logit_diff": {32: 1e-8, 64: 1e-8}},
    }
    path = diagnostics.plot(res, str(tmp_path / "d.png"))
    assert (tmp_path / "d.png").stat().st_size > 1000 and path.endswith("d.png")


def test_position_tuning_hard_negatives_differ_only_in_the_query_sentence():
    rows = pairs(None, 6, 2048, seed=3, deep_query=True, hard_negatives=True)
    assert len(rows) == 6
    for r in rows:
        assert r["query"] in r["passage"] and r["query"] not in r["negative"]
        head = r["passage"].index(r["query"])
        assert r["negative"][:head] == r["passage"][:head]  # same text up to the replaced sentence
        assert len(r["passage"][:head].split()) >= 380  # deep: past the first ~512 tokens


def test_position_tuning_pose_positions():
    mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8])
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        shift = pose_shifts(mask, 16, gen)
        pos = pose_positions(mask, shift, 16)
        assert pos[:, 0].tolist() == [0, 0]  # [CLS] keeps row 0
        for row, n in ((0, 6), (1, 8)):
            real = pos[row, 1:n]
            assert torch.equal(real, torch.arange(1, n) + shift[row]) and int(real.max()) < 16
        assert pos[0, 6:].tolist() == [6, 7]  # padding keeps its arange
        seen.update(shift.tolist())
    assert seen == set(range(0, 11))  # every shift 0 .. 16 - 6 occurs (row 1: 0 .. 8)
    # a longer hard negative with the same shift is clamped to fit the table
    pos = pose_positions(torch.ones(1, 12, dtype=torch.long), torch.tensor([10]), 16)
    assert int(pos.max()) == 15
    rows = pairs(None, 4, 4096, seed=1, deep_query=True, hard_negatives=True, pose=True)
    assert all(150 <= len(r["passage"].split()) <= 350 and r["query"] in r["passage"] for r in rows)


@pytest.mark.slow
def test_position_tuning_example_runs_as_a_script(tmp_path):
    """examples/position_tuning.py end to end: two training steps, passkey before and after, original rows kept."""
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "position_tuning.py")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            script,
            "--steps",
            "2",
            "--batch",
            "2",
            "--target-length",
            "1024",
            "--eval-lengths",
            "256,1024",
            "--eval-queries",
            "2",
            "--eval-docs",
            "4",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "position_tuning.json").read_text())
    assert result["steps_done"] == 2 and result["target_length"] == 1024
    for when in ("before", "after"):
        scores = result[when]["passkey"]
        assert set(scores) >= {"test_256", "test_1024", "avg"} and all(0 <= v <= 100 for v in scores.values())
    # inputs inside the trained window use only the original rows, which tuning keeps: same score at 256
    assert result["before"]["passkey"]["test_256"] == result["after"]["passkey"]["test_256"]
