"""One padded forward pass of the embedding model over a batch of token-id arrays (the only place that builds model
inputs). No host synchronisation: the caller keeps the results on the device until the whole run is done, so the
next batch is prepared while the GPU still works on this one. The inputs of a batch go to a CUDA device in one copy
from pinned host memory that the host does not wait for (:func:`.transfer.to_device`).

Every forward passes an explicit ``attention_mask``, also when no row is padded. Without one, transformers infers
packed sequences from ``position_ids`` (every step other than +1 starts a new "sequence", for causal masks and, from
transformers 5.25, for bidirectional ones too), which would cut apart the position maps of APE-extended models
(PI's ``p * s`` inside the window, GP's repeated and RP's wrapped positions). An all-ones mask costs nothing
measurable: transformers drops it again where its attention can skip the mask."""

from __future__ import annotations

import numpy as np
import torch

from ..positions.ape import position_ids_for
from .transfer import to_device


@torch.inference_mode()
def hidden_states(model, batch: list[np.ndarray], device: torch.device, pad_id: int, left: bool):
    """``(hidden [B, T, H] float32, mask [B, T] long, lengths [B])`` on ``device``. Rows are padded on the left for
    decoders (``left``), else on the right. The attention mask is always passed (see the module docstring)."""
    B = len(batch)
    lengths = np.fromiter((len(x) for x in batch), dtype=np.int64, count=B)
    T = int(lengths.max())
    packed = np.zeros(2 * B * T + B, dtype=np.int64)  # ids, mask and lengths: one copy to the device
    ids, mask = packed[: B * T].reshape(B, T), packed[B * T : 2 * B * T].reshape(B, T)
    ids.fill(pad_id)
    for r, x in enumerate(batch):
        sl = slice(T - len(x), T) if left else slice(0, len(x))
        ids[r, sl] = x
        mask[r, sl] = 1
    packed[2 * B * T :] = lengths
    padded = bool((lengths < T).any())
    on_device = to_device(packed, device)
    ids_t, mask_t = on_device[: B * T].view(B, T), on_device[B * T : 2 * B * T].view(B, T)
    kwargs = {"input_ids": ids_t, "attention_mask": mask_t}
    if getattr(model.config, "longctx_ape", None):
        kwargs["position_ids"] = position_ids_for(model.config, ids_t, on_device[2 * B * T :])
    elif left and padded:
        kwargs["position_ids"] = (mask_t.cumsum(-1) - 1).clamp(min=0)
    hidden = model(**kwargs).last_hidden_state.float()
    return hidden, mask_t, lengths
