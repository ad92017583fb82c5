"""How PDFs are found and parsed (``pdf`` in the config file), apart from discovery and parsing so that both
can use it without importing each other."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Extractor = Literal["auto", "pdfium", "pypdf"]


class PdfSettings(BaseModel):
    """How PDFs are found and parsed. Limits exist so one absurd file cannot exhaust the machine."""

    model_config = ConfigDict(extra="forbid")

    passwords: list[SecretStr] = Field(
        default_factory=list, description="Passwords tried, in order, on encrypted PDFs (never logged)."
    )
    max_file_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Larger files are quarantined unread.")
    max_pages: int = Field(default=10_000, gt=0, description="PDFs with more pages are quarantined.")
    max_chars: int = Field(
        default=20_000_000,
        gt=0,
        description="Extracted text above this (a decompression bomb) is quarantined.",
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".pdf"], description="File suffixes picked up when walking directories."
    )
    extractor: Extractor = Field(
        default="auto",
        description="Who reads the text. auto: pdfium; a page whose text looks damaged is read again "
        "(pdfium with word spaces from glyph positions, pypdf where glyphs were lost) and the best-scoring "
        "reading kept; a file pdfium cannot open is read by pypdf. pdfium or pypdf: that one only. "
        "Changing it re-processes every document.",
    )
    rehash: bool = Field(
        default=False,
        description="Read and hash every file at every run. Default: a file whose size, mtime, ctime and inode "
        "match what the ledger recorded is known unchanged without reading it.",
    )

    def fingerprint(self) -> str:
        """Changes when a setting that can turn a quarantined file into a good one changes."""
        digest = hashlib.sha256()
        for password in self.passwords:
            digest.update(hashlib.sha256(password.get_secret_value().encode()).digest())
        digest.update(f"{self.max_file_bytes}:{self.max_pages}:{self.max_chars}".encode())
        return digest.hexdigest()[:16]
