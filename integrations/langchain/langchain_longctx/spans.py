"""Where a splitter's chunks lie in the document they came from."""
from __future__ import annotations

from typing import List, Sequence, Tuple


def locate_chunks(text: str, chunks: Sequence[str], splitter: str) -> List[Tuple[int, int]]:
    """The character span ``[start, end)`` of each chunk in ``text``, chunks taken in order.

    Each chunk is looked for first right after the previous one (only whitespace between: splitters without
    overlap), then anywhere after the previous chunk's start (overlapping chunks), then anywhere (splitters that
    return chunks out of order). A chunk that is not a substring of ``text`` raises ``ValueError`` naming
    ``splitter``: late chunking embeds spans of the document, so the chunks must be its exact text.
    """
    spans: List[Tuple[int, int]] = []
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
                "the text as it is.")
        spans.append((start, start + len(chunk)))
        prev_start, prev_end = start, start + len(chunk)
    return spans
