"""``Reader``: how :class:`~longctx_plugins.LongContextEmbedder` reads token ids with its model, as one small public
API.

The embedder owns one (``embedder.reader``); the embedder itself and late chunking (:mod:`.late_chunking`) read
through it, so code that needs token-level access (span pooling, custom windows) needs no private member:

* :meth:`Reader.tokenize`: ``prompt + text`` -> :class:`~.tokenization.Encoded` (ids with special tokens, and with
  ``offsets=True`` each token's first character in the text); :meth:`Reader.split_specials` cuts one into
  (leading special tokens, body, trailing special tokens).
* :meth:`Reader.states`: the final hidden states of one padded batch (one forward pass).
* :meth:`Reader.pool`: one vector per row of such states.
* :meth:`Reader.run`: a ``step(model, device, batch)`` over many inputs, in token-budget batches spread over one model
  replica per device; :meth:`Reader.stream` the same for inputs handed over block by block (a block's batches start
  while the next block is still being tokenised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._checks import positive_int
from . import batching
from .forward import hidden_states
from .pooling import pool
from .tokenization import Encoded, Tokenization


class Reader:
    """Reads token ids with ``model`` (on ``device``; rows padded on the left when ``is_decoder``).

    Attributes:
        model, device, is_decoder: what is read with, as given.
        tokenization: the :class:`~.tokenization.Tokenization` of ``tokenizer`` (``prefix`` / ``suffix``: the special
            tokens it wraps every text in, None when it does not wrap every text the same way).
        pad_id: the id padded rows are filled with (the tokenizer's pad token, else 0).
        replicas: ``{device: model copy}`` made by :meth:`replica` for devices other than ``device``.
    """

    def __init__(self, model, tokenizer, device: torch.device, is_decoder: bool):
        self.model, self.device, self.is_decoder = model, device, is_decoder
        self.tokenization = Tokenization(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.replicas: dict[torch.device, Any] = {}
        self._prompt_counts: dict[str, int] = {}  # by prompt text (this reader's tokenizer is fixed)

    # ---------------------------------------------------------------------------------------------- tokenising
    def tokenize(self, texts: list[str], prompt: str = "", offsets: bool = False) -> list[Encoded]:
        """``prompt + text`` for each text, special tokens included, never truncated. With ``offsets``, ``starts[i]``
        is the character of ``text`` (prompt excluded) where token i starts, -1 for special and prompt tokens."""
        return self.tokenization(texts, prompt, offsets=offsets)

    def split_specials(self, e: Encoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(leading special tokens, body, trailing special tokens)`` of one encoded text; the body holds the prompt's
        tokens, then the text's."""
        n_pre, n_suf = len(self.tokenization.prefix), len(self.tokenization.suffix)
        return e.ids[:n_pre], e.ids[n_pre : len(e.ids) - n_suf], e.ids[len(e.ids) - n_suf :]

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens ``prompt`` adds in front of a text (0 for no prompt)."""
        if not prompt:
            return 0
        if prompt not in self._prompt_counts:  # counted once, not once per text
            t = self.tokenization
            self._prompt_counts[prompt] = len(t([""], prompt)[0].ids) - len(t.prefix) - len(t.suffix)
        return self._prompt_counts[prompt]

    # ------------------------------------------------------------------------------------------------- reading
    def states(self, batch: Sequence[np.ndarray], model=None, device: torch.device | None = None):
        """``(hidden [B, T, H] float32, mask [B, T])`` on the device: one padded forward pass over ``batch`` (token-id
        arrays) with ``model`` on ``device`` (default: this reader's). Rows are padded on the left when
        ``is_decoder``, else on the right. No host synchronisation: results stay on the device."""
        hidden, mask, _ = hidden_states(
            self.model if model is None else model,
            list(batch),
            self.device if device is None else device,
            self.pad_id,
            self.is_decoder,
        )
        return hidden, mask

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
        """``[B, H]``: each row of :meth:`states` pooled by ``mode`` (see :func:`.pooling.pool`)."""
        return pool(hidden, mask, mode, left_padded=self.is_decoder)

    def replica(self, device: torch.device):
        """The model on ``device``: the reader's own for its device, else a copy made once per device."""
        if device == self.device:
            return self.model
        if device not in self.replicas:
            import copy

            self.replicas[device] = copy.deepcopy(self.model).to(device)
        return self.replicas[device]

    def run(
        self,
        ids: Sequence[np.ndarray],
        step: Callable,
        batch_size: int,
        max_batch_tokens: int,
        devices: Sequence[str] | None = None,
        progress: bool = False,
    ) -> None:
        """Call ``step(model, device, batch)`` (``batch``: indices into ``ids``) for batches of at most
        ``batch_size`` inputs and ``max_batch_tokens`` padded tokens, longest first, balanced by tokens over one model
        replica per device of ``devices`` (default: the reader's device; several run in threads). ``progress``
        shows a bar counting inputs."""
        with self.stream(step, batch_size, max_batch_tokens, devices, progress, total=len(ids)) as stream:
            stream.add(ids)

    def stream(
        self,
        step: Callable,
        batch_size: int,
        max_batch_tokens: int,
        devices: Sequence[str] | None = None,
        progress: bool = False,
        total: int = 0,
    ) -> Stream:
        """:meth:`run` for inputs handed over in blocks: ``with reader.stream(step, ...) as s: s.add(block)``. Each
        block is planned into batches on its own (longest first) and its steps start at once (several devices: queued
        to one worker thread per device, balanced by the tokens of every block so far); ``batch`` indexes ``s.ids``,
        every input added so far. Leaving the ``with`` block waits for every step and re-raises a step's exception.
        ``total``: the inputs expected, for the progress bar (it grows when more are added)."""
        return Stream(self, step, positive_int("batch_size", batch_size), max_batch_tokens, devices, progress, total)


class Stream:
    """Token-budget batches of inputs handed over block by block (see :meth:`Reader.stream`)."""

    def __init__(
        self, reader: Reader, step: Callable, batch_size: int, max_batch_tokens: int, devices, progress, total
    ):
        self.devices = batching.check_devices(devices) if devices is not None else [reader.device]
        self.step, self.batch_size, self.max_batch_tokens = step, batch_size, max_batch_tokens
        self.ids: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.models = [reader.replica(d) for d in self.devices]
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not progress, desc="encode", unit="text")
        self.runner = batching.Runner(len(self.devices), self._run_one)

    def _run_one(self, d: int, batch: list[int]) -> None:
        self.step(self.models[d], self.devices[d], batch)
        self.bar.update(len(batch))

    def add(self, ids: Sequence[np.ndarray]) -> None:
        """Plan ``ids`` into batches and start (or queue) their steps; they are ``self.ids[len(self.ids) - len(ids):]``
        from now on."""
        start = len(self.ids)
        self.ids.extend(ids)
        self.lengths.extend(len(x) for x in ids)
        if len(self.ids) > (self.bar.total or 0):
            self.bar.total = len(self.ids)
            self.bar.refresh()
        batches = batching.plan(self.lengths[start:], self.batch_size, self.max_batch_tokens)
        self.runner.spread([[start + i for i in b] for b in batches], self.lengths)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            return self.runner.__exit__(exc_type, exc, tb)
        finally:
            self.bar.close()
