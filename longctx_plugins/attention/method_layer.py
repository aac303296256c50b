"""A position-method layer's settings and its exact reference: the RoPE parameters that name a method, the trained
length, the method's frequencies and passes (with ``keep_trained_window``), and the dense reference over query-row
chunks. Shared by the prefill (:mod:`.positional`) and decode (:mod:`.positional_decode`) paths."""

from __future__ import annotations

import torch

from ..ops import passes as P
from ..positions import rope_config
from ..positions.rope_methods import ROPE_METHODS
from . import decode

# The exact reference materialises float32 logits [B, H, Q, K] (and a few same-size temporaries). Without gradients,
# calls above this many logits run over query-row chunks: the same math per row, memory bounded (~0.5 GiB a tensor).
REFERENCE_CHUNK_ELEMENTS = 2**27


def trained(module, params: dict) -> int:
    """The layer's trained length: its RoPE parameters' ``original_max_position_embeddings``, else the config's."""
    return int(params.get("original_max_position_embeddings") or module.config.max_position_embeddings)


def method_parameters(module) -> dict | None:
    """The layer's RoPE parameters if they name a position method, else None."""
    params = rope_config.module_parameters(module)
    if not isinstance(params, dict) or params.get("rope_type") not in ROPE_METHODS:
        return None
    return params


def inv_freq(config, params, device):
    from ..positions.rope import inv_freq_for, rotary_dim

    # keyed by value (not config identity, which Python may recycle): parameters, rotary dim, device; plain Python
    # values only, so a compiled decode step reads the stored tensor (:func:`.decode.cached`)
    key = ("inv_freq", tuple(sorted((k, str(v)) for k, v in params.items())), rotary_dim(config, params), str(device))
    return decode.cached(key, lambda: inv_freq_for(config, params, device, params.get("base_rope_type", "default")))


INSIDE = P.Pass("inside", P.Band())


def layer_passes(plan, module, params, causal, k_pos):
    """The layer's passes, and the batch rows that take plain attention instead (a ``[B]`` bool tensor, or None).

    With ``keep_trained_window`` (the default) the method acts only past the trained window: for decoders on query
    rows at positions >= the trained length (earlier rows: plain attention), for encoders only on sequences longer
    than the trained length, decided per row (padding excluded), so a text gets the same vector alone and in any
    padded batch. Inputs inside the window get exactly the unextended model's attention."""
    method = ROPE_METHODS[params["rope_type"]]
    if method.causal_only and not causal:
        raise ValueError(
            f"{method.name} ({method.paper}) is defined for causal attention; this layer is "
            "bidirectional. Use self_extend for encoders."
        )
    passes = method.passes(params, causal)
    if not params.get("keep_trained_window", True):
        return passes, None
    length = trained(module, params)
    if causal:
        return P.exact_below(passes, length), None
    inside = plan.once("rows_inside", lambda: _rows_inside(plan, k_pos, length))
    if inside is True:
        return (INSIDE,), None
    return passes, (None if inside is False else inside)


def _rows_inside(plan, k_pos, trained: int):
    """True when every row of the batch is no longer than ``trained`` (its real keys' last position + 1), False when
    none is, else the ``[B]`` bool tensor of the rows that are. One host sync per forward."""
    valid = plan.key_valid()
    pos = k_pos if valid is None else torch.where(valid, k_pos, torch.full_like(k_pos, -1))
    inside = pos.max(dim=-1).values + 1 <= trained
    if bool(inside.all()):
        return True
    return inside if bool(inside.any()) else False


def dense(query, key, value, q_pos, k_pos, inv_freq, passes, mask, scale, logit_scale, reads=None):
    reads = P.key_reads(passes) if reads is None else reads
    batch, heads, q_len, _ = query.shape
    # the reference reads each key rotation once, for all its query rotations stacked: that many logits per row
    per_row = batch * heads * key.shape[2] * max(len(q_maps) for _, q_maps, _ in reads)
    rows = q_len if torch.is_grad_enabled() else max(1, REFERENCE_CHUNK_ELEMENTS // per_row)
    outs = []
    for a in range(0, q_len, rows):
        sl = slice(a, a + rows)
        outs.append(
            P.dense_attention(
                query[:, :, sl],
                key,
                value,
                q_pos[:, sl],
                k_pos,
                passes,
                inv_freq,
                mask=None if mask is None else mask[:, :, sl],
                scale=scale,
                logit_scale=logit_scale,
                reads=reads,
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
