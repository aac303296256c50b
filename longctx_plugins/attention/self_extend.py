"""``attn_implementation="self_extend"``: SelfExtend read from ``config.rope_parameters``.

The model rotates q/k at their true positions (its rotary module uses the base frequencies); this function
re-rotates them to SelfExtend's grouped positions and merges neighbour and grouped attention exactly.
Layers whose RoPE parameters are not of type ``self_extend`` (e.g. Gemma3 / ModernBERT sliding layers) get
plain attention. Backends: the exact reference (one float32 softmax over the merged logits) everywhere; on
CUDA an exact fast path: a block-sparse neighbour pass (O(L*W)) plus grouped pass(es), merged by log-sum-exp.
Without gradients and with contiguous positions the grouped passes run on PyTorch's fused causal kernels (cuDNN,
else flash; see :mod:`._dense_lse`), otherwise on FlexAttention.
"""
from __future__ import annotations

import torch

from .. import rope_config
from ..ops import blocks
from ..ops import rope as rope_ops
from ..ops import self_extend as se_ops
from ..ops.reference import repeat_kv
from . import _common, _dense_lse

_inv_freq_cache: dict = {}
_block_cache = _common.IdentityCache()


def self_extend_mask(batch_size, q_length, kv_length, *args, **kwargs):
    """Mask function registered under "self_extend": transformers' rule, always materialised (or a FlexPlan)."""
    return _common.make_mask("self_extend", batch_size, q_length, kv_length, args, kwargs)


def layer_parameters(module) -> dict | None:
    """The layer's RoPE parameters if they are of type self_extend, else None."""
    params = rope_config.module_parameters(module)
    if not isinstance(params, dict) or params.get("rope_type") != "self_extend":
        return None
    return params


def _inv_freq(config, params, device):
    from ..rope import inv_freq_for, rotary_dim

    # keyed by value (not config identity, which Python may recycle): parameters, rotary dim, device
    key = (tuple(sorted((k, str(v)) for k, v in params.items())), rotary_dim(config, params), str(device))
    if key not in _inv_freq_cache:
        _inv_freq_cache[key] = inv_freq_for(config, params, device, params.get("base_rope_type", "default"))
    return _inv_freq_cache[key]


def _positions(kwargs, batch, q_len, kv_len, device):
    q_pos = kwargs.get("position_ids")
    if q_pos is None:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[None]
    q_pos = q_pos.to(device=device, dtype=torch.long).expand(batch, -1)
    if q_len == kv_len:
        return q_pos, q_pos
    # KV cache: cached keys are the contiguous tokens before the current ones (DynamicCache layout).
    k_pos = q_pos[:, -1:] - (kv_len - 1 - torch.arange(kv_len, device=device))[None]
    return q_pos, k_pos


def self_extend_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                                  **kwargs):
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    params = layer_parameters(module)
    plan = attention_mask if isinstance(attention_mask, _common.FlexPlan) else None
    options = _common.flex_kernel_options(module.config, "self_extend", query) if plan is not None else None

    if params is None:  # not a SelfExtend layer: plain attention under the same mask
        if plan is not None:
            bm = _block_cache.get((plan,), ("plain",), plan.block_mask)
            out = _common.compiled_flex(query.device)(query, key, value, block_mask=bm, scale=scaling,
                                                      enable_gqa=query.shape[1] != key.shape[1], kernel_options=options)
            return out.transpose(1, 2).contiguous(), None
        mask = _common.to_bool_mask(attention_mask, module, q_len, kv_len, query.device, causal)
        return _common.sdpa_dense(query, key, value, mask, scaling, dropout), None

    if dropout and module.training:
        raise ValueError("self_extend: attention dropout is not supported; set the model's attention_dropout to 0.")
    group, window = int(params["group_size"]), int(params["window"])
    q_pos, k_pos = _positions(kwargs, batch, q_len, kv_len, query.device)
    inv_freq = _inv_freq(module.config, params, query.device)
    logit_scale = None
    if params.get("temperature") == "log":
        trained = params.get("original_max_position_embeddings") or module.config.max_position_embeddings
        logit_scale = se_ops.temperature(k_pos.max(dim=-1).values + 1, trained)  # true length = last position + 1

    if plan is not None:
        # block masks are cached per forward under the caller's position_ids object (the same for every layer);
        # q_pos itself is a fresh expand() view per layer and would miss the cache
        source = kwargs.get("position_ids")
        out = _flex_self_extend(query, key, value, q_pos, k_pos, inv_freq, group, window, causal, plan, scaling,
                                logit_scale, options, (plan,) if source is None else (plan, source))
        return out.to(query.dtype).transpose(1, 2).contiguous(), None

    mask = _common.to_bool_mask(attention_mask, module, q_len, kv_len, query.device, causal)
    out = _reference(query, key, value, q_pos, k_pos, inv_freq, group, window, causal, mask, scaling, logit_scale)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


# The exact reference materialises float32 logits [B, H, Q, K] (and a few same-size temporaries). Without gradients,
# calls above this many logits run over query-row chunks: the same math per row, memory bounded (~0.5 GiB a tensor).
REFERENCE_CHUNK_ELEMENTS = 2 ** 27


