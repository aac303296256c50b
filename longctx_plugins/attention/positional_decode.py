"""Decode steps of the position-method attentions: causal attention with a KV cache (fewer query rows than keys).

The stateless path torch.compile traces in one graph with no recompiles from step to step (:mod:`.decode`):
positions and masks from the call's own tensors, passes and frequencies from the layer's parameters (plain Python
values), one-row steps on the split-K decode kernel (:mod:`.kernels.decode_passes`) where it is usable, else the exact
dense reference. Uncompiled, what every layer of a forward shares is built by its first layer
(:func:`.decode.per_forward`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..ops import passes as P
from ..ops import self_extend as se_ops
from . import decode
from . import method_layer as M
from .kernels import decode_passes
from .options import configured_options
from .support import UnsupportedModelError, position_method_problem


def decode_forward(module, query, key, value, attention_mask, dropout, scaling, kwargs):
    """Causal attention with a KV cache (fewer query rows than keys): the stateless path torch.compile traces in one
    graph with no recompiles from step to step (:mod:`.decode`). No plan: positions and masks from the call's own
    tensors, passes and frequencies from the layer's parameters (plain Python values); one-row steps on the decode
    kernel where it is usable, else the exact dense reference. Uncompiled, what every layer of the forward shares is
    built by the first (:func:`.decode.per_forward`). Returns ``([B,Q,H,D], None)``."""
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    position_ids = kwargs.get("position_ids")
    anchor = position_ids if position_ids is not None else attention_mask
    layer = getattr(module, "layer_idx", None)
    shape = (batch, q_len, kv_len, query.device)
    mask, q_pos, k_pos = decode.per_forward(
        anchor,
        layer,
        ("positions", *shape),
        (attention_mask,),
        lambda: _step_positions(attention_mask, position_ids, batch, q_len, kv_len, query.device),
    )
    params = M.method_parameters(module)
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
    step = _step_settings(module, params, query, (anchor, layer, attention_mask, shape), mask, q_pos, k_pos)
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
    out = M.dense(
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


def _step_settings(module, params: dict, query, forward: tuple, mask, q_pos, k_pos) -> _Step:
    """The passes, frequencies, logit scale, kernel decision and kernel inputs of a decode step (:func:`_build_step`).
    Uncompiled, built once per forward (``forward``: its anchor, the layer index, the mask, the step's shape) for the
    layers that share a mask, config, RoPE parameter dict (same contents), configured options, query dtype and head
    dim, and the kernel decision kept on each module for compiled steps; compiled, built in the trace (no keys on
    object identity)."""
    if torch.compiler.is_compiling():
        return _build_step(module, params, query, mask, q_pos, k_pos)
    anchor, layer, attention_mask, shape = forward
    held = (attention_mask, module.config, params, configured_options(module, module.config._attn_implementation))
    key = ("step", query.dtype, query.shape[-1], *shape)
    snapshot = tuple(params.items())
    stored, step = decode.per_forward(
        anchor, layer, key, held, lambda: (snapshot, _build_step(module, params, query, mask, q_pos, k_pos))
    )
    if stored != snapshot:  # the same dict changed since (not within one forward pass): built again
        step = _build_step(module, params, query, mask, q_pos, k_pos)
    if getattr(module, "_longctx_decode_kernel", None) is not step.kernel:
        module._longctx_decode_kernel = step.kernel
    return step


def _build_step(module, params: dict, query, mask, q_pos, k_pos) -> _Step:
    trained = M.trained(module, params)
    passes, reads = step_passes(module, params)
    logit_scale = None
    if params.get("temperature") == "log":  # true length = the last query's position + 1 (empty slots excluded)
        logit_scale = se_ops.temperature(q_pos[:, -1] + 1, trained)
    inv_freq = M.inv_freq(module.config, params, query.device)
    on = decode_kernel_on(module, params, query, passes)
    layout = inputs = None
    if on:
        layout = _decode_layout(params, trained, passes, query.device)
        inputs = decode_passes.step_inputs(q_pos, k_pos, mask[:, 0, -1], logit_scale, inv_freq, query.shape[0])
    return _Step(passes, reads, inv_freq, logit_scale, on, layout, inputs)


def prepare(module, params, query) -> None:
    """Decide and store, eagerly, what a later compiled decode step of this layer reads: its passes, the kernel
    decision and the kernel's pass table (each causal prefill calls this)."""
    decode_kernel_on(module, params, query, step_passes(module, params)[0])


def decode_kernel_on(module, params, query, passes) -> bool:
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
        _decode_layout(params, M.trained(module, params), passes, query.device)
    return on


def _decode_layout(params, trained: int, passes, device):
    """The decode kernel's pass table on ``device`` (:func:`.kernels.decode_passes.layout_for`), stored by value."""
    key = ("decode_layout", decode.parameters_key(params), trained, str(device))
    return decode.cached(key, lambda: decode_passes.layout_for(passes, device))


def step_passes(module, params):
    """A causal layer's passes for decode steps and how they read the keys (:func:`~longctx_plugins.ops.passes.
    key_reads`), stored by value (:func:`.decode.cached`). Every causal prefill
    stores them eagerly, so a compiled decode step only reads them: building them imports the method's ops module,
    which dynamo cannot trace (a graph break in every step, each cut into more graphs)."""
    trained = M.trained(module, params)
    key = ("passes", decode.parameters_key(params), trained)

    def build():
        passes = M.layer_passes(None, module, params, True, None)[0]
        return passes, P.key_reads(passes)

    return decode.cached(key, build)
