"""Each method written out from its definition, independent of the package's code paths: APE position maps and the
PI table, RoPE rotation distances per query/key pair, and a whole-model reference attention that applies them with
an explicit mask and an eager float32 softmax. Every reference forward passes ``attention_mask`` and
``position_ids`` explicitly, so nothing depends on what transformers infers."""

from __future__ import annotations

import math

import numpy as np
import torch

from tests.references import dca_relative_position, string_relative_position

REFERENCE_ATTENTION = "longctx_contract_reference"


# ------------------------------------------------------------------------------------------------------------- APE
def ape_positions(method: str, n: int, trained: int, target: int) -> list[int]:
    """Position ids of one sequence of ``n`` tokens (LongEmbed's definitions)."""
    s = max(1, math.ceil(target / trained))
    if method == "none":
        return list(range(n))
    if method == "pi":  # interpolated table of trained * s rows; inputs inside the window keep their original rows
        return [p * s for p in range(n)] if n <= trained else list(range(n))
    if method == "gp":
        g = max(1, math.ceil(n / trained))
        return [p // g for p in range(n)]
    if method == "rp":
        return [p % trained for p in range(n)]
    raise ValueError(method)


def pi_table(weight: torch.Tensor, trained: int, s: int) -> torch.Tensor:
    """Row j at original position j / s, linear between neighbouring original rows (the last row repeated)."""
    rows = []
    for j in range(trained * s):
        lo, frac = divmod(j, s)
        hi = min(lo + 1, trained - 1)
        f = 0.0 if lo == trained - 1 else frac / s
        rows.append(weight[lo].double() * (1 - f) + weight[hi].double() * f)
    return torch.stack(rows).to(weight.dtype)


def pcw_windows(ids: list[int], trained: int) -> list[list[int]]:
    """Parallel context windows: [CLS] + L - 2 body tokens + [SEP], consecutive and without overlap; the last window
    ends at the text's end (it overlaps its predecessor rather than running short)."""
    pre, body, suf = ids[:1], ids[1:-1], ids[-1:]
    room = trained - 2
    if len(body) <= room:
        return [ids]
    starts = list(range(0, len(body) - room, room)) + [len(body) - room]
    return [pre + body[a : a + room] + suf for a in starts]


def mean_pool(hidden: torch.Tensor) -> np.ndarray:
    return hidden.mean(0).double().numpy()


def normalized(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------------------------------ RoPE
def default_inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def method_distance(method: str, params: dict, i: int, j: int, causal: bool, longest: int, trained: int) -> float:
    """The rotation distance of query position ``i`` and key position ``j``."""
    if method in ("none", "ntk"):
        return float(i - j)
    if method == "pi":
        return (i - j) / float(params["factor"])
    keep = params.get("keep_trained_window", True)
    if keep and ((causal and i < trained) or (not causal and longest <= trained)):
        return float(i - j)
    if method == "self_extend":
        g, w = params["group_size"], params["window"]
        if abs(i - j) < w:
            return float(i - j)
        if j <= i:
            return float(i // g - j // g + w - w // g)
        return -float(j // g - i // g + w - w // g)
    if method == "dca":
        return float(dca_relative_position(i, j, params["chunk_size"], params["local_window"]))
    if method == "string":
        return float(string_relative_position(i, j, params["shift"], params["local_window"]))
    raise ValueError(method)


def method_inv_freq(method: str, params: dict, dim: int, theta: float) -> torch.Tensor:
    if method == "ntk":
        return default_inv_freq(dim, theta * float(params["factor"]) ** (dim / (dim - 2)))
    return default_inv_freq(dim, theta)


def _unrotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Undo the model's rotation at ``pos`` (x ``[H, T, D]``, rotate-half layout)."""
    ang = pos.double()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos - rot * sin


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention with each pair's logit ``q^T R(d(i, j)) k`` for the method in ``module.config.contract_reference``
    (unrotated q/k from the model's default rotation at the true positions), explicit mask, float32 softmax."""
    spec = module.config.contract_reference
    batch, heads, q_len, dim = query.shape
    causal = bool(getattr(module, "is_causal", True))
    pos = kwargs["position_ids"].expand(batch, -1)
    scaling = dim**-0.5 if scaling is None else scaling
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)
    half = dim // 2
    theta_model = default_inv_freq(dim, spec["theta"])
    theta_method = method_inv_freq(spec["method"], spec["params"], dim, spec["theta"])
    out = torch.zeros(batch, heads, q_len, dim, dtype=torch.float64)
    for b in range(batch):
        p = pos[b]
        q = _unrotate(query[b].double(), p, theta_model)
        k = _unrotate(key[b].double(), p, theta_model)
        qc = torch.complex(q[..., :half], q[..., half:])
        kc = torch.complex(k[..., :half], k[..., half:])
        pl = p.tolist()
        longest = max(pl) + 1
        d = torch.tensor(
            [
                [method_distance(spec["method"], spec["params"], i, j, causal, longest, spec["trained"]) for j in pl]
                for i in pl
            ],
            dtype=torch.float64,
        )
        phase = torch.exp(1j * d[..., None] * theta_method[None, None, :])  # [Q, K, F]
        logits = torch.einsum("hqf,hkf,qkf->hqk", qc, kc.conj(), phase).real * scaling
        allowed = torch.ones(q_len, q_len, dtype=torch.bool)
        if attention_mask is not None:
            m = attention_mask[b, 0]
            allowed = m if m.dtype == torch.bool else m == 0
        elif causal:
            allowed = torch.tril(allowed)
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)
        out[b] = probs @ value[b].double()
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register_reference() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(REFERENCE_ATTENTION, reference_attention)
    AttentionMaskInterface.register(REFERENCE_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
