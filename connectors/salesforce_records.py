"""A Salesforce record as text: its configured fields (parent paths and compound fields flattened) as
``field: value`` lines, and the parse that makes it a document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connectors.base import DocumentError, Page, ParsedDocument
from connectors.text import clean_text


def field_value(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; keys are matched without regard to case, as SOQL matches names. A null
    parent (a contact without account) gives None; a parent that is not an object is unusable."""
    value: Any = record
    for segment in path.split("."):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: {segment!r} is read from a {type(value).__name__}, not an object")
        if segment in value:
            value = value[segment]
        else:
            lower = segment.lower()
            value = next((v for k, v in value.items() if k.lower() == lower), None)
    return value


def _lines(label: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"{label}: {'true' if value else 'false'}"]
    if isinstance(value, str | int | float):
        text = clean_text(str(value))
        return [f"{label}: {text}"] if text else []
    if isinstance(value, Mapping):
        # A parent record or a compound field (an address): its parts, without the API's `attributes`.
        return [line for k, v in value.items() if k != "attributes" for line in _lines(f"{label}.{k}", v)]
    raise ValueError(f"{label}: a {type(value).__name__} is not a field value")


def record_text(record: Mapping[str, Any], fields: Sequence[str], title_field: str) -> tuple[str, str]:
    """(title, text) of a record: its configured fields as ``field: value`` lines. System timestamps are left
    out, so a record touched without a change is not embedded again. Raises ValueError for unusable values."""
    lines = [line for name in fields for line in _lines(name, field_value(record, name))]
    title = field_value(record, title_field)
    title_text = clean_text(str(title))[:200] if isinstance(title, str | int | float) else ""
    return title_text, "\n".join(lines)


def parse_record(title: str, text: str) -> ParsedDocument:
    body = f"{title}\n{text}" if title and text else title or text
    if not any(ch.isalnum() for ch in body):
        raise DocumentError("no_text", "the record has no text in its configured fields")
    return ParsedDocument(title=title, pages=[Page(None, body)])
