"""Late chunking for :class:`~longctx_plugins.LongContextEmbedder`: token states of a whole text read once (in
overlapping windows beyond ``target_length``), pooled per character span."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .._checks import positive_int
from .chunking import chunk_spans
from .forward import hidden_states
from .pooling import span_means, span_token_ranges
from .windows import cover, most_context


def token_states(emb, text: str, prompt: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Final hidden states of every token of ``prompt + text`` read whole (``[n, dim]`` float32 on the device)
    and each token's first character in ``text`` (-1 for special and prompt tokens). Texts longer than
    ``target_length`` are read in overlapping windows of ``target_length`` tokens; each token's state comes
    from the window where it has the most context."""
    prompt = emb.document_prompt if prompt is None else prompt
    e = emb._tokenize([text], prompt, offsets=True)[0]
    n = len(e.ids)
    if n <= emb.target_length:
        hidden, _, _ = hidden_states(emb.model, [e.ids], emb.device, emb._pad_id, emb.is_decoder)
        return hidden[0], e.starts
    pre, body, suf = emb._split_specials(e)
    n_prompt = int(np.sum(e.starts[len(pre): len(pre) + len(body)] < 0))
    room = emb.target_length - len(pre) - len(suf) - n_prompt
    windows = cover(len(body) - n_prompt, room, min(emb.window_overlap, room - 1))
    owner = most_context(len(body) - n_prompt, windows, causal=emb.is_decoder)
    inputs = [np.concatenate([pre, body[:n_prompt], body[n_prompt + a: n_prompt + b], suf]) for a, b in windows]
    states = torch.empty(n, emb.dim, dtype=torch.float32, device=emb.device)
    first = len(pre) + n_prompt  # index of the text's first token in ``e.ids``
    for w, (a, b) in enumerate(windows):
        hidden, _, _ = hidden_states(emb.model, [inputs[w]], emb.device, emb._pad_id, emb.is_decoder)
        mine = np.flatnonzero(owner[a:b] == w)
        idx = torch.as_tensor(mine, device=emb.device)
        states[first + a + idx] = hidden[0, first + idx]
        if w == 0:  # special / prompt tokens: from the first window
            states[:first] = hidden[0, :first]
    states[n - len(suf):] = hidden[0, hidden.shape[1] - len(suf):]
    return states, e.starts

def encode_spans(emb, text: str, spans: Sequence[tuple[int, int]], prompt: str | None = None) -> np.ndarray:
    """Late chunking: one vector per character span ``[start, end)`` of ``text`` (``[len(spans), dim]`` float32),
    the mean of the final hidden states of the span's tokens after reading the whole text once (with the
    document prompt). A token belongs to the span that contains its first character; special and prompt tokens
    belong to none. L2-normalised when ``normalize``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    arr = _check_spans(text, spans)
    if not len(arr):
        return np.zeros((0, emb.dim), dtype=np.float32)
    states, starts = emb.token_states(text, prompt)
    lo, hi = span_token_ranges(starts, arr)
    empty = np.flatnonzero(hi <= lo)
    if len(empty):
        k = int(empty[0])
        raise ValueError(f"spans[{k}] = ({arr[k, 0]}, {arr[k, 1]}) holds no token (text: "
                         f"{text[arr[k, 0]:arr[k, 1]]!r}); a token belongs to the span with its first character.")
    vectors = span_means(states, lo, hi).cpu().numpy()
    if emb.normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    return vectors.astype(np.float32)

def late_chunk(emb, texts: list[str], chunk_size: int = 256, chunk_overlap: int = 0,
               prompt: str | None = None) -> list[dict]:
    """Split each text into sentence-aware chunks of at most ``chunk_size`` tokens (consecutive chunks sharing up
    to ``chunk_overlap`` tokens of whole sentences) and embed them by late chunking. Returns, per text,
    ``{"spans": [(start, end), ...], "texts": [...], "embeddings": ndarray [k, dim]}``."""
    out = []
    for text in texts:
        starts = emb._tokenize([text], "", offsets=True)[0].starts
        spans = chunk_spans(text, starts[starts >= 0], positive_int("chunk_size", chunk_size), chunk_overlap)
        out.append({"spans": spans, "texts": [text[a:b] for a, b in spans],
                    "embeddings": emb.encode_spans(text, spans, prompt)})
    return out


def _check_spans(text: str, spans) -> np.ndarray:
    arr = []
    for k, span in enumerate(spans):
        try:
            start, end = span
        except (TypeError, ValueError):
            raise ValueError(f"spans[{k}] = {span!r} is not a (start, end) pair of character offsets.") from None
        if isinstance(start, bool) or isinstance(end, bool) or not all(isinstance(v, (int, np.integer))
                                                                      for v in (start, end)):
            raise ValueError(f"spans[{k}] = {span!r}: offsets must be integers.")
        if not 0 <= start <= len(text) or not 0 <= end <= len(text):
            raise ValueError(f"spans[{k}] = ({start}, {end}) lies outside the text [0, {len(text)}].")
        if start >= end:
            raise ValueError(f"spans[{k}] = ({start}, {end}) is empty or reversed (start must be < end).")
        arr.append((int(start), int(end)))
    return np.asarray(arr, dtype=np.int64).reshape(-1, 2)
