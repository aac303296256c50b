"""``LongContextEmbedder``: embed whole long documents (and chunks of them) with a training-free extended model.

The pieces live in :mod:`longctx_plugins.embedding`: loading (model, tokenizer, sentence-transformers settings),
tokenisation, batching and the multi-device scheduler, the encode pipeline (the next block of texts tokenised while
the device reads the current one), the forward pass, pooling, windows and chunking. This class ties them together and
holds the user's settings, validated once here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from . import _warn
from ._checks import positive_int
from .embedding import batching, encoding, late_chunking
from .embedding.loading import DEFAULT_MODEL, default_model_path, load
from .embedding.pooling import POOLING_MODES, l2_normalize
from .embedding.reader import Reader
from .embedding.tokenization import Encoded
from .embedding.windows import cover, reading_window
from .extension import check_target_length, extend
from .positions.catalog import DECODER_MODEL_TYPES

logger = logging.getLogger(__name__)
__all__ = ["LongContextEmbedder", "default_model_path", "DEFAULT_MODEL", "OVERLENGTH_POLICIES"]

# What encode() does with a text longer than target_length: cut it (with a warning), refuse, or read it whole in
# overlapping windows of target_length tokens and average the window vectors.
OVERLENGTH_POLICIES = ("truncate", "error", "windows")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or texts is None or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}; wrap a single text as [text].")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}.")
    return list(texts)


class LongContextEmbedder:
    """Embed long texts with an extended embedding model.

    Args:
        model_name_or_path: a local folder, a hub id, ``"default"`` (the bundled all-MiniLM-L6-v2), or a loaded
            ``SentenceTransformer``.
        method: ``auto`` | ``none`` | ``pi`` | ``gp`` | ``rp`` | ``pcw`` (absolute positions) | ``ntk`` |
            ``self_extend`` (RoPE); see :func:`longctx_plugins.extend`.
        target_length: the longest input read in one pass, in tokens (special tokens and prompt included).
        pooling: ``mean`` | ``cls`` | ``lasttoken`` | ``max``; None: the model folder's sentence-transformers pooling,
            else mean for encoders and the last token for decoders.
        normalize: L2-normalise the vectors.
        device, dtype: default CUDA + float16 when available, else CPU + float32.
        batch_size: most texts per forward pass; ``max_batch_tokens`` caps the padded tokens of one pass (default:
            2048 on CPU, 32768 on CUDA: long texts run alone, without a padding mask).
        query_prompt, document_prompt: prefixes; None takes the model folder's prompts.
        overlength: texts longer than ``target_length`` in :meth:`encode`: ``"truncate"`` (with a warning),
            ``"error"``, or ``"windows"`` (overlapping windows of ``target_length`` tokens, mean of their vectors).
        window_overlap: tokens shared by consecutive windows (default ``target_length // 4``).
        **from_pretrained_kwargs: passed to ``AutoModel.from_pretrained`` (``revision``, ``trust_remote_code``, ...).

    ``reader`` (:class:`~longctx_plugins.embedding.reader.Reader`) is the public token-level API the embedder and late
    chunking read through: tokenisation with character offsets, forward token states, pooling, batched runs.
    """

    def __init__(
        self,
        model_name_or_path: Any = DEFAULT_MODEL,
        method: str = "auto",
        target_length: int = 8192,
        pooling: str | None = None,
        normalize: bool | None = True,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 8,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        overlength: str = "truncate",
        window_overlap: int | None = None,
        max_batch_tokens: int | None = None,
        show_progress_bar: bool | None = None,
        truncate: bool | None = None,
        **from_pretrained_kwargs,
    ):
        from .attention.support import check_attention

        self.batch_size = positive_int("batch_size", batch_size)
        target_length = check_target_length(target_length)
        if truncate is not None:  # the earlier spelling: truncate=False == overlength="error"
            overlength = "truncate" if truncate else "error"
        if overlength not in OVERLENGTH_POLICIES:
            raise ValueError(f"overlength must be one of {OVERLENGTH_POLICIES}, got {overlength!r}.")
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}.")
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        batching.check_devices([self.device])
        self.max_batch_tokens = (
            positive_int("max_batch_tokens", max_batch_tokens)
            if max_batch_tokens is not None
            else batching.default_max_tokens(self.device)
        )
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)

        loaded = load(model_name_or_path, from_pretrained_kwargs)
        model, info = loaded.model, loaded.info
        self.model_name_or_path, self.tokenizer = loaded.path, loaded.tokenizer
        check_attention(model)
        self.is_decoder = (
            bool(getattr(model.config, "is_decoder", False)) or model.config.model_type in DECODER_MODEL_TYPES
        )
        self.asked_target_length = target_length
        self.extension = reading_window(model.config, method, target_length)
        self.position_type, self.trained_length = self.extension.position_type, self.extension.trained_length
        self.method, self.target_length = self.extension.method, self.extension.target_length
        if getattr(model.config, "longctx_ape", None):  # an already-extended checkpoint
            from .positions.ape import attach

            attach(model)
        elif self.extension.changes_model:
            extend(model, self.extension)
        self.overlength = overlength
        self.window_overlap = self.target_length // 4 if window_overlap is None else int(window_overlap)
        cover(self.target_length + 1, self.target_length, self.window_overlap)  # validates the overlap now
        if pooling is None and info.pooling_unreadable:
            raise ValueError(
                f"{loaded.path}: its sentence-transformers Pooling module uses a mode this package does "
                f"not implement; pass pooling= one of {POOLING_MODES}."
            )
        self.pooling = pooling or info.pooling or ("lasttoken" if self.is_decoder else "mean")
        self.normalize = bool(
            info.normalize
            if normalize is None and info.normalize is not None
            else (True if normalize is None else normalize)
        )
        self.query_prompt = query_prompt if query_prompt is not None else info.prompts.get("query", "")
        self.document_prompt = (
            document_prompt
            if document_prompt is not None
            else info.prompts.get("document", info.prompts.get("passage", ""))
        )
        self.show_progress_bar = show_progress_bar
        self.model = model.to(self.device, self.dtype).eval()
        # lengths are ours to handle (target_length): silence the tokenizer's "longer than model_max_length" note
        self.tokenizer.model_max_length = max(int(getattr(self.tokenizer, "model_max_length", 0) or 0), 10**9)
        # tokenisation, forward passes, pooling and batching over devices: the public reading API (late chunking)
        self.reader = Reader(self.model, self.tokenizer, self.device, self.is_decoder)
        self._warned_truncation = False

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str], prompt: str = "") -> list[list[int]]:
        """Token ids of ``prompt + text`` for each text, special tokens included (never truncated)."""
        return [e.ids.tolist() for e in self.reader.tokenize(_check_texts(texts), prompt)]

    # ------------------------------------------------------------------------------------------------- encode
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        prompt: str = "",
        devices: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; returns a float32 array ``[n, dim]`` (L2-normalised when ``normalize``).

        Identical texts are embedded once. ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) spreads the batches over one
        model replica per device, balanced by tokens; results equal a single-device run.
        """
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        show = self._show_progress(show_progress_bar, len(unique))
        pieces = partial(self._pieces, prompt=prompt)
        vectors = encoding.embed_texts(self, unique, prompt, pieces, batch_size or self.batch_size, devices, show)
        if self.normalize:
            vectors = l2_normalize(vectors)
        index = {t: i for i, t in enumerate(unique)}
        return vectors[[index[t] for t in texts]].astype(np.float32)

    def encode_queries(self, texts, **kw) -> np.ndarray:
        return self.encode(texts, prompt=self.query_prompt, **kw)

    def encode_documents(self, texts, **kw) -> np.ndarray:
        return self.encode(texts, prompt=self.document_prompt, **kw)

    def _pieces(self, e: Encoded, index: int, prompt: str) -> list[np.ndarray]:
        """The inputs one text is embedded from: itself, or (pcw / windows / truncate) parts of it."""
        if self.method == "pcw":  # trained-size windows, averaged (LongEmbed's parallel context windows)
            return self._windows(e, self.trained_length, 0, prompt)
        if len(e.ids) <= self.target_length:
            return [e.ids]
        if self.overlength == "error":
            raise ValueError(
                f"text {index} has {len(e.ids)} tokens, more than target_length={self.target_length}; "
                "raise target_length, or pass overlength='windows' (read it whole in overlapping "
                "windows) or overlength='truncate'."
            )
        if self.overlength == "windows":
            return self._windows(e, self.target_length, self.window_overlap, prompt)
        if not self._warned_truncation:
            self._warned_truncation = True
            why = (
                "target_length"
                if self.target_length == self.asked_target_length
                else (
                    f"method {self.method!r} reads at most {self.target_length} tokens"
                    f"{' (the trained window)' if self.method == 'none' else ''}; "
                    f"target_length={self.asked_target_length} "
                    "was asked"
                )
            )
            _warn.warn(
                f"LongContextEmbedder: texts longer than {self.target_length} tokens ({why}) are truncated "
                f"(first: text {index}, {len(e.ids)} tokens). LongContextEmbedder(overlength='windows') reads "
                "them whole in overlapping windows; overlength='error' refuses them."
            )
        pre, body, suf = self.reader.split_specials(e)
        return [np.concatenate([pre, body[: self.target_length - len(pre) - len(suf)], suf])]

    def _windows(self, e: Encoded, size: int, overlap: int, prompt: str) -> list[np.ndarray]:
        pre, body, suf = self.reader.split_specials(e)
        n_prompt = self.reader.prompt_tokens(prompt)
        head, rest = body[:n_prompt], body[n_prompt:]
        room = size - len(pre) - len(suf) - len(head)
        if room < 1:
            raise ValueError(f"a window of {size} tokens has no room for text after the special tokens and prompt.")
        return [np.concatenate([pre, head, rest[a:b], suf]) for a, b in cover(len(rest), room, min(overlap, room - 1))]

    # -------------------------------------------------------------------------------------------- forward runs
    def embed_token_ids(
        self,
        ids: Sequence[Sequence[int]] | Sequence[np.ndarray],
        normalize: bool | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        devices: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Pooled vectors ``[n, dim]`` of already tokenised inputs (special tokens included, used as given)."""
        arrays = [np.asarray(x, dtype=np.int64) for x in ids]
        show = self._show_progress(show_progress_bar, len(arrays))
        vectors = encoding.embed_ids(self, arrays, batch_size or self.batch_size, devices, show)
        if self.normalize if normalize is None else normalize:
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32)

    def _show_progress(self, asked: bool | None, n: int) -> bool:
        show = self.show_progress_bar if asked is None else asked
        if show is None:
            show = n > 256 and logger.getEffectiveLevel() <= logging.INFO
        return bool(show)

    # ------------------------------------------------------------------------------------------- late chunking
    def token_states(self, text: str, prompt: str | None = None):
        """Final hidden states of every token of ``prompt + text`` read whole (``[n, dim]`` float32 on the device)
        and each token's first character in ``text`` (-1 for special and prompt tokens); see
        :func:`longctx_plugins.embedding.late_chunking.token_states`."""
        return late_chunking.token_states(self, text, prompt)

    def encode_spans(self, text: str, spans: Sequence[tuple[int, int]], prompt: str | None = None) -> np.ndarray:
        """Late chunking: one vector per character span ``[start, end)`` of ``text`` (``[len(spans), dim]`` float32),
        the mean of the final hidden states of the span's tokens after reading the whole text once (with the
        document prompt; beyond ``target_length`` in overlapping windows). A token belongs to the span that contains
        its first character; special and prompt tokens belong to none. L2-normalised when ``normalize``."""
        return late_chunking.encode_spans(self, text, spans, prompt)

    def encode_spans_many(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        prompt: str | None = None,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """:meth:`encode_spans` for many texts in batched forward passes: one ``[len(spans_i), dim]`` array per
        text, the same vectors as one call per text."""
        return late_chunking.encode_spans_many(self, _check_texts(texts), spans, prompt, batch_size)

    def late_chunk(
        self, texts: Sequence[str], chunk_size: int = 256, chunk_overlap: int = 0, prompt: str | None = None
    ) -> list[dict]:
        """Split each text into sentence-aware chunks of at most ``chunk_size`` tokens (consecutive chunks sharing up
        to ``chunk_overlap`` tokens of whole sentences) and embed them by late chunking. Returns, per text,
        ``{"spans": [(start, end), ...], "texts": [...], "embeddings": ndarray [k, dim]}``."""
        return late_chunking.late_chunk(self, _check_texts(texts), chunk_size, chunk_overlap, prompt)


_MOVED = {"get_embedder", "clear_shared", "SHARED_MAX"}


def __getattr__(name: str):
    """``get_embedder``, ``clear_shared`` and ``SHARED_MAX`` live in :mod:`longctx_plugins.shared` (above this module,
    which they build on); the old names here keep working with a DeprecationWarning."""
    if name in _MOVED:
        import warnings

        from . import shared

        warnings.warn(
            f"longctx_plugins.embedder.{name} moved to longctx_plugins.shared.{name}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(shared, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