def _reference(query, key, value, q_pos, k_pos, inv_freq, group, window, causal, mask, scaling, logit_scale):
    batch, heads, q_len, _ = query.shape
    rows = q_len if torch.is_grad_enabled() else max(1, REFERENCE_CHUNK_ELEMENTS // (batch * heads * key.shape[2]))
    outs = []
    for a in range(0, q_len, rows):
        sl = slice(a, a + rows)
        outs.append(se_ops.reference_attention(
            query[:, :, sl], key, value, q_pos[:, sl], k_pos, inv_freq, group, window, causal=causal,
            mask=None if mask is None else mask[:, :, sl], scale=scaling, logit_scale=logit_scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _rules(q_pos, k_pos, window, causal, valid):
    def near(b, h, qi, ki):
        return (q_pos[b, qi] - k_pos[b, ki]).abs() < window

    def far_left(b, h, qi, ki):
        return (q_pos[b, qi] - k_pos[b, ki]) >= window

    def far_right(b, h, qi, ki):
        return (k_pos[b, ki] - q_pos[b, qi]) >= window

    rules = {"near": near, "far_left": far_left, "far_right": far_right}

    def finish(rule):
        def mod(b, h, qi, ki):
            out = rule(b, h, qi, ki)
            if causal:
                out = out & (ki <= qi)
            if valid is not None:
                out = out & valid[b, ki]
            return out

        return mod

    return {name: finish(rule) for name, rule in rules.items() if not (causal and name == "far_right")}


def _block_masks(plan, q_pos, k_pos, window, causal):
    """Block masks of the passes, plus whether the positions allow the fused-kernel grouped passes (contiguous 0..L-1, no
    padding, no local window). Built once per forward (cached by the caller): the checks need host syncs."""
    valid = plan.key_valid()
    mods = _rules(q_pos, k_pos, window, causal, valid)
    contiguous = bool((q_pos == torch.arange(q_pos.shape[1], device=q_pos.device)).all())
    out = {"dense_positions_ok": contiguous and valid is None and plan.local_size is None}
    if plan.local_size is None and not plan.q_offset and _common.monotone(q_pos) and _common.monotone(k_pos):
        maps = blocks.self_extend_blocks(q_pos, k_pos, valid, _common.BLOCK, window, causal)
        out.update({name: blocks.to_block_mask(*maps[name], mods[name], plan.q_length, plan.kv_length,
                                               _common.BLOCK) for name in mods})
    else:  # windowed / chunked layers, or positions that are not monotone: compose with transformers' own rule
        out.update({name: plan.block_mask(mod) for name, mod in mods.items()})
    return out


def _dense_ok(query, positions_ok: bool) -> bool:
    """Fused-kernel grouped passes: CUDA, no gradients (the kernels' lse has none), half precision."""
    return (positions_ok and query.device.type == "cuda" and not torch.is_grad_enabled()
            and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256)


def _dense_grouped(out, lse, q_l, k_l, q_r, k_r, value, window, scaling, merge, causal_lse=None):
    """Grouped pass(es) on a fused causal kernel (cuDNN / flash) over the rows that have grouped keys, merged into the
    neighbour pass ``(out, lse)`` in place. False when no fused kernel is usable (nothing is changed then).
    ``causal_lse(q, k, v, scale) -> (out, lse) | None`` is the kernel (default: :mod:`._dense_lse`)."""
    causal_lse = causal_lse or _dense_lse.causal_attention_lse
    L, n_rep = q_l.shape[2], q_l.shape[1] // k_l.shape[1]
    vv = repeat_kv(value, n_rep)
    # keys left of the query: query i >= W sees keys j <= i - W, i.e. causal between rows W.. and keys ..L-W
    res = causal_lse(q_l[:, :, window:], repeat_kv(k_l, n_rep)[:, :, : L - window], vv[:, :, : L - window], scaling)
    if res is None:
        return False
    out[:, :, window:], lse[..., window:] = merge(out[:, :, window:], lse[..., window:], *res)
    if q_r is not None:  # keys right of the query (encoders): reverse both sequences and it is causal again
        res = causal_lse(q_r[:, :, : L - window].flip(2), repeat_kv(k_r, n_rep)[:, :, window:].flip(2),
                         vv[:, :, window:].flip(2), scaling)
        if res is None:  # cannot happen after the first pass succeeded on the same shapes, but never merge half
            raise RuntimeError("self_extend: the fused kernel ran for the left pass but not for the right pass")
        o, l_ = res
        out[:, :, : L - window], lse[..., : L - window] = merge(out[:, :, : L - window], lse[..., : L - window],
                                                                o.flip(2), l_.flip(2))
    return True


def _flex_self_extend(query, key, value, q_pos, k_pos, inv_freq, group, window, causal, plan, scaling, logit_scale,
                      options=None, cache_key=None):
    """Exact fast path: neighbour pass (|i-j| < W, block-sparse) + grouped pass(es), merged by log-sum-exp."""
    flex = _common.compiled_flex(query.device)
    merge = _common.compiled(se_ops.merge_pair, query.device)
    gqa = query.shape[1] != key.shape[1]
    if logit_scale is not None:
        query = query * logit_scale.to(query.dtype)[:, None, None, None]
    apply = _common.compiled(rope_ops.apply_rotation, query.device)  # tables stay outside: no per-head cos/sin
    q_l, k_l, q_r, k_r = se_ops.grouped_rotations(query, key, q_pos, k_pos, inv_freq, group, window, causal, apply)
    bms = _block_cache.get(cache_key or (plan, q_pos, k_pos), (window, causal, q_pos.shape[0]),
                           lambda: _block_masks(plan, q_pos, k_pos, window, causal))
    out, lse = _common.flex_with_lse(flex, query, key, value, bms["near"], scaling, gqa, options)
    if (_dense_ok(query, bms["dense_positions_ok"]) and query.shape[2] > window
            and _dense_grouped(out, lse, q_l, k_l, q_r, k_r, value, window, scaling, merge)):
        return out
    for name, (q, k) in (("far_left", (q_l, k_l)), ("far_right", (q_r, k_r))):
        if name in bms:
            o, l_ = _common.flex_with_lse(flex, q, k, value, bms[name], scaling, gqa, options)
            out, lse = merge(out, lse, o, l_)
    return out
