"""pgvector versions ragline runs on are past the known faults: every pinned ``pgvector/pgvector`` image in
deploy/, and the extension of the embedded server the tests and the defaults use."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

FIXES: list[tuple[tuple[int, int, int], str]] = [
    ((0, 8, 2), "CVE-2026-3172: a parallel HNSW index build could read out of bounds"),
    ((0, 8, 3), "HNSW vacuum could corrupt the index"),
]
"""pgvector releases that fixed faults ragline would meet (HNSW builds and vacuums): nothing older runs."""

NEEDED = max(version for version, _ in FIXES)

_IMAGE = re.compile(r"pgvector/pgvector:(\d+)\.(\d+)\.(\d+)-pg(\d+)")


def _version(text: str) -> tuple[int, int, int]:
    major, minor, patch = (int(p) for p in text.split(".")[:3])
    return (major, minor, patch)


def pinned_images() -> list[tuple[str, tuple[int, int, int]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and (path.suffix in (".yaml", ".yml", ".md") or path.name.startswith("Dockerfile")):
            for m in _IMAGE.finditer(path.read_text()):
                found.append((f"{path.relative_to(DEPLOY)}: {m.group(0)}", (int(m[1]), int(m[2]), int(m[3]))))
    return found


def test_deploy_pins_a_pgvector_image() -> None:
    assert pinned_images(), "deploy/ pins no pgvector/pgvector image: the compose database needs one"


@pytest.mark.parametrize(("where", "version"), pinned_images())
def test_every_pinned_pgvector_image_has_every_fix(where: str, version: tuple[int, int, int]) -> None:
    missing = [what for fixed, what in FIXES if version < fixed]
    assert not missing, f"{where} predates: {'; '.join(missing)}"


def test_the_embedded_pgvector_has_every_fix(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None and _version(row[0]) >= NEEDED, f"embedded pgvector {row} predates {NEEDED}"


@pytest.mark.parametrize(
    ("version", "ok"), [((0, 8, 1), False), ((0, 8, 2), False), ((0, 8, 3), True), ((0, 9, 0), True)]
)
def test_the_rule_itself(version: tuple[int, int, int], ok: bool) -> None:
    assert (not [w for fixed, w in FIXES if version < fixed]) is ok
