"""The position-method attentions (``attn_implementation="self_extend" | "dca" | "string"``): RoPE positions
re-mapped per pair.

The model rotates q/k at their true positions (its rotary module keeps the base frequencies); the layer's method
(``rope_parameters["rope_type"]``, see :data:`~longctx_plugins.positions.rope_methods.ROPE_METHODS`) splits the pairs
into passes, each re-rotating q/k to its
own positions (:mod:`longctx_plugins.ops.passes`). Layers whose RoPE parameters name no method (Gemma3 / ModernBERT
sliding layers) get plain attention under the same plan.

Backends (chosen once per forward by the plan): ``sdpa``, the exact reference (one float32 softmax over the pairs'
logits; without gradients over query-row chunks once a call would hold more than 2^27 logits), and, on CUDA,
``flex``: one attention per pass merged by log-sum-exp, each pass block-sparse (O(L x W) for a window pass); a
pass over all pairs beyond a distance runs on a fused causal kernel with its log-sum-exp where positions are
contiguous and there are no gradients (:mod:`.kernels.fused_lse`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..ops import passes as P
from ..ops import self_extend as se_ops
from ..positions import rope_config
from ..positions.rope_methods import ROPE_METHODS
from . import decode
from . import plan as plans
from .fast_passes import flex_passes as _flex_passes
from .kernels import decode_passes, flex, sdpa
from .options import configured_options
from .support import UnsupportedModelError, position_method_problem

MASK_FUNCTIONS = {name: plans.mask_function(name) for name in ROPE_METHODS}
self_extend_mask = MASK_FUNCTIONS["self_extend"]
# The exact reference materialises float32 logits [B, H, Q, K] (and a few same-size temporaries). Without gradients,
# calls above this many logits run over query-row chunks: the same math per row, memory bounded (~0.5 GiB a tensor).
REFERENCE_CHUNK_ELEMENTS = 2**27


def _trained(module, params: dict) -> int:
    """The layer's trained length: its RoPE parameters' ``original_max_position_embeddings``, else the config's."""
    return int(params.get("original_max_position_embeddings") or module.config.max_position_embeddings)


def method_parameters(module) -> dict | None:
    """The layer's RoPE parameters if they name a position method, else None."""
    params = rope_config.module_parameters(module)
    if not isinstance(params, dict) or params.get("rope_type") not in ROPE_METHODS:
        return None
    return params


