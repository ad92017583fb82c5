"""Page text as a reader sees it: the pure repairs applied to what a PDF extractor returns, and a score of how
damaged a page's text looks, so the better of two extractors' readings of a page can be kept.

Nothing here opens a PDF: ``connectors/pdf.py`` extracts, this module judges and repairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from connectors.text import clean_text

LIGATURES = {"\x1b": "ff", "\x1c": "fi", "\x1d": "fl", "\x1e": "ffi", "\x1f": "ffl"}
"""pdfTeX's Type 3 fonts (T1 encoding) carry no Unicode map for their ligature glyphs: every extractor returns
the glyph's code, a control character. Only these five are letters; the other codes of that encoding
(quotes, dashes) become spaces in ``clean_text`` like any control character."""

# A code counts as a ligature only inside a word: next to a letter ("\x1crst" = "first", "sta\x1b" = "staff").
_LIGATURE_CODE = re.compile(r"(?<=[^\W\d_])[\x1b-\x1f]|[\x1b-\x1f](?=[^\W\d_])")
# pdfium joins a word hyphenated at a line end itself and marks the join with U+FFFE ("ad\ufffedresses").
_PDFIUM_JOIN = re.compile(r"(?<=[^\W\d_])\ufffe(?=[^\W\d_])")
# A line that ends in a hyphen right after a letter, continued by a letter on the next line.
_LINE_END_HYPHEN = re.compile(r"(?<![^\W\d_-])((?:[^\W\d_]+-)*)([^\W\d_]+)-\n([^\W\d_]+)")
# A hyphenated word inside a line: the evidence that a compound is written with its hyphen.
_COMPOUND = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)+")
_WORD = re.compile(r"[^\W\d_]+")
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ufffe\uffff\ue000-\uf8ff\U000f0000-\U0010ffff]")

SUSPECT = 0.005
"""A page whose damage is above this is read again by pdfium with word spaces from the glyph positions
(cheap). On clean text the score is mostly 0 to ~0.01: real compounds seen once ("lifetime") look merged."""

DAMAGED = 0.015
"""A page whose best reading has lost more glyphs per word than this is read by pypdf too (dear: in a long
file pypdf first parses the whole page tree)."""

_NORMAL_SHORT_SHARE = 0.35
"""English prose has 15-30% tokens of one or two letters ("a", "of", "to"); text whose spacing broke words
apart ("a vailable", "w ork") has more. Only the share above this counts as damage."""


def map_ligatures(text: str) -> str:
    """Replace the control codes of pdfTeX's ligature glyphs by their letters where they stand in a word."""
    return _LIGATURE_CODE.sub(lambda m: LIGATURES[m.group()], text)


def prepare(raw: str) -> str:
    """One extractor's raw page text, with ligatures mapped, pdfium's hyphen joins turned back into line-end
    hyphens (so one rule decides every join) and ``clean_text`` applied. Bad characters that remain are
    kept for ``score`` and removed by ``finish``."""
    text = map_ligatures(raw).replace("\r\n", "\n")
    text = _PDFIUM_JOIN.sub("-\n", text)
    return clean_text(text)


def compounds(texts: Iterable[str]) -> set[str]:
    """Hyphenated words written inside a line anywhere in the document, lowercased: these keep their
    hyphen when they are split at a line end."""
    found: set[str] = set()
    for text in texts:
        found.update(m.group().lower() for m in _COMPOUND.finditer(text))
    return found


def join_hyphens(text: str, known_compounds: set[str]) -> str:
    """Join words hyphenated at a line end ("transac-\\ntional" -> "transactional"); a compound that the
    document writes with its hyphen elsewhere keeps it ("conflict-\\nresolution" -> "conflict-resolution").
    The line break goes: it split a word, not two lines of meaning."""

    def join(m: re.Match[str]) -> str:
        # The compound may have more parts than the two next to the break ("run-time-\nerror").
        prefix, head, tail = m.groups()
        hyphenated = f"{prefix}{head}-{tail}"
        return hyphenated if hyphenated.lower() in known_compounds else f"{prefix}{head}{tail}"

    return _LINE_END_HYPHEN.sub(join, text)


def finish(text: str) -> str:
    """Final page text: noncharacters (stray U+FFFE/U+FFFF) carry nothing and are dropped."""
    return text.replace("\ufffe", "").replace("\uffff", "").strip()


@dataclass(frozen=True)
class Vocabulary:
    """The words of a document (lowercased letter runs, with counts): what a page's words are checked
    against to spot words broken apart or run together."""

    words: Counter[str]

    @classmethod
    def of(cls, texts: Iterable[str]) -> Vocabulary:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(w.lower() for w in _WORD.findall(text))
        return cls(counts)


@dataclass(frozen=True)
class Quality:
    """What looks wrong in a page's text; ``damage`` sums it per word (0 = nothing suspicious)."""

    words: int
    bad_chars: int
    """Control characters, U+FFFD/U+FFFE and private-use characters: glyphs the extractor could not map."""
    short_share: float
    """Share of letter tokens of one or two letters."""
    split_words: int
    """Neighbouring tokens whose concatenation the document has at least twice while a part is seen at most
    once in it ("a vailable"). A concatenation seen once is more likely two words run together elsewhere."""
    merged_words: int
    """Tokens seen once in the document that are two of its words run together ("manyways")."""

    @property
    def damage(self) -> float:
        """Everything suspicious, per word: how readings of one page are ranked."""
        if self.words == 0:
            return float(self.bad_chars > 0)
        short_excess = max(0.0, self.short_share - _NORMAL_SHORT_SHARE)
        return (self.merged_words + self.split_words) / self.words + short_excess + self.broken

    @property
    def broken(self) -> float:
        """Lost glyphs per word: what a different extractor may not have. (Words run together or split are
        mostly pdfium's spacing, which its glyph positions repair; many short tokens are also formulas.)"""
        if self.words == 0:
            return float(self.bad_chars > 0)
        return self.bad_chars / self.words

    @property
    def suspect(self) -> bool:
        return self.damage > SUSPECT

    @property
    def damaged(self) -> bool:
        return self.broken > DAMAGED


def score(text: str, vocabulary: Vocabulary) -> Quality:
    """Judge a page's prepared text against its document's vocabulary."""
    vocab = vocabulary.words
    tokens = [w.lower() for w in _WORD.findall(text)]
    short = sum(1 for w in tokens if len(w) <= 2)
    split = sum(
        1
        for first, second in pairwise(tokens)
        if vocab.get(first + second, 0) >= 2 and min(vocab.get(first, 0), vocab.get(second, 0)) <= 1
    )
    merged = sum(1 for w in tokens if vocab.get(w, 0) == 1 and _is_two_words(w, vocab))
    return Quality(
        words=len(tokens),
        bad_chars=len(_BAD_CHARS.findall(text)),
        short_share=short / len(tokens) if tokens else 0.0,
        split_words=split,
        merged_words=merged,
    )


def _is_two_words(word: str, vocab: Counter[str]) -> bool:
    """True when ``word`` is two words of the document, each of 3+ letters and seen at least twice (shorter
    parts would take "killed" for "kill" + "ed")."""
    return any(vocab.get(word[:i], 0) >= 2 and vocab.get(word[i:], 0) >= 2 for i in range(3, len(word) - 2))


def best(readings: list[str], vocabulary: Vocabulary) -> str:
    """The reading of a page that scores least damaged; the earliest on a tie (the primary extractor's)."""
    return min(readings, key=lambda text: score(text, vocabulary).damage)
