"""One padded forward pass of the embedding model over a batch of token-id arrays (the only place that builds model
inputs). No host synchronisation: the caller keeps the results on the device until the whole run is done, so the
next batch is prepared while the GPU still works on this one.

Every forward passes an explicit ``attention_mask``, also when no row is padded. Without one, transformers infers
packed sequences from ``position_ids`` (every step other than +1 starts a new "sequence", for causal masks and, from
transformers 5.25, for bidirectional ones too), which would cut apart the position maps of APE-extended models
(PI's ``p * s`` inside the window, GP's repeated and RP's wrapped positions). An all-ones mask costs nothing
measurable: transformers drops it again where its attention can skip the mask."""

from __future__ import annotations

import numpy as np
import torch

from ..positions.ape import position_ids_for


@torch.inference_mode()
def hidden_states(model, batch: list[np.ndarray], device: torch.device, pad_id: int, left: bool):
    """``(hidden [B, T, H] float32, mask [B, T] long, lengths [B])`` on ``device``. Rows are padded on the left for
    decoders (``left``), else on the right. The attention mask is always passed (see the module docstring)."""
    lengths = np.fromiter((len(x) for x in batch), dtype=np.int64, count=len(batch))
    T = int(lengths.max())
    ids = np.full((len(batch), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), T), dtype=np.int64)
    for r, x in enumerate(batch):
        sl = slice(T - len(x), T) if left else slice(0, len(x))
        ids[r, sl] = x
        mask[r, sl] = 1
    padded = bool((lengths < T).any())
    mask_t = torch.from_numpy(mask).to(device, non_blocking=True)
    kwargs = {"input_ids": torch.from_numpy(ids).to(device, non_blocking=True), "attention_mask": mask_t}
    if getattr(model.config, "longctx_ape", None):
        kwargs["position_ids"] = position_ids_for(
            model.config, kwargs["input_ids"], torch.from_numpy(lengths).to(device, non_blocking=True)
        )
    elif left and padded:
        kwargs["position_ids"] = (mask_t.cumsum(-1) - 1).clamp(min=0)
    hidden = model(**kwargs).last_hidden_state.float()
    return hidden, mask_t, lengths
