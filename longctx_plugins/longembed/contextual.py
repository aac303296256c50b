"""The ``contextual`` chunk task's documents: a subject named once, a fact about it stated only by reference.

Each document opens with an introduction that names an invented subject (an organisation or a person: "The Harwick
Shipping Company was founded in Oslo in 1871."), continues with State of the Union prose, and somewhere after the
introduction's chunk holds one sentence that states a fact about the subject without naming it ("It moved its
headquarters to Lisbon in 1904." or "The company moved ..."). The query names the subject and asks for the fact
("Where did the Harwick Shipping Company move its headquarters?"). Read alone, the fact's chunk cannot tell whose
fact it is; only the document around it can.

To make that matter, documents of a split share kinds of fact: the split uses ``n_docs // DOCS_PER_FACT_KIND`` kinds
(at least one, at most all of them), assigned round-robin, so every query has about ``DOCS_PER_FACT_KIND - 1`` other
documents whose chunks state a fact of the same kind about another subject (same wording, other values).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .synthetic import CITIES, COLOURS, _fill

DOCS_PER_FACT_KIND = 5
_PRE = (
    "Har",
    "Bel",
    "Cal",
    "Dun",
    "Els",
    "Fen",
    "Gal",
    "Hol",
    "Ives",
    "Jar",
    "Kes",
    "Lock",
    "Mer",
    "Nor",
    "Ott",
    "Pem",
    "Quar",
    "Roth",
    "Sel",
    "Tre",
    "Ul",
    "Van",
    "Wex",
    "Yar",
)
_SUF = ("wick", "mere", "worth", "ridge", "stead", "combe", "thorpe", "dale", "brook", "holme", "garth", "ness")
MAX_DOCS = len(_PRE) * len(_SUF)  # one invented name per document of a length
ORG_KINDS = (
    ("Shipping Company", "company"),
    ("Glassworks", "glassworks"),
    ("Savings Bank", "bank"),
    ("Choral Society", "society"),
    ("Botanical Institute", "institute"),
    ("Railway Company", "railway"),
    ("Brewery", "brewery"),
    ("Printing House", "printing house"),
    ("Observatory", "observatory"),
    ("Textile Mill", "mill"),
)
FEMALE = ("Ilse", "Maren", "Odile", "Brigid", "Saskia", "Livia", "Tamsin", "Oriane", "Petra", "Agnes")
MALE = ("Anselm", "Corwin", "Evander", "Lucan", "Torvald", "Ambrose", "Casimir", "Dorian", "Rufus", "Silas")
PROFESSIONS = ("engineer", "botanist", "cartographer", "violinist", "architect", "chemist", "sculptor", "astronomer")
ANIMALS = ("heron", "fox", "stag", "owl", "lion", "whale", "hare", "falcon", "otter", "raven")
TOPICS = ("tidal mills", "mountain lichens", "river trade", "bell founding", "salt marshes", "lighthouse lenses")
SKILLS = ("bookbinding", "rowing", "fencing", "clock repair", "sheep shearing", "glass engraving")
THINGS = ("old maps", "seashells", "pocket watches", "letters", "pressed flowers", "ship models")
PETS = ("Biscuit", "Marigold", "Pepper", "Juniper", "Clover", "Bramble", "Thistle", "Saffron")

# (subject kind, fact sentence by reference, question naming the subject). {Ref}: "It" / "She" / "He" or "The
# <noun>"; {its}: "its" / "her" / "his"; {S}: the subject as the query names it.
FACT_KINDS = (
    ("org", "{Ref} moved {its} headquarters to {city} in {year}.", "Where did {S} move its headquarters?"),
    ("org", "{Ref} adopted a {colour} {animal} as {its} emblem in {year}.", "What emblem did {S} adopt?"),
    (
        "org",
        "{Ref} lost most of {its} records in a warehouse fire in {year}.",
        "In which year did {S} lose its records in a fire?",
    ),
    (
        "org",
        "{Ref} was sold to a merchant from {city} for {money} thousand pounds.",
        "For how much was {S} sold, and to whom?",
    ),
    (
        "person",
        "{Ref} spent the winter of {year} in {city}, writing a book about {topic}.",
        "Where did {S} spend the winter writing a book?",
    ),
    ("person", "{Ref} kept a {colour} {animal} named {pet} for many years.", "What pet did {S} keep?"),
    ("person", "{Ref} won a silver medal for {skill} in {year}.", "What did {S} win a silver medal for?"),
    (
        "person",
        "{Ref} left {its} collection of {things} to the public library of {city}.",
        "What collection did {S} leave to the public library?",
    ),
)


@dataclass
class ContextualDoc:
    subject: str  # as the query names it ("the Harwick Shipping Company", "Ilse Marwood")
    name_words: tuple  # the subject's own words (its invented name), absent from the fact sentence
    intro: str  # the sentence that names the subject (the document's first)
    fact: str  # the sentence that states the fact by reference
    query: str
    text: str = ""


def _subjects(rng: random.Random, kinds: list[str]) -> list[tuple[str, str, tuple, str, str]]:
    """One distinct subject per entry of ``kinds``: (query form, intro, name words, reference, possessive)."""
    words = rng.sample([p + s for p in _PRE for s in _SUF], len(kinds))  # invented names: "Harwick"
    out = []
    for kind, word in zip(kinds, words):
        year, city = rng.randint(1820, 1900), rng.choice(CITIES)
        if kind == "org":
            full, noun = rng.choice(ORG_KINDS)
            name = f"{word} {full}"
            intro = f"The {name} was founded in {city} in {year}."
            ref = "It" if rng.random() < 0.5 else f"The {noun}"
            out.append((f"the {name}", intro, (word,), ref, "its"))
        else:
            female = rng.random() < 0.5
            first = rng.choice(FEMALE if female else MALE)
            job = rng.choice(PROFESSIONS)
            name = f"{first} {word}"
            intro = f"{name} was born in {city} in {year} and trained as {'an' if job[0] in 'aeiou' else 'a'} {job}."
            ref = ("She" if female else "He") if rng.random() < 0.5 else f"The {job}"
            out.append((name, intro, (first, word), ref, "her" if female else "his"))
    return out


def make_subjects_and_facts(rng: random.Random, n_docs: int) -> list[ContextualDoc]:
    """``n_docs`` distinct subjects, each with one fact (kinds shared round-robin, see the module docstring)."""
    n_kinds = max(1, min(len(FACT_KINDS), n_docs // DOCS_PER_FACT_KIND))
    kinds = rng.sample(range(len(FACT_KINDS)), n_kinds)
    assigned = [FACT_KINDS[kinds[i % n_kinds]] for i in range(n_docs)]
    docs = []
    for (kind, sentence, question), (subject, intro, words, ref, its) in zip(
        assigned, _subjects(rng, [a[0] for a in assigned])
    ):
        values = dict(
            city=rng.choice(CITIES),
            year=rng.randint(1901, 1960),
            colour=rng.choice(COLOURS),
            animal=rng.choice(ANIMALS),
            money=rng.randint(12, 950),
            topic=rng.choice(TOPICS),
            skill=rng.choice(SKILLS),
            things=rng.choice(THINGS),
            pet=rng.choice(PETS),
        )
        fact = sentence.format(Ref=ref, its=its, **values)
        docs.append(ContextualDoc(subject, words, intro, fact, question.format(S=subject)))
    return docs


def build_document(rng: random.Random, sentences, doc: ContextualDoc, length: int, count, chunk_spans_of) -> str:
    """``intro + prose`` with ``doc.fact`` at a random sentence position whose chunk does not hold the intro, at most
    ``length`` tokens (special tokens included). ``count``: token counter of :mod:`.synthetic`; ``chunk_spans_of(text)``
    the task's chunker. ValueError when the document is too short to put the fact outside the intro's chunk."""
    budget = length - count.special - count(doc.intro) - count(doc.fact)
    body = _fill(sentences, rng.randrange(len(sentences)), budget, count)
    order = list(range(len(body) + 1))
    rng.shuffle(order)
    for depth in order:
        text = _assemble(doc, body, depth, length, count)
        if text is None:
            continue
        a = text.index(doc.fact)
        b = a + len(doc.fact)
        holding = [(s, e) for s, e in chunk_spans_of(text) if s < b and a < e]
        if holding and all(s >= len(doc.intro) for s, _ in holding):
            return text
    raise ValueError(
        f"contextual: a document of {length} tokens cannot hold its fact outside the chunk of its "
        "first sentence; use longer documents or smaller chunks (--chunk-size)."
    )


def _assemble(doc: ContextualDoc, body: list[str], depth: int, length: int, count) -> str | None:
    """The document with the fact after ``depth`` prose sentences, trimmed (prose from the end) to ``length``
    tokens; None when trimming would have to remove the fact's own neighbours down to nothing."""
    body = list(body)
    text = " ".join([doc.intro] + body[:depth] + [doc.fact] + body[depth:])
    while count.length(text, special=True) > length:
        if len(body) > depth:
            body.pop()
        elif depth > 0:
            body.pop(depth - 1)
            depth -= 1
        else:
            return None
        text = " ".join([doc.intro] + body[:depth] + [doc.fact] + body[depth:])
    return text
