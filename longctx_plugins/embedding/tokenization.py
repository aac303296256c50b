"""Tokenisation for the embedder: ids (and character offsets for late chunking) of many texts at once.

Every call is one batch call of the fast tokenizer over all the texts it is given (it runs on all cores). Long texts
are cut at whitespace into pieces that the batch encodes in parallel, then joined and wrapped in the model's special
tokens. That is exact only when tokenisation never looks across whitespace, so it is used only for tokenizers whose
pre-tokenizer splits on whitespace and whose normaliser works character by character (BERT-style WordPiece: MiniLM,
BERT, E5, BGE, ...; the tables below). Every other tokenizer encodes each text whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pre-tokenizers that split on whitespace before anything else, and normalisers that map characters one by one:
# with both, the tokens of "a b" are the tokens of "a" followed by those of " b".
SPLIT_SAFE_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
SPLIT_SAFE_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "StripAccents", "NFD", "NFC", "NFKD", "NFKC"})
PIECE_CHARS = 4096  # texts longer than two pieces are split (about 1k tokens a piece: enough pieces for every core)


@dataclass
class Encoded:
    """One tokenised text: ``ids`` with special tokens; ``starts[i]`` the character (in the text, prompt excluded)
    where token i starts, -1 for special and prompt tokens (only when offsets were asked for)."""

    ids: np.ndarray  # int64 [n]
    starts: np.ndarray | None = None  # int64 [n]


def split_safe(tokenizer) -> bool:
    """Whether cutting a text at whitespace and joining the pieces' tokens gives exactly the whole text's tokens."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    norms = (norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm]) if norm else []
    return pre.get("type") in SPLIT_SAFE_PRE_TOKENIZERS and all(n.get("type") in SPLIT_SAFE_NORMALIZERS for n in norms)


def _pieces(text: str, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` cuts of ``text`` of about ``size`` characters, each cut right before a whitespace."""
    cuts, start, n = [], 0, len(text)
    while start < n:
        end = min(n, start + size)
        while end < n and not text[end].isspace():
            end += 1
        cuts.append((start, end))
        start = end
    return cuts


class Tokenization:
    """Tokenises batches of texts for one tokenizer (special tokens included, no truncation)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix, self.suffix = self._wrapping()
        self.parallel = split_safe(tokenizer) and self.prefix is not None

    def _wrapping(self):
        """The special tokens the tokenizer puts before and after a text, when it wraps every text the same way
        (checked on two probes); (None, None) otherwise (then texts are encoded whole, specials by the tokenizer)."""
        found = set()
        for probe in ("a", "b c d"):
            body = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
            full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
            k = next((k for k in range(len(full) - len(body) + 1) if full[k : k + len(body)] == body), None)
            if not body or k is None:
                return None, None
            found.add((tuple(full[:k]), tuple(full[k + len(body) :])))
        if len(found) != 1:
            return None, None
        prefix, suffix = found.pop()
        return list(prefix), list(suffix)

    def __call__(self, texts: list[str], prompt: str = "", offsets: bool = False) -> list[Encoded]:
        """Encode ``prompt + text`` for each text. With ``offsets``, token starts are relative to the text."""
        full = [prompt + t for t in texts] if prompt else list(texts)
        if self.prefix is None:
            return self._whole(full, len(prompt), offsets)
        jobs, owner = [], []  # (string, char shift) pieces, and which text each belongs to
        for i, s in enumerate(full):
            cuts = _pieces(s, PIECE_CHARS) if self.parallel and len(s) > 2 * PIECE_CHARS else [(0, len(s))]
            for a, b in cuts:
                jobs.append((s[a:b], a))
                owner.append(i)
        ids_lists, offset_lists = self._encode_bodies([j[0] for j in jobs], offsets)
        ids_parts: list[list[np.ndarray]] = [[] for _ in full]
        start_parts: list[list[np.ndarray]] = [[] for _ in full]
        for j, i in enumerate(owner):
            ids_parts[i].append(np.asarray(ids_lists[j], dtype=np.int64))
            if offsets:
                start_parts[i].append(_starts(offset_lists[j]) + jobs[j][1])
        pre, suf = np.asarray(self.prefix, dtype=np.int64), np.asarray(self.suffix, dtype=np.int64)
        out = []
        for i in range(len(full)):
            ids = np.concatenate([pre, *ids_parts[i], suf])
            starts = None
            if offsets:
                body = np.concatenate(start_parts[i]) if start_parts[i] else np.zeros(0, dtype=np.int64)
                starts = np.concatenate(
                    [np.full(len(pre), -1), _text_starts(body, len(prompt)), np.full(len(suf), -1)]
                ).astype(np.int64)
            out.append(Encoded(ids, starts))
        return out

    def _call(self, strings: list[str], special: bool, offsets: bool):
        """One batch call of the fast tokenizer: never truncated, special tokens added when ``special``, character
        offsets (and, with special tokens, their mask) when ``offsets``."""
        return self.tokenizer(
            strings,
            add_special_tokens=special,
            truncation=False,
            verbose=False,
            return_offsets_mapping=offsets,
            return_special_tokens_mask=offsets and special,
            return_attention_mask=False,
            return_token_type_ids=False,
        )

    def _encode_bodies(self, strings: list[str], offsets: bool) -> tuple[list, list]:
        """Token ids (and ``(start, end)`` offsets when asked) of each string, without special tokens."""
        enc = self._call(strings, False, offsets)
        return enc["input_ids"], enc["offset_mapping"] if offsets else []

    def _whole(self, full: list[str], prompt_chars: int, offsets: bool) -> list[Encoded]:
        enc = self._call(full, True, offsets)
        out = []
        for j in range(len(full)):
            ids = np.asarray(enc["input_ids"][j], dtype=np.int64)
            starts = None
            if offsets:
                off = _starts(enc["offset_mapping"][j])
                special = np.asarray(enc["special_tokens_mask"][j], dtype=bool)
                starts = np.where(special, -1, _text_starts(off, prompt_chars))
            out.append(Encoded(ids, starts))
        return out


def _starts(offsets) -> np.ndarray:
    """The start characters of a list of ``(start, end)`` offsets, as int64 (without building an ``[n, 2]`` array)."""
    return np.fromiter((a for a, _ in offsets), dtype=np.int64, count=len(offsets))


def _text_starts(starts: np.ndarray, prompt_chars: int) -> np.ndarray:
    """Token starts in ``prompt + text`` -> starts in ``text``; tokens that start inside the prompt get -1."""
    return np.where(starts >= prompt_chars, starts - prompt_chars, -1)
