"""Confluence's storage format (XHTML with ``ac:``/``ri:`` elements) as clean text: a tolerant HTML state
machine, and a tag stripper for markup it cannot follow."""

from __future__ import annotations

import html
import logging
import re
from html.parser import HTMLParser
from typing import Any, ClassVar

from connectors.text import clean_text

log = logging.getLogger(__name__)

_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_WHITESPACE = re.compile(r"\s+")
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "blockquote", "ac:structured-macro", "ac:layout-section"}
)
_LINES = frozenset(
    {"div", "li", "ul", "ol", "dl", "dt", "dd", "tr", "section", "ac:layout-cell", "ac:task", "ac:task-list"}
    | {"ac:plain-text-body", "ac:rich-text-body", "ac:image", "ac:caption"}
)
_VOID = frozenset({"br", "hr", "img", "col", "ac:emoticon", "time"})
# Parameters and editor chrome: text an author never wrote as content.
_SKIP = frozenset(
    {"ac:parameter", "ac:placeholder", "ac:task-id", "ac:task-uuid", "ac:task-status", "ac:adf-attribute"}
    | {"script", "style"}
)
_PREFORMATTED = frozenset({"pre", "ac:plain-text-body"})
_CELLS = frozenset({"td", "th"})
_LINK_TARGETS = {
    "ri:page": "ri:content-title",
    "ri:blog-post": "ri:content-title",
    "ri:attachment": "ri:filename",
    "ri:space": "ri:space-key",
    "ri:url": "ri:value",
}


class _StorageText(HTMLParser):
    """Text of storage-format XHTML: blocks as line breaks, table cells separated by ``|``, macro parameters
    dropped, macro bodies kept, ``ac:link`` targets as their titles.

    Breaks are held back until the next text and the strongest one wins, so nested blocks (``<td><p>``,
    ``<li><p>``) give one separator rather than a pile of blank lines.
    """

    _STRENGTH: ClassVar[dict[str, int]] = {"": 0, " ": 1, " | ": 2, "\n": 3, "\n\n": 4}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pending = ""
        self.stack: list[str] = []
        self.skip = 0
        self.pre = 0
        self.cells = 0
        self.rows: list[int] = []
        self.links: list[list[Any]] = []  # [target title or None, whether the link has its own text]

    def text(self) -> str:
        return "".join(self.out)

    @property
    def swallowed(self) -> bool:
        """An unclosed parameter hid everything after it: better the noise of stripping tags than losing text."""
        return self.skip > 0

    def _break(self, separator: str) -> None:
        if self.cells and separator != " | ":
            separator = " "  # a table row stays on one line
        if self._STRENGTH[separator] > self._STRENGTH[self.pending]:
            self.pending = separator

    def _emit(self, text: str) -> None:
        if not text or (self.pending and not text.strip()):
            return
        if self.pending and self.out:
            self.out.append(self.pending)
        self.pending = ""
        self.out.append(text)
        if self.links and text.strip():
            self.links[-1][1] = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip:
            if tag in _SKIP:
                self.skip += 1
                self.stack.append(tag)
            elif tag not in _VOID and not tag.startswith("ri:"):
                self.stack.append(tag)
            return
        attributes = {k: v for k, v in attrs if v is not None}
        if tag.startswith("ri:"):
            if self.links and tag in _LINK_TARGETS and self.links[-1][0] is None:
                self.links[-1][0] = attributes.get(_LINK_TARGETS[tag])
            return
        if tag == "time" and attributes.get("datetime"):
            self._break(" ")
            self._emit(attributes["datetime"])
            self._break(" ")
        if tag in ("br", "hr"):
            self._break("\n")
        if tag in _VOID:
            return
        self.stack.append(tag)
        if tag in _SKIP:
            self.skip += 1
        elif tag in _PARAGRAPHS or tag in _LINES:
            self._break("\n\n" if tag in _PARAGRAPHS else "\n")
        if tag in _PREFORMATTED:
            self.pre += 1
        if tag == "tr":
            self.rows.append(0)
        elif tag in _CELLS:
            self._break(" | " if self.rows and self.rows[-1] else " ")
            if self.rows:
                self.rows[-1] += 1
            self.cells += 1
        elif tag == "ac:link":
            self.links.append([None, False])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        depth = len(self.stack)
        self.handle_starttag(tag, attrs)
        if len(self.stack) > depth:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            return  # a stray end tag
        while self.stack:
            if self._close(self.stack.pop()) == tag:
                return

    def _close(self, tag: str) -> str:
        if tag in _SKIP:
            self.skip -= 1
            return tag
        if self.skip:
            return tag
        if tag in _PREFORMATTED:
            self.pre -= 1
        if tag == "tr" and self.rows:
            self.rows.pop()
        elif tag in _CELLS:
            self.cells = max(0, self.cells - 1)
        elif tag == "ac:link" and self.links:
            target, has_text = self.links.pop()
            if target and not has_text:
                self._emit(target)
        if tag in _PARAGRAPHS or tag in _LINES:
            self._break("\n\n" if tag in _PARAGRAPHS else "\n")
        return tag

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self._emit(data if self.pre else _WHITESPACE.sub(" ", data))


def strip_tags(xhtml: str) -> str:
    """The fallback for markup the parser cannot follow: every tag removed, CDATA kept as written."""
    pieces: list[str] = []
    position = 0
    for match in _CDATA.finditer(xhtml):
        pieces.append(html.unescape(_TAG.sub(" ", xhtml[position : match.start()])))
        pieces.append(match.group(1))
        position = match.end()
    pieces.append(html.unescape(_TAG.sub(" ", xhtml[position:])))
    return clean_text(" ".join(pieces))


def storage_to_text(xhtml: str) -> str:
    """Clean text of a page body in Confluence's storage format (XHTML with ``ac:``/``ri:`` elements)."""
    # CDATA (code and plain-text macro bodies) becomes escaped text, so the parser treats it as data
    # whatever its version does with marked sections.
    source = _CDATA.sub(lambda m: html.escape(m.group(1), quote=False), xhtml)
    parser = _StorageText()
    try:
        parser.feed(source)
        parser.close()
    except (AssertionError, ValueError) as err:  # html.parser on unknown marked sections (<![foo[ ... ]]>)
        log.debug("storage body not parseable (%s); stripping tags instead", err)
        return strip_tags(xhtml)
    if parser.swallowed:
        return strip_tags(xhtml)
    return clean_text(parser.text())
