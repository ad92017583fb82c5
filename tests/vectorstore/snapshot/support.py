"""What the snapshot tests share: a corpus of real PDFs with known subjects, reads of a store to compare two
stores row by row, vector by vector and query by query, and ways to damage a snapshot on disk."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from flows.runtime import Services
from tests.support.pdfgen import not_a_pdf, text_pdf
from vectorstore import generations
from vectorstore.db import Connection
from vectorstore.generations import Generation
from vectorstore.migrations import index_name
from vectorstore.snapshot import MANIFEST, TABLES, Manifest

SUBJECTS = {
    "volcano": "basalt magma caldera eruption lava ash pumice crater tephra vent fissure plume",
    "baking": "sourdough starter flour yeast crumb oven croissant butter gluten proofing crust dough",
    "astronomy": "neutron star comet nebula orbit galaxy telescope supernova pulsar quasar redshift",
    "sailing": "mainsail jib tack gybe keel rudder halyard spinnaker mooring regatta windward leeward",
    "chess": "gambit endgame rook bishop castling checkmate opening pawn fianchetto zugzwang tempo",
    "botany": "photosynthesis chlorophyll stomata xylem phloem pollen germination root seedling",
    "medicine": "antibiotic vaccine dosage symptom diagnosis immune pathogen fever clinic therapy",
    "finance": "dividend bond equity interest inflation portfolio liquidity hedge yield ledger",
}
FILLER = ["the", "a", "of", "with", "during", "because", "often", "many", "some", "after", "before", "under"]


def paragraph(rng: random.Random, subject: str, words: int) -> str:
    vocab = SUBJECTS[subject].split()
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(vocab) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.randint(8, 16))]
        out += [sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."]
    return " ".join(out)


def make_corpus(root: Path) -> list[Path]:
    rng = random.Random(7)
    root.mkdir(parents=True, exist_ok=True)
    files = [
        text_pdf(root / f"{subject}.pdf", [paragraph(rng, subject, 260) for _ in range(7)], title=f"On {subject}")
        for subject in SUBJECTS
    ]
    not_a_pdf(root / "broken.pdf")  # quarantined: the ledger keeps its error
    return files


QUERIES = [
    f"{a} {b} {c}"
    for subject, words in SUBJECTS.items()
    for a, b, c in [words.split()[0:3], words.split()[3:6], words.split()[6:9], words.split()[-3:]]
]


@dataclass
class Origin:
    url: str
    services: Services
    snapshot: Path
    manifest: Manifest


def rows(conn: Connection, query: str) -> list[dict[str, Any]]:
    result = conn.execute(query).fetchall()
    conn.commit()
    return result


def counts(conn: Connection) -> dict[str, int]:
    return {t: rows(conn, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}


def vector_checksum(conn: Connection) -> str:
    return str(
        rows(
            conn,
            "SELECT encode(sha256(convert_to(string_agg(id::text || '=' || embedding::text, ';' ORDER BY id),"
            " 'UTF8')), 'hex') AS h FROM chunks",
        )[0]["h"]
    )


def serving(conn: Connection) -> Generation:
    found = generations.active(conn)
    conn.commit()
    assert found is not None
    return found


def exact_top(conn: Connection, vector: np.ndarray, model_id: int, k: int = 10) -> list[uuid.UUID]:
    """The exact nearest chunks of one generation (a sequential scan, no index)."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        found = conn.execute(
            "SELECT id FROM chunks WHERE model_id = %s ORDER BY embedding <=> %s, id LIMIT %s", (model_id, vector, k)
        ).fetchall()
    return [r["id"] for r in found]


def index_top(conn: Connection, vector: np.ndarray, generation: Generation, k: int = 10) -> list[uuid.UUID]:
    """The nearest chunks of one generation through its HNSW index (the plan must use it)."""
    kind = generations.index_type(conn, generation.id)
    conn.commit()  # the SET LOCAL below must end with its own transaction, not outlive it in an outer one
    assert kind is not None, f"{generation.label} has no index"
    cast = sql.SQL("{}({})").format(sql.SQL(kind), sql.Literal(generation.dim))
    query = sql.SQL("SELECT id FROM chunks WHERE model_id = {m} ORDER BY embedding::{c} <=> %s::{c} LIMIT %s").format(
        m=sql.Literal(generation.id), c=cast
    )
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = conn.execute(sql.SQL("EXPLAIN ") + query, (vector, k))
        assert index_name(generation.id) in " ".join(str(r) for r in plan.fetchall())
        found = conn.execute(query, (vector, k)).fetchall()
    return [r["id"] for r in found]


def hnsw_indexes(conn: Connection) -> dict[str, str]:
    """Valid HNSW indexes on chunks, by name, with their definitions."""
    found = rows(
        conn,
        """
        SELECT c.relname AS name, pg_get_indexdef(x.indexrelid) AS def FROM pg_index x
        JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam
        WHERE x.indrelid = 'chunks'::regclass AND am.amname = 'hnsw' AND x.indisvalid
        """,
    )
    return {r["name"]: r["def"] for r in found}


def damaged(origin: Origin, tmp_path: Path) -> Path:
    copy = tmp_path / "snap"
    shutil.copytree(origin.snapshot, copy)
    return copy


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def edit_manifest(path: Path, change: Any) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def replace_table(snap: Path, table: str, data: pa.Table) -> None:
    """Make ``data`` the snapshot's file of ``table``, with a manifest that agrees (sound files of other data)."""
    path = snap / f"{table}.parquet"
    pq.write_table(data, path)
    raw = path.read_bytes()

    def change(manifest: dict[str, Any]) -> None:
        entry = manifest["tables"][table]
        kept = {c["name"]: c for c in entry["columns"]}
        entry.update(
            rows=data.num_rows,
            bytes=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            columns=[kept[name] for name in data.column_names],
        )

    edit_manifest(snap, change)


CUSTOM_INDEX = (
    "CREATE INDEX chunks_custom_l2 ON chunks USING hnsw ((embedding::vector(384)) vector_l2_ops) WHERE model_id = 1"
)
"""An operator's own HNSW index on the target (not a generation's): dropped for the load, built again after."""
