"""The bundled public-domain prose (``data/README.md``): haystacks for the synthetic tasks, documents for examples,
tests and position-tuning data. No torch import."""

from __future__ import annotations

import gzip
import json
import os
import re
from functools import lru_cache

SOTU_PATH = os.path.join(os.path.dirname(__file__), "data", "sotu.jsonl.gz")


@lru_cache(maxsize=1)
def sotu_documents() -> tuple[dict, ...]:
    """The bundled State of the Union addresses: ``({"id", "text"}, ...)``."""
    with gzip.open(SOTU_PATH, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


@lru_cache(maxsize=1)
def sotu_sentences() -> tuple[str, ...]:
    """Their sentences longer than 20 characters, in order."""
    sentences = []
    for t in (d["text"] for d in sotu_documents()):
        sentences.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(t.split())) if len(s.strip()) > 20)
    return tuple(sentences)
