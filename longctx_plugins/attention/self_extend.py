"""``attn_implementation="self_extend"``: SelfExtend read from ``config.rope_parameters``.

The model rotates q/k at their true positions (its rotary module uses the base frequencies); this function
re-rotates them to SelfExtend's grouped positions and merges neighbour and grouped attention exactly.
Layers whose RoPE parameters are not of type ``self_extend`` (e.g. Gemma3 / ModernBERT sliding layers) get
plain attention. Backends: exact reference (one float32 softmax over merged logits) everywhere; on CUDA an
exact FlexAttention path (block-sparse neighbour pass + grouped pass, merged by log-sum-exp).
"""
from __future__ import annotations

import torch

from ..ops import self_extend as se_ops
from . import _common

_inv_freq_cache: dict = {}
_block_cache = _common.IdentityCache()


def self_extend_mask(batch_size, q_length, kv_length, *args, config=None, device="cpu", **kwargs):
    """Mask function registered under "self_extend": transformers' rule, always materialised (or a BlockMask)."""
    kwargs.update(batch_size=batch_size, q_length=q_length, kv_length=kv_length, device=device, config=config)
    if config is not None and _common.use_flex(config, "self_extend", device, q_length, kv_length):
        return _common.flex_mask(*args, **kwargs)
    return _common.forced_dense_mask(*args, **kwargs)


def layer_parameters(module) -> dict | None:
    """The layer's RoPE parameters if they are of type self_extend, else None."""
    config = module.config
    params = config.rope_parameters or {}
    layer_types = getattr(config, "layer_types", None)
    if layer_types and getattr(module, "layer_idx", None) is not None and layer_types[module.layer_idx] in params:
        params = params[layer_types[module.layer_idx]]
    if not isinstance(params, dict) or params.get("rope_type") != "self_extend":
        return None
    return params


def _inv_freq(config, params, device):
    from ..rope import inv_freq_for

    key = (id(config), tuple(sorted((k, str(v)) for k, v in params.items())), str(device))
    if key not in _inv_freq_cache:
        _inv_freq_cache[key] = inv_freq_for(config, params, device, params.get("base_rope_type", "default"))
    return _inv_freq_cache[key]


def _positions(kwargs, batch, q_len, kv_len, device):
    q_pos = kwargs.get("position_ids")
    if q_pos is None:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[None].expand(batch, -1)
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

    from torch.nn.attention.flex_attention import BlockMask

    is_block = isinstance(attention_mask, BlockMask)
    if params is None:  # not a SelfExtend layer: plain attention under the same mask
        if is_block:
            out = _common.compiled_flex()(query, key, value, block_mask=attention_mask, scale=scaling,
                                          enable_gqa=query.shape[1] != key.shape[1])
            return out.transpose(1, 2).contiguous(), None
        mask = _common.to_bool_mask(attention_mask, module, q_len, kv_len, query.device, causal)
        return _common.sdpa_dense(query, key, value, mask, scaling, dropout), None

    group, window = int(params["group_size"]), int(params["window"])
    q_pos, k_pos = _positions(kwargs, batch, q_len, kv_len, query.device)
    inv_freq = _inv_freq(module.config, params, query.device)
    logit_scale = None
    if params.get("temperature") == "log":
        trained = params.get("original_max_position_embeddings") or module.config.max_position_embeddings
        lengths = k_pos.max(dim=-1).values + 1  # true length = last position + 1
        logit_scale = se_ops.temperature(lengths, trained)

    if is_block:
        if dropout:
            raise ValueError("self_extend: the FlexAttention backend has no attention dropout; use self_extend_backend='sdpa'.")
        out = _flex_self_extend(query, key, value, q_pos, k_pos, inv_freq, group, window, causal,
                                attention_mask, scaling, logit_scale)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None

    mask = _common.to_bool_mask(attention_mask, module, q_len, kv_len, query.device, causal)
    out = se_ops.reference_attention(query, key, value, q_pos, k_pos, inv_freq, group, window, causal=causal,
                                     mask=mask, scale=scaling, logit_scale=logit_scale)
    if dropout and module.training:
        raise ValueError("self_extend: attention dropout is not supported; set the model's attention_dropout to 0.")
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _flex_self_extend(query, key, value, q_pos, k_pos, inv_freq, group, window, causal, base, scaling, logit_scale):
    """Exact fast path: neighbour pass (|i-j| < W, block-sparse O(L*W)) + grouped pass(es), LSE-merged."""
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    flex = _common.compiled_flex()
    gqa = query.shape[1] != key.shape[1]
    if logit_scale is not None:
        query = query * logit_scale.to(query.dtype)[:, None, None, None]
    q_l, k_l, q_r, k_r = se_ops.grouped_rotations(query, key, q_pos, k_pos, inv_freq, group, window, causal)
    q_len, kv_len = base.seq_lengths

    def near(b, h, qi, ki):
        return (q_pos[b, qi] - k_pos[b, ki]).abs() < window

    def far_left(b, h, qi, ki):
        return (q_pos[b, qi] - k_pos[b, ki]) >= window

    def far_right(b, h, qi, ki):
        return (k_pos[b, ki] - q_pos[b, qi]) >= window

    def build(rule):
        return create_block_mask(and_masks(base.mask_mod, rule), B=query.shape[0], H=None, Q_LEN=q_len,
                                 KV_LEN=kv_len, device=query.device, BLOCK_SIZE=base.BLOCK_SIZE, _compile=True)

    rules = [near, far_left] + ([] if causal else [far_right])
    block_masks = _block_cache.get((base, q_pos, k_pos), (window,), lambda: [build(r) for r in rules])
    pairs = [(query, key), (q_l, k_l)] + ([] if causal else [(q_r, k_r)])
    outs, lses = [], []
    for (q, k), bm in zip(pairs, block_masks):
        o, lse = _common.flex_with_lse(flex, q, k, value, bm, scaling, gqa)
        outs.append(o)
        lses.append(lse)
    merged, _ = se_ops.lse_merge(outs, lses)
    return merged
