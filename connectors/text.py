"""Text clean-up shared by every connector: what Postgres and the tokenizer can take."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(\n\s*)+")
# Dot leaders of tables of contents (". . . . ." or "......"): one token per dot, no meaning.
_LEADERS = re.compile(r"(?:\.\s?){4,}")


def clean_text(text: str) -> str:
    """Normalise extracted text without changing its words.

    NFKC folds ligatures and full-width forms (``ﬁ`` -> ``fi``) so queries typed by people match; NUL and
    other control characters are dropped because Postgres ``text`` rejects NUL and they carry no meaning;
    lone surrogates (seen in broken PDF font maps) cannot be encoded as UTF-8 at all.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _SURROGATES.sub("", text)
    text = _CONTROL.sub(" ", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _LEADERS.sub(" ... ", text)
    text = _SPACES.sub(" ", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()
