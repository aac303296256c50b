"""The BF16 RoPE diagnostics of "When Precision Meets Position" (Wang et al., 2024), for any causal LM.

* :func:`attention_shift_difference` — metric D: with every position shifted by a constant, RoPE attention must
  not change; ``D(X, d1, d2) = sum_{l,h} sum_i n_i sum_{j<=i} |A_ij(X, d1) - A_ij(X, d2)|`` with the causal
  normalisation ``n = (1/L, 1/(L-1), ..., 1)``.
* :func:`first_token_logit_difference` — ``(1/T) sum_{l,h} sum_i |s_{i,0}(d1) - s_{i,0}(d2)|`` on the
  pre-softmax attention logits to the first token, versus sequence length.
* :func:`run` sweeps both in bf16 and fp32 and :func:`plot` draws them.

Attention probabilities and logits are read by a probe attention function registered for the duration of the
measurement under a private name and removed afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch

from . import registry
from .ops.dense import repeat_kv

logger = logging.getLogger(__name__)
_PROBE = "longctx_probe"


class _Recorder:
    def __init__(self):
        self.probs, self.first_logits = [], []


@contextlib.contextmanager
def _probe(model, recorder: _Recorder):
    from transformers.masking_utils import sdpa_mask

    def probe(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        k = repeat_kv(key, query.shape[1] // key.shape[1])
        v = repeat_kv(value, query.shape[1] // value.shape[1])
        logits = torch.matmul(query, k.transpose(-1, -2)) * scaling  # in the model's dtype, as a kernel would
        softcap = getattr(module.config, "attn_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        recorder.first_logits.append(logits[..., 0].float())
        q_len, k_len = logits.shape[-2:]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=logits.device).tril(k_len - q_len)
        mask = causal if attention_mask is None else (attention_mask[..., :k_len].bool() & causal)
        probs = torch.softmax(logits.float().masked_fill(~mask, float("-inf")), dim=-1)
        recorder.probs.append(probs)
        out = torch.matmul(probs.to(v.dtype), v)
        return out.transpose(1, 2).contiguous(), None

    previous = model.config._attn_implementation
    with registry.temporary_attention(_PROBE, probe, sdpa_mask):
        try:
            model.set_attn_implementation(_PROBE)
            yield
        finally:
            model.set_attn_implementation(previous)


@torch.no_grad()
def _record(model, input_ids, shift: int) -> _Recorder:
    """Attention of every layer at positions ``shift, shift + 1, ...``. Runs the base model only: the measures read
    attention, and a language-model head (Gemma-3's has 262k rows) would be most of the work."""
    rec = _Recorder()
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None] + shift
    with _probe(model, rec):
        getattr(model, "base_model", model)(
            input_ids=input_ids, position_ids=pos, attention_mask=torch.ones_like(input_ids), use_cache=False
        )
    return rec


def _shift_difference(a: _Recorder, b: _Recorder, length: int) -> float:
    n = 1.0 / torch.arange(length, 0, -1, dtype=torch.float32, device=a.probs[0].device)  # (1/L, ..., 1)
    total = 0.0
    for pa, pb in zip(a.probs, b.probs):
        per_row = (pa - pb).abs().sum(-1)  # [B, H, L]; entries j > i are 0 in both
        total += float((per_row * n).sum(dim=(1, 2)).mean())
    return total


def _logit_difference(a: _Recorder, b: _Recorder, length: int) -> float:
    return sum(float((la - lb).abs().sum(dim=(1, 2)).mean()) for la, lb in zip(a.first_logits, b.first_logits)) / length


def attention_shift_difference(model, input_ids: torch.Tensor, delta1: int, delta2: int) -> float:
    """Metric D for one batch of sequences (averaged over the batch)."""
    return _shift_difference(_record(model, input_ids, delta1), _record(model, input_ids, delta2), input_ids.shape[1])


def first_token_logit_difference(model, input_ids: torch.Tensor, delta1: int = 0, delta2: int = 16) -> float:
    return _logit_difference(_record(model, input_ids, delta1), _record(model, input_ids, delta2), input_ids.shape[1])


def run(
    model,
    input_ids: torch.Tensor,
    deltas=(0, 2, 4, 8, 32, 64, 128),
    reference_delta: int = 16,
    lengths=(64, 128, 256, 512),
    dtypes=(torch.bfloat16, torch.float32),
    show_progress_bar: bool | None = None,
) -> dict:
    """Both measures in each dtype: ``{dtype: {"D": {delta: value}, "logit_diff": {length: value}}}``.

    One forward pass per shift and length (the reference shift's once per dtype and length), with a progress bar
    (``show_progress_bar``; None: when writing to a terminal)."""
    from tqdm.auto import tqdm

    from .attention.support import check_attention

    check_attention(model, "anchor")  # the probe needs a model that honours the attention registry
    full = input_ids.shape[1]
    lengths = [L for L in lengths if L <= full]
    runs = {
        (full, reference_delta),
        *((full, d) for d in deltas),
        *((L, shift) for L in lengths for shift in (0, reference_delta)),
    }
    work = len(dtypes) * len(runs)
    bar = tqdm(
        total=work,
        desc="bf16 diagnostic",
        unit="forward",
        disable=None if show_progress_bar is None else not show_progress_bar,
    )

    def record(m, ids, shift, cache):
        if (ids.shape[1], shift) not in cache:
            cache[(ids.shape[1], shift)] = _record(m, ids, shift)
            bar.update(1)
        return cache[(ids.shape[1], shift)]

    out = {}
    try:
        for dtype in dtypes:
            m = copy.deepcopy(model).to(dtype).eval()
            cache: dict = {}
            ref = record(m, input_ids, reference_delta, cache)
            out[str(dtype).replace("torch.", "")] = {
                "D": {d: _shift_difference(record(m, input_ids, d, cache), ref, full) for d in deltas},
                "logit_diff": {
                    L: _logit_difference(
                        record(m, input_ids[:, :L], 0, cache), record(m, input_ids[:, :L], reference_delta, cache), L
                    )
                    for L in lengths
                },
            }
            del m, cache
    finally:
        bar.close()
    return out


def plot(results: dict, path: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))

    def positive(d):  # log axes: exact zeros (a shift equal to the reference) are left out
        pts = [(float(k), v) for k, v in d.items() if v > 0]
        return [p[0] for p in pts], [p[1] for p in pts]

    for name, r in results.items():
        a1.plot(*positive(r["D"]), marker="o", label=name)
        a2.plot(*positive(r["logit_diff"]), marker="o", label=name)
    a1.set_xlabel("position shift Δ1 (Δ2 fixed)")
    a1.set_ylabel("attention difference D")
    a1.set_yscale("log")
    a2.set_xlabel("sequence length")
    a2.set_ylabel("first-token logit difference")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
