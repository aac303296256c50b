"""Late chunking for :class:`~longctx_plugins.LongContextEmbedder`: token states of a whole text read once (in
overlapping windows beyond ``target_length``), pooled per character span. It reads through the embedder's public
reading API, ``emb.reader`` (:class:`~.reader.Reader`), and its public settings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._checks import positive_int
from .chunking import chunk_spans
from .encoding import text_blocks
from .pooling import l2_normalize, span_means, span_token_ranges
from .prefetch import prefetched
from .transfer import to_device
from .windows import cover, most_context


def _windowed_states(emb, e) -> torch.Tensor:
    """States of one tokenised text longer than ``target_length``: overlapping windows of ``target_length`` tokens,
    each token's state from the window where it has the most context (special and prompt tokens: the first window's
    leading ones, the last window's trailing ones). The windows, all of one width, run in unpadded batches; each
    batch's states are copied into place with one gather on the device."""
    n = len(e.ids)
    reader = emb.reader
    pre, body, suf = reader.split_specials(e)
    n_prompt = int(np.sum(e.starts[len(pre) : len(pre) + len(body)] < 0))
    n_text = len(body) - n_prompt
    room = emb.target_length - len(pre) - len(suf) - n_prompt
    windows = cover(n_text, room, min(emb.window_overlap, room - 1))
    owner = most_context(n_text, windows, causal=emb.is_decoder)
    head = np.concatenate([pre, body[:n_prompt]])  # in front of every window
    inputs = [np.concatenate([head, body[n_prompt + a : n_prompt + b], suf]) for a, b in windows]
    first, width = len(head), len(inputs[0])  # cover(): every window is ``room`` tokens when n_text > room
    # where each token of e.ids is read: a row of the windows' states flattened to [len(windows) * width, H]
    src = np.empty(n, dtype=np.int64)
    src[:first] = np.arange(first)
    window_starts = np.asarray([a for a, _ in windows], dtype=np.int64)
    src[first : first + n_text] = owner * width + first + np.arange(n_text) - window_starts[owner]
    src[first + n_text :] = len(windows) * width - len(suf) + np.arange(len(suf))
    window_of = src // width
    states = torch.empty(n, emb.dim, dtype=torch.float32, device=emb.device)
    per = max(1, min(emb.batch_size, emb.max_batch_tokens // width))
    for w0 in range(0, len(windows), per):
        w1 = min(len(windows), w0 + per)
        hidden, _ = reader.states(inputs[w0:w1])
        dst = np.flatnonzero((window_of >= w0) & (window_of < w1))
        idx = to_device(np.stack([dst, src[dst] - w0 * width]), emb.device)
        states.index_copy_(0, idx[0], hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx[1]))
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
    """:func:`encode_spans` for many texts at once. Texts are tokenised in blocks, the next block in a worker thread
    while the device reads the current one; texts within ``target_length`` run in token-budget batches (one forward
    pass each, the spans of all the batch's texts pooled on the device in one call), longer texts in windows. The
    vectors are copied to the host once at the end. Returns one ``[len(spans_i), dim]`` float32 array per text."""
    prompt = emb.document_prompt if prompt is None else prompt
    if len(texts) != len(spans):
        raise ValueError(f"got {len(texts)} texts but {len(spans)} span lists; give one list of spans per text.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}.")
    arrays = [_check_spans(t, s) for t, s in zip(texts, spans)]
    wanted = [i for i, a in enumerate(arrays) if len(a)]  # texts without spans are not read
    reader = emb.reader
    size = batch_size or emb.batch_size
    parts: list[tuple[list[int], torch.Tensor]] = []  # (texts, their span vectors [sum of spans, H]) in host order
    owner: list[int] = []  # the text of each input of the stream
    ranges: list[tuple[np.ndarray, np.ndarray]] = []  # its spans' token ranges

    def tokenize(block: list[int]):
        encoded = reader.tokenize([texts[wanted[j]] for j in block], prompt, offsets=True)
        return [(e, _ranges(texts[wanted[j]], e, arrays[wanted[j]])) for j, e in zip(block, encoded)]

    def step(model, device, batch):
        hidden, _ = reader.states([stream.ids[j] for j in batch], model, device)
        B, T, H = hidden.shape
        shifts = [row * T + (T - len(stream.ids[j]) if emb.is_decoder else 0) for row, j in enumerate(batch)]
        lo = np.concatenate([ranges[j][0] + shift for j, shift in zip(batch, shifts)])  # decoders: padded on the left
        hi = np.concatenate([ranges[j][1] + shift for j, shift in zip(batch, shifts)])
        parts.append(([owner[j] for j in batch], span_means(hidden.reshape(B * T, H), lo, hi)))

    blocks = text_blocks([texts[i] for i in wanted], size, emb.max_batch_tokens)
    with prefetched(tokenize, blocks) as tokenized, reader.stream(step, size, emb.max_batch_tokens) as stream:
        for block, results in tokenized:
            short = []
            for j, (e, r) in zip(block, results):
                if len(e.ids) > emb.target_length:  # windows, read at once
                    parts.append(([wanted[j]], span_means(_windowed_states(emb, e), *r)))
                else:
                    short.append(e.ids)
                    owner.append(wanted[j])
                    ranges.append(r)
            stream.add(short)
    out = [np.zeros((0, emb.dim), dtype=np.float32) for _ in texts]
    if parts:
        vectors = torch.cat([v for _, v in parts]).cpu().numpy()  # the one copy to the host
        if emb.normalize:
            vectors = l2_normalize(vectors)
        at = 0
        for owners, _ in parts:
            for i in owners:
                out[i] = vectors[at : at + len(arrays[i])]
                at += len(arrays[i])
    return out


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
