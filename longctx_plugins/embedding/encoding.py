"""Pooled vectors of many inputs with little host work per text: what :meth:`LongContextEmbedder.encode` and
:meth:`~LongContextEmbedder.embed_token_ids` run.

* Texts are tokenised in blocks (texts of similar length, about ``BLOCK_BATCHES`` batches each; one batch call of the
  fast tokenizer per block) and the next block is tokenised in a worker thread while the device reads the current one
  (:mod:`.prefetch`).
* Each block's inputs are planned into token-budget batches and read at once (:meth:`.Reader.stream`); the pooled
  vectors stay on their device, and are copied to the host once per device at the end, so nothing in the loop waits
  for the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import batching
from .prefetch import prefetched
from .reader import Reader
from .tokenization import Encoded

BLOCK_BATCHES = 4  # a tokenisation block holds about this many batches of texts ...
CHARS_PER_TOKEN = 4  # ... estimated from their characters (sizes blocks only; batches use the real token counts)


def text_blocks(texts: Sequence[str], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of ``texts`` in tokenisation blocks, longest texts first (see :func:`.batching.blocks`)."""
    return batching.blocks(
        [len(t) for t in texts], BLOCK_BATCHES * batch_size, BLOCK_BATCHES * max_batch_tokens * CHARS_PER_TOKEN
    )


class Pooled:
    """The ``step`` of a :class:`.reader.Stream` that pools each batch's states by ``mode`` and keeps the vectors on
    the device; :meth:`to_numpy` copies them to the host, once per device."""

    def __init__(self, reader: Reader, mode: str):
        self.reader, self.mode = reader, mode
        self.ids: list[np.ndarray] = []  # the stream's inputs (set once the stream exists)
        self.parts: list[tuple[list[int], torch.Tensor]] = []  # (input indices, vectors [b, H]) per batch

    def __call__(self, model, device: torch.device, batch: list[int]) -> None:
        hidden, mask = self.reader.states([self.ids[i] for i in batch], model, device)
        self.parts.append((batch, self.reader.pool(hidden, mask, self.mode)))

    def to_numpy(self, n: int, dim: int) -> np.ndarray:
        vectors = np.zeros((n, dim), dtype=np.float32)
        for device in {v.device for _, v in self.parts}:
            mine = [(rows, v) for rows, v in self.parts if v.device == device]
            rows = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in mine])
            vectors[rows] = torch.cat([v for _, v in mine]).cpu().numpy()
        return vectors


def embed_ids(emb, arrays: Sequence[np.ndarray], batch_size: int, devices=None, progress=False) -> np.ndarray:
    """Pooled vectors ``[n, dim]`` float32 (not normalised) of token-id arrays, read by ``emb.reader`` in one stream
    with the embedder's pooling and token budget."""
    pooled = Pooled(emb.reader, emb.pooling)
    with emb.reader.stream(pooled, batch_size, emb.max_batch_tokens, devices, progress, len(arrays)) as stream:
        pooled.ids = stream.ids
        stream.add(arrays)
    return pooled.to_numpy(len(arrays), emb.dim)


def embed_texts(
    emb,
    texts: Sequence[str],
    prompt: str,
    pieces: Callable[[Encoded, int], list[np.ndarray]],
    batch_size: int,
    devices: Sequence[str] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``[len(texts), dim]`` float32 (not normalised): for each text ``i`` the mean of the pooled vectors of the
    inputs ``pieces(encoded, i)`` makes of it (itself, or windows of it). ``prompt + text`` is tokenised block by
    block, one block ahead of the forward passes; the blocks go longest texts first."""
    reader = emb.reader
    pooled = Pooled(reader, emb.pooling)
    owner: list[int] = []

    def tokenize(block: list[int]) -> list[Encoded]:
        return reader.tokenize([texts[i] for i in block], prompt)

    blocks = text_blocks(texts, batch_size, emb.max_batch_tokens)
    with (
        prefetched(tokenize, blocks) as tokenized,
        reader.stream(pooled, batch_size, emb.max_batch_tokens, devices, progress, total=len(texts)) as stream,
    ):
        pooled.ids = stream.ids
        for block, encoded in tokenized:
            arrays: list[np.ndarray] = []
            for i, e in zip(block, encoded):
                for piece in pieces(e, i):
                    arrays.append(piece)
                    owner.append(i)
            stream.add(arrays)
    vectors = pooled.to_numpy(len(owner), emb.dim)
    if len(owner) == len(texts):  # one input per text
        out = np.empty_like(vectors)
        out[owner] = vectors
        return out
    sums = np.zeros((len(texts), emb.dim), dtype=np.float64)  # windows: the mean of each text's window vectors
    np.add.at(sums, owner, vectors)
    return (sums / np.bincount(owner, minlength=len(texts))[:, None]).astype(np.float32)
