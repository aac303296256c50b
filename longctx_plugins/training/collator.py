"""``AnchorPackingCollator``: greedy packing of tokenized documents into AnchorAttention windows.

Each output row is one window ``[A, d1..., d2..., ...]`` with a single anchor A at index 0, padded at the end:

* ``input_ids`` / ``attention_mask`` ``[B, T]`` (1 = real token, 0 = padding);
* ``position_ids`` ``[B, T]``: continuous ``0..T-1`` (the anchor has position 0; never reset per document);
* ``labels`` ``[B, T]``: ``input_ids`` with -100 at the anchor, at each document's first token (it would be
  predicted from the previous document) and at padding;
* ``cu_seq_lens_q`` = ``cu_seq_lens_k`` (int32): segment boundaries over the ``B * T`` tokens laid end to end,
  the form of HF's ``DataCollatorWithFlattening``: each row starts with a length-1 anchor segment, then one
  segment per document, then (if padded) one padding segment; ``max_length_q`` / ``max_length_k`` (int).

The "anchor" attention reads ``cu_seq_lens_*``; ``Trainer`` passes them to the model unchanged.

With ``sequence_parallel_size=N > 1`` (DeepSpeed Ulysses, :mod:`longctx_plugins.training.sequence_parallel`) the
window length is padded to a multiple of N and ``cu_seq_lens_*`` are tuples of ints: DeepSpeed's data-loader
adapter shards every ``[B, T]`` tensor along T, and the boundaries must reach the attention whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from .._checks import positive_int

logger = logging.getLogger(__name__)


class AnchorPackingCollator:
    """Pack documents (features with ``input_ids``) into windows of at most ``max_length`` tokens.

    Args:
        tokenizer: used for the anchor (BOS, else EOS) and padding ids; may be None if both ids are given.
        max_length: window length T (anchor included), >= 2.
        anchor_token_id: override the anchor token.
        pad_token_id: override the padding id (default: tokenizer pad, else EOS, else 0).
        drop_leading_bos: drop a document's own leading BOS (the shared anchor replaces it).
        split_long_documents: split a document longer than ``max_length - 1`` into pieces (each its own
            document); if False such a document raises ``ValueError``.
        skip_empty: skip empty documents (with a warning) instead of raising ``ValueError``.
        padding: "longest" (pad rows to the longest row) or "max_length" (always ``max_length``; one shape for
            compiled kernels).
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. 128 for FlexAttention).
        sequence_parallel_size: the Ulysses sequence-parallel degree N: pads windows to a multiple of N and emits
            the boundaries as tuples (see the module docstring). 1 (default): plain tensors.
    """

    def __init__(
        self,
        tokenizer=None,
        max_length: int = 32768,
        anchor_token_id: int | None = None,
        pad_token_id: int | None = None,
        drop_leading_bos: bool = True,
        split_long_documents: bool = True,
        skip_empty: bool = False,
        padding: str = "longest",
        pad_to_multiple_of: int | None = None,
        sequence_parallel_size: int = 1,
        return_tensors: str = "pt",
    ):
        positive_int("max_length", max_length, 2, why="anchor + at least one token")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}.")
        positive_int("sequence_parallel_size", sequence_parallel_size)
        if padding == "max_length" and max_length % sequence_parallel_size:
            raise ValueError(
                f"padding='max_length' with sequence_parallel_size={sequence_parallel_size}: max_length={max_length} "
                "must be a multiple of it (every rank gets an equal slice). Pick such a max_length or "
                "padding='longest'."
            )
        if return_tensors != "pt":
            raise ValueError("AnchorPackingCollator returns PyTorch tensors only (return_tensors='pt').")
        bos = getattr(tokenizer, "bos_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        if anchor_token_id is None:
            anchor_token_id = bos if bos is not None else eos
        if anchor_token_id is None:
            raise ValueError(
                "AnchorPackingCollator needs an anchor token: the tokenizer has neither a BOS nor an EOS token. "
                "Pass anchor_token_id=<id of a semantically empty token>."
            )
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
            pad_token_id = eos if pad_token_id is None else pad_token_id
            pad_token_id = 0 if pad_token_id is None else pad_token_id
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.anchor_token_id = int(anchor_token_id)
        self.pad_token_id = int(pad_token_id)
        self.bos_token_id = bos
        self.drop_leading_bos = drop_leading_bos
        self.split_long_documents = split_long_documents
        self.skip_empty = skip_empty
        self.padding = padding
        self.pad_to_multiple_of = pad_to_multiple_of
        self.sequence_parallel_size = sequence_parallel_size

    # ------------------------------------------------------------------------------------------- packing
    def _documents(self, features: Sequence[Any]) -> list[list[int]]:
        capacity = self.max_length - 1
        docs: list[list[int]] = []
        for index, feature in enumerate(features):
            ids = _token_ids(feature, index)
            if self.drop_leading_bos and ids and self.bos_token_id is not None and ids[0] == self.bos_token_id:
                ids = ids[1:]
            if not ids:
                if self.skip_empty:
                    logger.warning("AnchorPackingCollator: document %d is empty; skipped.", index)
                    continue
                raise ValueError(
                    f"AnchorPackingCollator: document {index} is empty (after dropping its BOS). Filter empty "
                    "documents out, or pass skip_empty=True."
                )
            if len(ids) > capacity and not self.split_long_documents:
                raise ValueError(
                    f"AnchorPackingCollator: document {index} has {len(ids)} tokens, more than the window holds "
                    f"({capacity} = max_length - 1 for the anchor). Pass split_long_documents=True or raise max_length."
                )
            docs.extend(ids[i : i + capacity] for i in range(0, len(ids), capacity))
        return docs

    def pack(self, features: Sequence[Any]) -> list[list[list[int]]]:
        """Greedy first-fit packing in order: returns windows, each a list of documents (anchor not included)."""
        capacity = self.max_length - 1
        windows: list[list[list[int]]] = []
        free: list[int] = []
        for doc in self._documents(features):
            for w, room in enumerate(free):
                if len(doc) <= room:
                    windows[w].append(doc)
                    free[w] -= len(doc)
                    break
            else:
                windows.append([doc])
                free.append(capacity - len(doc))
        return windows

    def __call__(self, features: Sequence[Any]) -> dict[str, Any]:
        windows = self.pack(features)
        if not windows:
            raise ValueError("AnchorPackingCollator: no documents to pack in this batch.")
        real = [1 + sum(len(d) for d in w) for w in windows]
        length = self.max_length if self.padding == "max_length" else max(real)
        if self.padding == "longest":
            multiple = math.lcm(self.pad_to_multiple_of or 1, self.sequence_parallel_size)
            length = -(-length // multiple) * multiple
        batch = len(windows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        cu = [0]
        for r, window in enumerate(windows):
            start = r * length
            input_ids[r, 0] = self.anchor_token_id
            cu.append(start + 1)
            pos = 1
            for doc in window:
                t = torch.tensor(doc, dtype=torch.long)
                input_ids[r, pos : pos + len(doc)] = t
                labels[r, pos + 1 : pos + len(doc)] = t[1:]
                pos += len(doc)
                cu.append(start + pos)
            attention_mask[r, :pos] = 1
            if pos < length:
                cu.append(start + length)
        cu_t = torch.tensor(cu, dtype=torch.int32)
        max_seg = int((cu_t[1:] - cu_t[:-1]).max())
        if self.sequence_parallel_size > 1:
            cu_t = tuple(cu)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": torch.arange(length, dtype=torch.long)[None].expand(batch, -1).clone(),
            "labels": labels,
            "cu_seq_lens_q": cu_t,
            "cu_seq_lens_k": cu_t,
            "max_length_q": max_seg,
            "max_length_k": max_seg,
        }


def _token_ids(feature: Any, index: int) -> list[int]:
    """The token ids of one feature (a mapping with ``input_ids``, or a sequence of ids), or a ValueError naming the
    feature and what it holds."""
    if isinstance(feature, dict) or hasattr(feature, "keys"):
        if "input_ids" not in feature:
            raise ValueError(
                f"AnchorPackingCollator: feature {index} has no 'input_ids' (keys: {sorted(feature)}). "
                "Tokenise the dataset first, e.g. dataset.map(lambda x: tokenizer(x['text']))."
            )
        feature = feature["input_ids"]
    if hasattr(feature, "tolist"):  # torch tensors, numpy arrays
        feature = feature.tolist()
    if (
        isinstance(feature, (str, bytes))
        or not isinstance(feature, (list, tuple))
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in feature)
    ):
        shown = repr(feature)[:60]
        raise ValueError(
            f"AnchorPackingCollator: feature {index} must be token ids (a list of ints, or a mapping with "
            f"'input_ids'), got {type(feature).__name__} {shown}. Tokenise the text first."
        )
    return list(feature)