def _inv_freq(config, params, device):
    from ..positions.rope import inv_freq_for, rotary_dim

    # keyed by value (not config identity, which Python may recycle): parameters, rotary dim, device; plain Python
    # values only, so a compiled decode step reads the stored tensor (:func:`.decode.cached`)
    key = ("inv_freq", tuple(sorted((k, str(v)) for k, v in params.items())), rotary_dim(config, params), str(device))
    return decode.cached(key, lambda: inv_freq_for(config, params, device, params.get("base_rope_type", "default")))


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
        return _decode_forward(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    name = module.config._attn_implementation
    plan = plans.plan_for(name, attention_mask, query, key, (kwargs.get("position_ids"),), causal)
    plan.bind(module, query, kwargs, dropout, causal, _read_positions(batch, q_len, kv_len, query.device), _no_flash)
    params = method_parameters(module)
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
    passes, plain_rows = _passes(plan, module, params, causal, k_pos)
    if causal and not torch.compiler.is_compiling():  # ready for the decode steps that may follow (compiled ones
        _decode_kernel_on(module, params, query, _decode_passes(module, params)[0])  # only read what is decided here)
    inv_freq = _inv_freq(module.config, params, query.device)
    logit_scale = None
    if params.get("temperature") == "log":
        trained = _trained(module, params)
        logit_scale = se_ops.temperature(k_pos.max(dim=-1).values + 1, trained)  # true length = last position + 1

    def run(ps):
        if plan.backend == "flex":
            return _flex_passes(plan, query, key, value, q_pos, k_pos, inv_freq, ps, scaling, logit_scale)
        mask = plan.causal_dense_mask()
        return _dense(query, key, value, q_pos, k_pos, inv_freq, ps, mask, scaling, logit_scale)

    out = run(passes)
    if plain_rows is not None:  # a padded encoder batch with rows on both sides of the trained window
        out = torch.where(plain_rows[:, None, None, None], run((_INSIDE,)), out)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


_INSIDE = P.Pass("inside", P.Band())


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


def _decode_forward(module, query, key, value, attention_mask, dropout, scaling, kwargs):
    """Causal attention with a KV cache (fewer query rows than keys): the stateless path torch.compile traces in one
    graph with no recompiles from step to step (:mod:`.decode`). No plan: positions and masks from the call's own
    tensors, passes and frequencies from the layer's parameters (plain Python values); one-row steps on the decode
    kernel where it is usable, else the exact dense reference. Uncompiled, what every layer of the forward shares is
    built by the first (:func:`.decode.per_forward`). Returns ``([B,Q,H,D], None)``."""
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    anchors = (attention_mask, kwargs.get("position_ids"))
    mask, q_pos, k_pos = decode.per_forward(
        anchors,
        ("positions", batch, q_len, kv_len, query.device),
        lambda: _step_positions(attention_mask, anchors[1], batch, q_len, kv_len, query.device),
    )
    params = method_parameters(module)
    if params is None:  # not a position-method layer: plain attention
        if not torch.compiler.is_compiling():  # checked eagerly (prefill) already when compiled
            name = module.config._attn_implementation
            problem = position_method_problem(module.config, name)
            if problem:
                raise UnsupportedModelError(problem)
        return decode.plain_attention(query, key, value, mask, scaling, dropout).transpose(1, 2).contiguous(), None
    if dropout and module.training:
        raise ValueError(
            f"{params['rope_type']}: attention dropout is not supported; set the model's attention_dropout to 0."
        )
    step = _step_settings(module, params, query, anchors, mask, q_pos, k_pos)
    if (
        q_len == 1
        and step.kernel
        and key.dtype == value.dtype == query.dtype
        and value.shape[-1] == query.shape[-1]
        and not (torch.is_grad_enabled() and query.requires_grad)
    ):
        out = decode_passes.attention(  # [B, 1, H, D] in the query dtype
            query,
            key,
            value,
            q_pos,
            k_pos,
            step.passes,
            step.inv_freq,
            key_valid=mask[:, 0, -1],
            scale=scaling,
            logit_scale=step.logit_scale,
            layout=step.layout,
            inputs=step.inputs,
        )
        return out, None
    out = _dense(
        query, key, value, q_pos, k_pos, step.inv_freq, step.passes, mask, scaling, step.logit_scale, step.reads
    )
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _step_positions(attention_mask, position_ids, batch: int, q_len: int, kv_len: int, device):
    """``(bool mask [B,1,Q,K], q_pos [B,Q], k_pos [B,K])`` of a step with a KV cache (:func:`.decode.positions`)."""
    mask = decode.bool_mask(attention_mask, batch, kv_len)
    q_pos, k_pos = decode.positions(mask, position_ids, batch, q_len, kv_len, device)
    if mask is None:
        mask = decode.causal_mask(batch, q_len, kv_len, device)
    return mask, q_pos, k_pos


class _Step(NamedTuple):
    """A decode step's settings for the layers of one RoPE parameter dict (see :func:`_step_settings`)."""

    passes: tuple
    reads: tuple
    inv_freq: torch.Tensor
    logit_scale: torch.Tensor | None
    kernel: bool
    layout: tuple | None
    inputs: decode_passes.StepInputs | None


def _step_settings(module, params: dict, query, anchors: tuple, mask, q_pos, k_pos) -> _Step:
    """The passes, frequencies, logit scale, kernel decision and kernel inputs of a decode step. Uncompiled, built
    once per forward for the layers that share a config, RoPE parameter dict (same contents), configured options,
    query dtype, head dim and device, and the kernel decision kept on each module for compiled steps."""
    name = module.config._attn_implementation
    key = ("step", id(module.config), id(params), id(configured_options(module, name)), query.dtype, query.shape[-1])
    snapshot = tuple(params.items())

    def build():
        trained = _trained(module, params)
        passes, reads = _decode_passes(module, params)
        logit_scale = None
        if params.get("temperature") == "log":  # true length = the last query's position + 1 (empty slots excluded)
            logit_scale = se_ops.temperature(q_pos[:, -1] + 1, trained)
        inv_freq = _inv_freq(module.config, params, query.device)
        on = _decode_kernel_on(module, params, query, passes)
        layout = inputs = None
        if on:
            layout = _decode_layout(params, trained, passes, query.device)
            inputs = decode_passes.step_inputs(q_pos, k_pos, mask[:, 0, -1], logit_scale, inv_freq, query.shape[0])
        return snapshot, _Step(passes, reads, inv_freq, logit_scale, on, layout, inputs)

    stored, step = decode.per_forward(anchors, (*key, query.device), build)
    if stored != snapshot:  # the same dict changed since (not within one forward pass): built again
        stored, step = build()
    if not torch.compiler.is_compiling() and getattr(module, "_longctx_decode_kernel", None) is not step.kernel:
        module._longctx_decode_kernel = step.kernel
    return step


def _decode_kernel_on(module, params, query, passes) -> bool:
    """Whether this layer's one-row decode steps run the split-K decode kernel (:mod:`.kernels.decode_passes`): the
    ``auto`` backend, and the kernel usable for the query's device, dtype and head dim with these passes. Decided
    eagerly (each causal prefill, or an uncompiled step) and kept on the module; a compiled step reads the decision
    (none yet: the reference)."""
    if torch.compiler.is_compiling():
        return bool(getattr(module, "_longctx_decode_kernel", False))
    from ..positions.rope import rotary_dim
    from .options import options_for

    on = options_for(module, module.config._attn_implementation).backend == "auto" and decode_passes.usable(
        query.device, query.dtype, query.shape[-1], rotary_dim(module.config, params), passes
    )
    module._longctx_decode_kernel = on
    if on:  # stored now, for compiled steps
        _decode_layout(params, _trained(module, params), passes, query.device)
    return on


def _decode_layout(params, trained: int, passes, device):
    """The decode kernel's pass table on ``device`` (:func:`.kernels.decode_passes.layout_for`), stored by value."""
    key = ("decode_layout", decode.parameters_key(params), trained, str(device))
    return decode.cached(key, lambda: decode_passes.layout_for(passes, device))


def _decode_passes(module, params):
    """A causal layer's passes for decode steps and how they read the keys (:func:`~longctx_plugins.ops.passes.
    key_reads`), stored by value (:func:`.decode.cached`). Every causal prefill
    stores them eagerly, so a compiled decode step only reads them: building them imports the method's ops module,
    which dynamo cannot trace (a graph break in every step, each cut into more graphs)."""
    trained = _trained(module, params)
    key = ("passes", decode.parameters_key(params), trained)

    def build():
        passes = _passes(None, module, params, True, None)[0]
        return passes, P.key_reads(passes)

    return decode.cached(key, build)


def _passes(plan, module, params, causal, k_pos):
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
    trained = _trained(module, params)
    if causal:
        return P.exact_below(passes, trained), None
    inside = plan.once("rows_inside", lambda: _rows_inside(plan, k_pos, trained))
    if inside is True:
        return (_INSIDE,), None
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


def _dense(query, key, value, q_pos, k_pos, inv_freq, passes, mask, scale, logit_scale, reads=None):
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
