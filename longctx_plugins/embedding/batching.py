"""Batches by a token budget, and the scheduler that runs them on one or several devices.

Rows of a batch are padded to its longest text, and padded rows need an attention mask, which costs more than the
batching saves for long texts (MiniLM on 2 CPU cores: two padded 4k rows take 4.26 s, one at a time 3.44 s; 32 rows
of 32 tokens batched 0.13 s, one at a time 0.32 s). So texts are sorted by length and a batch holds at most
``batch_size`` texts and ``max_batch_tokens`` padded tokens: short texts share batches, long ones run alone, unpadded.
"""

from __future__ import annotations

import torch

# Padded tokens per batch when none is set: on the CPU long texts run alone from 1k tokens on (mask cost above), on
# CUDA from 16k tokens on (a padded batch of B rows of T tokens builds a [B, 1, T, T] mask).
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}


def default_max_tokens(device: torch.device) -> int:
    return DEFAULT_MAX_BATCH_TOKENS.get(torch.device(device).type, DEFAULT_MAX_BATCH_TOKENS["cpu"])


def plan(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first (memory peaks early): each batch at most ``batch_size`` texts and
    ``max_tokens`` padded tokens (a text longer than ``max_tokens`` is a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        if cur is not None and len(cur) < batch_size and lengths[cur[0]] * (len(cur) + 1) <= max_tokens:
            cur.append(i)
        else:
            batches.append([i])
    return batches


def blocks(sizes: list[int], max_items: int, max_size: int) -> list[list[int]]:
    """Indices grouped for tokenisation ahead of the forward passes: sorted by ``sizes`` (characters), largest first,
    cut into consecutive blocks of at most ``max_items`` indices that close once they hold ``max_size`` (a larger
    item is a block of its own). Texts of similar length share a block, so token-budget batches planned inside each
    block (:func:`plan`) pad about as little as batches planned over all texts at once."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    out: list[list[int]] = []
    used = max_size
    for i in order:
        if used >= max_size or len(out[-1]) >= max_items:
            out.append([])
            used = 0
        out[-1].append(i)
        used += sizes[i]
    return out


def check_devices(devices) -> list[torch.device]:
    """``devices`` as torch devices, or ValueError naming the one that does not exist here."""
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    out = []
    for d in devices:
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"devices: {d!r} is not a device name ({exc}); use e.g. 'cpu', 'cuda:0'.") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(
                    f"devices: {d!r} asks for CUDA, but torch sees no CUDA GPU on this machine "
                    f"(torch {torch.__version__}); use devices=None or ['cpu']."
                )
            count = torch.cuda.device_count()
            if dev.index is not None and dev.index >= count:
                raise ValueError(
                    f"devices: {d!r} does not exist; this machine has {count} CUDA device(s) "
                    f"(cuda:0..cuda:{count - 1})."
                )
        elif dev.type != "cpu" and not getattr(torch, dev.type, None):
            raise ValueError(f"devices: {d!r} is not available here.")
        out.append(dev)
    if not out:
        raise ValueError("devices is empty; pass None for the embedder's own device.")
    return out


def assign(batches: list[list[int]], lengths: list[int], n_devices: int) -> list[list[list[int]]]:
    """Greedy balance: each batch to the device with the least work so far (attention cost ~ T^2 + T per text)."""
    work: list[list[list[int]]] = [[] for _ in range(n_devices)]
    load = [0] * n_devices
    for batch in batches:
        d = load.index(min(load))
        work[d].append(batch)
        load[d] += _cost(batch, lengths)
    return work


def _cost(batch: list[int], lengths) -> int:
    return sum(lengths[i] ** 2 + lengths[i] for i in batch)


class Runner:
    """Runs ``step(device_index, batch)`` for batches handed over one at a time (:meth:`submit`) or balanced over the
    devices (:meth:`spread`, the greedy rule of :func:`assign` with the work counted over every call).

    One device: each step runs in the calling thread, at once. Several: each device has one worker thread that runs
    its steps in the order given, so the caller can hand over the next batches while the devices work. Leaving the
    ``with`` block waits for every step; the first exception of a worker is re-raised there (the steps not yet
    started are dropped), and no worker thread outlives the block."""

    def __init__(self, n_devices: int, step):
        self.step = step
        self.load = [0] * n_devices
        self._pools: list = []
        self._futures: list = []
        if n_devices > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"longctx-device{d}") for d in range(n_devices)]

    def submit(self, device: int, batch: list[int]) -> None:
        if not self._pools:
            self.step(device, batch)
            return
        self._futures.append(self._pools[device].submit(self.step, device, batch))
        if self._futures[0].done():  # surface a failure early instead of queueing more work behind it
            self._futures.pop(0).result()

    def spread(self, batches: list[list[int]], lengths) -> None:
        for batch in batches:
            d = self.load.index(min(self.load))
            self.load[d] += _cost(batch, lengths)
            self.submit(d, batch)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        error = None
        try:
            for f in self._futures:  # in submission order: the first failure cancels what has not started
                if exc_type is not None or error is not None:
                    f.cancel()
                else:
                    error = f.exception()
        finally:
            for pool in self._pools:
                pool.shutdown(wait=True, cancel_futures=True)
        if exc_type is None and error is not None:
            raise error
        return False
