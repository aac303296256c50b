"""Sentence-aware chunks measured in tokens, as character spans of the text (for late chunking).

Sentences end at ``.``, ``!`` or ``?`` followed by whitespace, and at blank lines. Chunks are runs of whole
sentences holding at most ``chunk_size`` tokens; consecutive chunks share whole trailing sentences of up to
``chunk_overlap`` tokens; a sentence longer than ``chunk_size`` tokens is cut at token boundaries. Spans never
include the whitespace around them, so ``text[start:end]`` is the chunk's text.

:func:`locate_chunks` finds where another splitter's chunks (LlamaIndex, LangChain) lie in their document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [_strip(text, a, b) for a, b in spans if text[a:b].strip()]


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def chunk_spans(text: str, token_starts: np.ndarray, chunk_size: int, chunk_overlap: int = 0) -> list[tuple[int, int]]:
    """Character spans of the chunks of ``text``; ``token_starts``: sorted character starts of its tokens."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 token, got {chunk_size}.")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be >= 0 and smaller than chunk_size ({chunk_size}), got {chunk_overlap}.")
    starts = np.asarray(token_starts)
    units: list[tuple[int, int, int]] = []  # (start, end, tokens): sentences, long ones cut at token boundaries
    for a, b in sentence_spans(text):
        lo, hi = np.searchsorted(starts, [a, b])
        n = int(hi - lo)
        if n <= chunk_size:
            units.append((a, b, max(n, 1)))
            continue
        for k in range(lo, hi, chunk_size):
            piece_end = int(starts[k + chunk_size]) if k + chunk_size < hi else b
            units.append(_strip(text, int(starts[k]) if k > lo else a, piece_end) + (min(chunk_size, hi - k),))
    chunks, i = [], 0
    while i < len(units):
        j, used = i, 0
        while j < len(units) and used + units[j][2] <= chunk_size:
            used += units[j][2]
            j += 1
        chunks.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        k, back = j, 0  # overlap: whole units from the end of this chunk, while they fit
        while k - 1 > i and back + units[k - 1][2] <= chunk_overlap:
            back += units[k - 1][2]
            k -= 1
        i = k
    return chunks


def locate_chunks(text: str, chunks: Sequence[str], splitter: str) -> list[tuple[int, int]]:
    """The character span ``[start, end)`` of each chunk in ``text``, chunks taken in order.

    Each chunk is looked for first right after the previous one (only whitespace between: splitters without
    overlap), then anywhere after the previous chunk's start (overlapping chunks), then anywhere (splitters that
    return chunks out of order). A chunk that is not a substring of ``text`` raises ``ValueError`` naming
    ``splitter``: late chunking embeds spans of the document, so the chunks must be its exact text.
    """
    spans: list[tuple[int, int]] = []
    prev_start, prev_end = -1, 0
    for k, chunk in enumerate(chunks):
        if not chunk:
            raise ValueError(f"{splitter} returned an empty chunk (chunk {k}).")
        start = text.find(chunk, prev_end)
        if start < 0 or text[prev_end:start].strip():
            start = text.find(chunk, prev_start + 1)
        if start < 0:
            start = text.find(chunk)
        if start < 0:
            raise ValueError(
                f"{splitter} returned a chunk that is not part of the document text (chunk {k}: "
                f"{chunk[:80]!r}{'...' if len(chunk) > 80 else ''}). Late chunking embeds spans of the document, so "
                f"the splitter must return exact substrings of it; {splitter} changed the text (normalised "
                "whitespace, joined pieces with another separator, added metadata, ...). Use a splitter that keeps "
                "the text as it is."
            )
        spans.append((start, start + len(chunk)))
        prev_start, prev_end = start, start + len(chunk)
    return spans
