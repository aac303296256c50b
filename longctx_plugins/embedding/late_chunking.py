"""Late chunking for :class:`~longctx_plugins.LongContextEmbedder`: token states of a whole text read once (in
overlapping windows beyond ``target_length``), pooled per character span. It reads through the embedder's public
reading API, ``emb.reader`` (:class:`~.reader.Reader`), and its public settings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._checks import positive_int
from .chunking import chunk_spans
from .pooling import l2_normalize, span_means, span_token_ranges
from .windows import cover, most_context


def _windowed_states(emb, e) -> torch.Tensor:
    """States of one tokenised text longer than ``target_length``: overlapping windows of ``target_length`` tokens,
    each token's state from the window where it has the most context."""
    n = len(e.ids)
    reader = emb.reader
    pre, body, suf = reader.split_specials(e)
    n_prompt = int(np.sum(e.starts[len(pre) : len(pre) + len(body)] < 0))
    room = emb.target_length - len(pre) - len(suf) - n_prompt
    windows = cover(len(body) - n_prompt, room, min(emb.window_overlap, room - 1))
    owner = most_context(len(body) - n_prompt, windows, causal=emb.is_decoder)
    inputs = [np.concatenate([pre, body[:n_prompt], body[n_prompt + a : n_prompt + b], suf]) for a, b in windows]
    states = torch.empty(n, emb.dim, dtype=torch.float32, device=emb.device)
    first = len(pre) + n_prompt  # index of the text's first token in ``e.ids``
    for w, (a, b) in enumerate(windows):
        hidden, _ = reader.states([inputs[w]])
        mine = np.flatnonzero(owner[a:b] == w)
        idx = torch.as_tensor(mine, device=emb.device)
        states[first + a + idx] = hidden[0, first + idx]
        if w == 0:  # special / prompt tokens: from the first window
            states[:first] = hidden[0, :first]
    states[n - len(suf) :] = hidden[0, hidden.shape[1] - len(suf) :]
    return states


def token_states(emb, text: str, prompt: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Final hidden states of every token of ``prompt + text`` read whole (``[n, dim]`` float32 on the device)
    and each token's first character in ``text`` (-1 for special and prompt tokens). Texts longer than
    ``target_length`` are read in overlapping windows of ``target_length`` tokens; each token's state comes
    from the window where it has the most context."""
    prompt = emb.document_prompt if prompt is None else prompt
    e = emb.reader.tokenize([text], prompt, offsets=True)[0]
    if len(e.ids) <= emb.target_length:
        hidden, _ = emb.reader.states([e.ids])
        return hidden[0], e.starts
    return _windowed_states(emb, e), e.starts


def _ranges(text, e, arr):
    lo, hi = span_token_ranges(e.starts, arr)
    empty = np.flatnonzero(hi <= lo)
    if len(empty):
        k = int(empty[0])
        raise ValueError(
            f"spans[{k}] = ({arr[k, 0]}, {arr[k, 1]}) holds no token (text: "
            f"{text[arr[k, 0] : arr[k, 1]]!r}); a token belongs to the span with its first character."
        )
    return lo, hi


def encode_spans_many(
    emb,
    texts: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    prompt: str | None = None,
    batch_size: int | None = None,
) -> list[np.ndarray]:
    """:func:`encode_spans` for many texts at once: one tokenizer call, texts within ``target_length`` batched by
    the embedder's token budget (one forward pass each, spans pooled on the device), longer texts in windows; the
    vectors are copied to the host once at the end. Returns one ``[len(spans_i), dim]`` float32 array per text."""
    prompt = emb.document_prompt if prompt is None else prompt
    if len(texts) != len(spans):
        raise ValueError(f"got {len(texts)} texts but {len(spans)} span lists; give one list of spans per text.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}.")
    arrays = [_check_spans(t, s) for t, s in zip(texts, spans)]
    encoded = emb.reader.tokenize(list(texts), prompt, offsets=True)
    ranges = [_ranges(t, e, a) if len(a) else None for t, e, a in zip(texts, encoded, arrays)]
    out: list = [None] * len(texts)
    short = [i for i, e in enumerate(encoded) if len(e.ids) <= emb.target_length and ranges[i] is not None]
    for i, e in enumerate(encoded):  # longer texts: windows
        if ranges[i] is not None and i not in set(short):
            out[i] = span_means(_windowed_states(emb, e), *ranges[i])
    ids = [encoded[i].ids for i in short]

    def step(model, device, batch):
        hidden, _ = emb.reader.states([ids[j] for j in batch], model, device)
        T = hidden.shape[1]
        for row, j in enumerate(batch):
            i = short[j]
            shift = T - len(ids[j]) if emb.is_decoder else 0  # decoders' rows are padded on the left
            lo, hi = ranges[i]
            out[i] = span_means(hidden[row], lo + shift, hi + shift)

    if short:
        emb.reader.run(ids, step, batch_size or emb.batch_size, emb.max_batch_tokens)
    results = []
    for i, vec in enumerate(out):
        if vec is None:
            results.append(np.zeros((0, emb.dim), dtype=np.float32))
            continue
        v = vec.cpu().numpy()
        if emb.normalize:
            v = l2_normalize(v)
        results.append(v.astype(np.float32))
    return results


def encode_spans(emb, text: str, spans: Sequence[tuple[int, int]], prompt: str | None = None) -> np.ndarray:
    """Late chunking: one vector per character span ``[start, end)`` of ``text`` (``[len(spans), dim]`` float32),
    the mean of the final hidden states of the span's tokens after reading the whole text once (with the
    document prompt). A token belongs to the span that contains its first character; special and prompt tokens
    belong to none. L2-normalised when ``normalize``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    return encode_spans_many(emb, [text], [spans], prompt)[0]


def late_chunk(
    emb, texts: list[str], chunk_size: int = 256, chunk_overlap: int = 0, prompt: str | None = None
) -> list[dict]:
    """Split each text into sentence-aware chunks of at most ``chunk_size`` tokens (consecutive chunks sharing up
    to ``chunk_overlap`` tokens of whole sentences) and embed them by late chunking. Returns, per text,
    ``{"spans": [(start, end), ...], "texts": [...], "embeddings": ndarray [k, dim]}``."""
    size = positive_int("chunk_size", chunk_size)
    spans = []
    for e, text in zip(emb.reader.tokenize(list(texts), "", offsets=True), texts):
        spans.append(chunk_spans(text, e.starts[e.starts >= 0], size, chunk_overlap))
    vectors = encode_spans_many(emb, texts, spans, prompt)
    return [{"spans": s, "texts": [t[a:b] for a, b in s], "embeddings": v} for t, s, v in zip(texts, spans, vectors)]


def _check_spans(text: str, spans) -> np.ndarray:
    arr = []
    for k, span in enumerate(spans):
        try:
            start, end = span
        except (TypeError, ValueError):
            raise ValueError(f"spans[{k}] = {span!r} is not a (start, end) pair of character offsets.") from None
        if (
            isinstance(start, bool)
            or isinstance(end, bool)
            or not all(isinstance(v, (int, np.integer)) for v in (start, end))
        ):
            raise ValueError(f"spans[{k}] = {span!r}: offsets must be integers.")
        if not 0 <= start <= len(text) or not 0 <= end <= len(text):
            raise ValueError(f"spans[{k}] = ({start}, {end}) lies outside the text [0, {len(text)}].")
        if start >= end:
            raise ValueError(f"spans[{k}] = ({start}, {end}) is empty or reversed (start must be < end).")
        arr.append((int(start), int(end)))
    return np.asarray(arr, dtype=np.int64).reshape(-1, 2)
