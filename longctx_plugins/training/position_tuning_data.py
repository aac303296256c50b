"""Training data for position-only tuning (see :mod:`.position_tuning`): query/passage pairs from the bundled State
of the Union addresses, and PoSE-style shifted positions (LongEmbed's E5-Base-4k recipe) so that short samples train
the rows of long inputs."""

from __future__ import annotations

import random

import torch

from ..texts import sotu_documents


def pairs(tokenizer, n, max_tokens, seed=0, deep_query=False, hard_negatives=False, pose=False):
    """(query sentence, passage) pairs; ``deep_query`` takes the sentence from beyond the first ~512 tokens (~380
    words) of the passage, where only the new position rows can carry it; ``hard_negatives`` adds the same passage
    with that sentence replaced by one from another address (only the sentence, at its position, tells them apart);
    ``pose`` makes passages of 150-350 words (they fit the original 512 positions; the collator shifts them; it
    overrides ``deep_query``)."""
    texts = [d["text"] for d in sotu_documents()]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        words = rng.choice(texts).split()
        length = rng.randint(150, 350) if pose else rng.randint(600, int(max_tokens * 0.7))
        start = rng.randrange(max(1, len(words) - length))
        passage = " ".join(words[start : start + length])
        tail = " ".join(words[start + 380 : start + length]) if deep_query and not pose else passage
        sentences = [s for s in tail.split(". ")[1:] if len(s.split()) > 10]
        if sentences:
            query = rng.choice(sentences)
            row = {"query": query, "passage": passage}
            if hard_negatives:
                others = [x for x in rng.choice(texts).split(". ") if len(x.split()) > 10 and x not in passage]
                if not others:
                    continue
                row["negative"] = passage.replace(query, rng.choice(others), 1)
            out.append(row)
    return out


def pose_shifts(mask, max_tokens, generator):
    """``u ~ U{0 .. max_tokens - length}`` per row of ``mask [B, S]``."""
    return (torch.rand(mask.shape[0], generator=generator) * (max_tokens - mask.sum(1) + 1).float()).long()


def pose_positions(mask, shift, max_tokens):
    """PoSE-style position ids (LongEmbed's E5-Base-4k tuning): ``[CLS]`` keeps row 0, the rest of each sequence
    moves to rows ``u + 1, u + 2, ...`` of the extended table (``shift`` = u per row, clamped so the last real
    token stays below ``max_tokens``), so short samples train the positions of long inputs. ``mask [B, S]`` ->
    ``[B, S]`` (padding keeps its arange)."""
    batch, width = mask.shape
    shift = torch.minimum(shift, max_tokens - mask.sum(1))
    pos = torch.arange(width).expand(batch, -1) + shift[:, None]
    pos[:, 0] = 0
    return torch.where(mask.bool(), pos, torch.arange(width).expand(batch, -1))
