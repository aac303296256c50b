"""The position-method attentions (``attn_implementation="self_extend" | "dca" | "string"``): RoPE positions
re-mapped per pair.

The model rotates q/k at their true positions (its rotary module keeps the base frequencies); the layer's method
(``rope_parameters["rope_type"]``, see :data:`~longctx_plugins.positions.rope_methods.ROPE_METHODS`) splits the pairs
into passes, each re-rotating q/k to its
own positions (:mod:`longctx_plugins.ops.passes`). Layers whose RoPE parameters name no method (Gemma3 / ModernBERT
sliding layers) get plain attention under the same plan. The layer's settings and the exact reference live in
:mod:`.method_layer`; calls with a KV cache (decode steps) take :mod:`.positional_decode`.

Backends (chosen once per forward by the plan): ``sdpa``, the exact reference (one float32 softmax over the pairs'
logits; without gradients over query-row chunks once a call would hold more than 2^27 logits), and, on CUDA,
``flex``: one attention per pass merged by log-sum-exp, each pass block-sparse (O(L x W) for a window pass); a
pass over all pairs beyond a distance runs on a fused causal kernel with its log-sum-exp where positions are
contiguous and there are no gradients (:mod:`.kernels.fused_lse`).
"""

from __future__ import annotations

import torch

from ..ops import self_extend as se_ops
from ..positions.rope_methods import ROPE_METHODS
from . import decode, positional_decode
from . import method_layer as M
from . import plan as plans
from .fast_passes import flex_passes as _flex_passes
from .kernels import flex, sdpa
from .support import UnsupportedModelError, position_method_problem

MASK_FUNCTIONS = {name: plans.mask_function(name) for name in ROPE_METHODS}
self_extend_mask = MASK_FUNCTIONS["self_extend"]


def _read_positions(batch: int, q_len: int, kv_len: int, device):
    def read(kwargs: dict, plan) -> dict:
        q_pos = kwargs.get("position_ids")
        if q_pos is None:
            q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[None]
        q_pos = q_pos.to(device=device, dtype=torch.long).expand(batch, -1)
        if q_len == kv_len:
            return {"q_pos": q_pos, "k_pos": q_pos}
        # KV cache: key slot s holds position s - offset, the offset fixed per row by the last query's own slot, the
        # last key its mask lets it see (a dynamic cache ends there, a static one has empty slots after it; left
        # padding shifts positions against slots). One host sync per forward.
        mask = plan.dense_mask()
        if mask is None:
            own_slot = torch.full((batch, 1), kv_len - 1, device=device)
        else:
            seen = mask[:, 0, -1, :]
            own_slot = (kv_len - 1 - seen.flip(-1).to(torch.int8).argmax(-1, keepdim=True)).to(device)
        offset = own_slot - q_pos[:, -1:]
        return {"q_pos": q_pos, "k_pos": torch.arange(kv_len, device=device)[None] - offset}

    return read


def _no_flash():
    return "position methods run on FlexAttention and fused kernels"


def positional_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """AttentionInterface function (see the module docstring). Returns ``([B,Q,H,D], None)``."""
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    if q_len != kv_len and causal and not isinstance(attention_mask, plans.AttentionPlan):
        plan = _fresh_cache_plan(module, query, attention_mask, kwargs.get("position_ids"))
        if plan is not None:  # a prompt into an empty static cache: the prefill path over its own keys
            return positional_attention_forward(
                module, query, key[:, :, :q_len], value[:, :, :q_len], plan, dropout, scaling, **kwargs
            )
        return positional_decode.decode_forward(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    name = module.config._attn_implementation
    plan = plans.plan_for(name, attention_mask, query, key, (kwargs.get("position_ids"),), causal)
    plan.bind(module, query, kwargs, dropout, causal, _read_positions(batch, q_len, kv_len, query.device), _no_flash)
    params = M.method_parameters(module)
    if params is None:  # not a position-method layer: plain attention under the same plan
        problem = plan.once("method_check", lambda: position_method_problem(module.config, name))
        if problem:
            raise UnsupportedModelError(problem)
        if plan.backend == "flex":
            bm = plan.once("plain_block_mask", plan.transformers_block_mask)
            return flex.attention(query, key, value, bm, scaling, plan.kernel_options).transpose(
                1, 2
            ).contiguous(), None
        mask, empty = plan.once("plain_dense_mask", lambda: plans.with_empty_rows(plan.dense_mask()))
        return sdpa.attention(query, key, value, mask, scaling, dropout, empty).transpose(1, 2).contiguous(), None
    if dropout and module.training:
        raise ValueError(
            f"{params['rope_type']}: attention dropout is not supported; set the model's attention_dropout to 0."
        )
    q_pos, k_pos = plan.inputs["q_pos"], plan.inputs["k_pos"]
    passes, plain_rows = M.layer_passes(plan, module, params, causal, k_pos)
    if causal and not torch.compiler.is_compiling():  # ready for the decode steps that may follow (compiled ones
        positional_decode.prepare(module, params, query)  # only read what is decided here)
    inv_freq = M.inv_freq(module.config, params, query.device)
    logit_scale = None
    if params.get("temperature") == "log":  # true length = last position + 1
        logit_scale = se_ops.temperature(k_pos.max(dim=-1).values + 1, M.trained(module, params))

    def run(ps):
        if plan.backend == "flex":
            return _flex_passes(plan, query, key, value, q_pos, k_pos, inv_freq, ps, scaling, logit_scale)
        mask = plan.causal_dense_mask()
        return M.dense(query, key, value, q_pos, k_pos, inv_freq, ps, mask, scaling, logit_scale)

    out = run(passes)
    if plain_rows is not None:  # a padded encoder batch with rows on both sides of the trained window
        out = torch.where(plain_rows[:, None, None, None], run((M.INSIDE,)), out)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _fresh_cache_plan(module, query, attention_mask, position_ids):
    """A plan for a prompt written into an empty cache (static caches are longer than the prompt): several query rows,
    positions 0..Q-1, keys seen exactly causally in the cache's first Q slots and no slot after them. Such a call is
    a prefill over those Q keys, so it takes the prefill path (fused and windowed kernels) instead of the per-step
    decode path, exactly. Decided once per forward: the plan rides on the mask tensor every layer shares. None for
    anything else (decode steps, padding, a cache that already holds tokens) and while compiling."""
    batch, _, q_len, _ = query.shape
    if q_len < 2 or attention_mask is None or torch.compiler.is_compiling():
        return None
    known = getattr(attention_mask, "_longctx_fresh_plan", None)
    if known is not None:
        return known or None
    mask = decode.bool_mask(attention_mask, batch, attention_mask.shape[-1])
    ok = mask is not None and mask.shape[-2] == q_len and mask.shape[-1] >= q_len
    if ok:
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=mask.device).tril()
        ok = bool((mask[..., :q_len] == causal).all()) and not bool(mask[..., q_len:].any())
    if ok and position_ids is not None:
        ok = bool((position_ids == torch.arange(q_len, device=position_ids.device)).all())
    plan = (
        plans.AttentionPlan(module.config._attn_implementation, batch, q_len, q_len, device=query.device)
        if ok
        else None
    )
    attention_mask._longctx_fresh_plan = plan or False  # every layer of this forward shares the mask tensor
    return plan
