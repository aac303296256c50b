"""Host-to-device copies of the embedder's small index and id arrays, without making the host wait on the GPU."""

from __future__ import annotations

import numpy as np
import torch


def to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """``array`` as a tensor on ``device``. To a CUDA device it is staged in pinned (page-locked) host memory and
    copied asynchronously: the host goes on at once, and torch's pinned-memory cache does not hand the block out again
    before the copy has run. Elsewhere an ordinary copy (none on the CPU: the tensor shares the array's memory)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
