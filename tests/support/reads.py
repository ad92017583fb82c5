"""A seam on file reads: every ``Path.read_bytes`` (how the PDF connector reads a file) recorded in order."""

from __future__ import annotations

from pathlib import Path

import pytest


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file read through ``Path.read_bytes`` from now on (reads still happen)."""
    seen: list[Path] = []
    read_bytes = Path.read_bytes

    def counting(path: Path) -> bytes:
        seen.append(path)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counting)
    return seen
