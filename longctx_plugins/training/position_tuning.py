"""Position-only tuning (LongEmbed's E5-Base-4k recipe) for PI-extended absolute-position embedders.

Only the *new* (interpolated) rows of the position table train; everything else, the original rows included, stays
exactly as it was. Inputs no longer than the trained window use only original rows (positions ``p * s``), so their
embeddings stay identical to the unextended model's after tuning.
"""

from __future__ import annotations

import torch

from ..positions.ape import embeddings_module, position_offset


class PositionTuning:
    """Handle returned by :func:`prepare_position_tuning`.

    Gradients of the original rows are zeroed by a hook; because optimizers such as AdamW still apply weight decay
    to rows with zero gradient, :meth:`restore` (run after every optimizer step via :meth:`attach` or the
    :meth:`callback` for ``Trainer``) writes the original rows back, so they never drift.
    """

    def __init__(self, model, original_rows: torch.Tensor, saved: torch.Tensor):
        self.model, self.original_rows, self.saved = model, original_rows, saved
        self.table = embeddings_module(model).position_embeddings.weight

    def parameters(self):
        return [self.table]

    @torch.no_grad()
    def restore(self):
        self.table.index_copy_(0, self.original_rows.to(self.table.device), self.saved.to(self.table))

    def attach(self, optimizer):
        optimizer.register_step_post_hook(lambda *_: self.restore())
        return optimizer

    def callback(self):
        from transformers import TrainerCallback

        handle = self

        class _Restore(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                handle.restore()

        return _Restore()


def prepare_position_tuning(model) -> PositionTuning:
    """Freeze ``model`` except the new rows of its PI-extended position table (see the module docstring)."""
    info = getattr(model.config, "longctx_ape", None)
    if not info or info.get("method") != "pi":
        raise ValueError(
            "position-only tuning needs a model extended with extend(model, 'pi', target_length) "
            "(it trains the interpolated rows of the position table)."
        )
    offset, trained, scale = position_offset(model.config), info["original_max_position_embeddings"], info["scale"]
    table = embeddings_module(model).position_embeddings.weight
    original = torch.cat([torch.arange(offset), offset + torch.arange(trained) * scale]).to(table.device)
    for p in model.parameters():
        p.requires_grad_(False)
    table.requires_grad_(True)
    table.register_hook(lambda grad: grad.index_fill(0, original.to(grad.device), 0.0))
    return PositionTuning(model, original, table.detach()[original].clone())
