"""Sources: turn files and remote records into ``SourceDocument`` objects with lineage."""

from connectors.base import DocumentError, Page, ParsedDocument, SourceDocument

__all__ = ["DocumentError", "Page", "ParsedDocument", "SourceDocument"]
