"""Storage of embedding drift baselines and of the model canary (migration 10), and the canary's write gate.

A baseline belongs to a source and a model generation (vectors of two models are not comparable); the tenant
is the source's. Samples are read back from ``chunks``: a run's are the chunks of the documents it committed
(``documents.committed_at`` between the run's start and end), chunks whose vectors were reused included; a
source's are all its committed chunks. A sample is at most ``limit`` chunks, picked by chunk id (ids derive
from content, so the pick is random-like and the same on every read) in one index-ordered pass.

The canary gate (``ensure_writable``) is the single place every chunk vector passes before it is written
(``vectorstore.store._copy_chunks``: group commits, background writers, re-embeds): a generation whose canary
check failed takes no new vectors until an operator resolves it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from embedding.canary import CanaryResult
from embedding.drift import Profile
from vectorstore.db import Connection

ORIGIN_FIRST = "first ingest"
ORIGIN_RESET = "reset from stored chunks"
ORIGIN_LAST_RUN = "reset from the last run"


class CanaryMismatchError(RuntimeError):
    """Writes into a model generation are stopped: its canary texts embed differently from the vectors
    stored for it. Raised before anything of the batch is written, so the batch's documents stay pending and
    the next run after the resolution ingests them."""


@dataclass(frozen=True)
class Sample:
    vectors: np.ndarray
    tokens: list[int]
    total: int
    """Chunks the sample was drawn from."""

    @staticmethod
    def empty() -> Sample:
        return Sample(np.zeros((0, 0), dtype=np.float32), [], 0)


@dataclass(frozen=True)
class StoredBaseline:
    id: int
    origin: str
    created_at: datetime
    chunks: int
    profile: Profile


def _sample(conn: Connection, where: sql.Composable, params: dict[str, Any], limit: int) -> Sample:
    """Chunks of the documents ``where`` selects (alias ``d``) in ``model_id``: the first ``limit`` by id."""
    query = sql.SQL(
        """
        SELECT c.embedding, c.token_count, count(*) OVER () AS total
        FROM chunks c JOIN documents d ON d.id = c.document_id
        WHERE c.model_id = %(model_id)s AND d.status = 'committed' AND {where}
        ORDER BY c.id LIMIT %(limit)s
        """
    ).format(where=where)
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(query, {**params, "limit": limit}).fetchall()
    conn.commit()
    if not rows:
        return Sample.empty()
    vectors = np.stack([np.asarray(r["embedding"].to_numpy(), dtype=np.float32) for r in rows])
    return Sample(vectors, [int(r["token_count"]) for r in rows], int(rows[0]["total"]))


def run_sample(conn: Connection, run_id: int, source_id: int, model_id: int, limit: int) -> Sample:
    """The chunks of the documents run ``run_id`` committed for source ``source_id`` (a sample): committed
    between its start and its end (a document a later run committed again is that run's now)."""
    where = sql.SQL(
        "d.source_id = %(source_id)s AND d.committed_at BETWEEN "
        "(SELECT started_at FROM runs WHERE id = %(run)s) "
        "AND (SELECT coalesce(finished_at, 'infinity') FROM runs WHERE id = %(run)s)"
    )
    return _sample(conn, where, {"source_id": source_id, "model_id": model_id, "run": run_id}, limit)


def source_sample(conn: Connection, source_id: int, model_id: int, limit: int) -> Sample:
    """The chunks the source holds now (a sample)."""
    return _sample(conn, sql.SQL("d.source_id = %(source_id)s"), {"source_id": source_id, "model_id": model_id}, limit)


def last_writing_run(conn: Connection, source_id: int, min_chunks: int) -> int | None:
    """The source's latest finished run that committed documents with at least ``min_chunks`` chunks (what
    ``baseline reset --last-run`` takes: a one-page update after the alert is not what the operator accepts)."""
    row = conn.execute(
        """
        SELECT id FROM runs WHERE source_id = %s AND finished_at IS NOT NULL
          AND coalesce((counts->>'committed')::int, 0) > 0
          AND coalesce((counts->>'chunks_written')::int, 0) + coalesce((counts->>'chunks_reused')::int, 0) >= %s
        ORDER BY started_at DESC, id DESC LIMIT 1
        """,
        (source_id, min_chunks),
    ).fetchone()
    conn.commit()
    return None if row is None else int(row["id"])


_RETIRE = (
    "UPDATE drift_baselines SET replaced_at = now() WHERE source_id = %s AND model_id = %s AND replaced_at IS NULL"
)


def current(conn: Connection, source_id: int, model_id: int) -> StoredBaseline | None:
    row = conn.execute(
        """
        SELECT id, origin, created_at, chunks, sample_size, mean, variance, cosines, token_lengths
        FROM drift_baselines WHERE source_id = %s AND model_id = %s AND replaced_at IS NULL
        """,
        (source_id, model_id),
    ).fetchone()
    conn.commit()
    if row is None:
        return None
    profile = Profile(
        count=int(row["sample_size"]),
        mean=np.asarray(row["mean"], dtype=np.float64),
        variance=np.asarray(row["variance"], dtype=np.float64),
        cosines=np.asarray(row["cosines"], dtype=np.float64),
        tokens=np.asarray(row["token_lengths"], dtype=np.float64),
    )
    return StoredBaseline(int(row["id"]), str(row["origin"]), row["created_at"], int(row["chunks"]), profile)


def anchor(
    conn: Connection,
    source_id: int,
    model_id: int,
    profile: Profile,
    *,
    chunks: int,
    origin: str,
    run_id: int | None = None,
) -> int:
    """Make ``profile`` the source's baseline in ``model_id`` (the current one, if any, is kept as replaced);
    returns its id. Two processes anchoring at once: one wins, the other's insert waits on the unique index
    and then replaces it, which is as good (both describe the same source)."""
    with conn.transaction():
        conn.execute(_RETIRE, (source_id, model_id))
        row = conn.execute(
            """
            INSERT INTO drift_baselines
                (source_id, model_id, origin, run_id, chunks, sample_size, mean, variance, cosines, token_lengths)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id
            """,
            (
                source_id,
                model_id,
                origin,
                run_id,
                chunks,
                profile.count,
                profile.mean.tolist(),
                profile.variance.tolist(),
                profile.cosines.tolist(),
                profile.tokens.tolist(),
            ),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def drop(conn: Connection, source_id: int, model_id: int) -> None:
    """Retire the source's baseline in ``model_id``: the next run that finds enough chunks anchors a new one."""
    with conn.transaction():
        conn.execute(_RETIRE, (source_id, model_id))


def record_drift(conn: Connection, run_id: int, drift: dict[str, Any]) -> None:
    with conn.transaction():
        conn.execute("UPDATE runs SET drift = %s WHERE id = %s", (Jsonb(drift), run_id))


def overview(conn: Connection) -> dict[str, dict[str, Any]]:
    """Per source: its tenant, its current baseline in the serving (else newest) generation, and the drift of
    its latest run that measured one, for ``ragline status``."""
    rows = conn.execute(
        """
        SELECT s.name, s.tenant,
            (SELECT json_build_object('id', b.id, 'origin', b.origin, 'created_at', b.created_at,
                                      'chunks', b.chunks, 'sample', b.sample_size, 'model_id', b.model_id)
             FROM drift_baselines b JOIN models m ON m.id = b.model_id
             WHERE b.source_id = s.id AND b.replaced_at IS NULL
             ORDER BY (m.state = 'active') DESC, b.id DESC LIMIT 1) AS baseline,
            (SELECT jsonb_build_object('run', r.id, 'finished_at', r.finished_at) || r.drift
             FROM runs r WHERE r.source_id = s.id AND r.drift IS NOT NULL
             ORDER BY r.started_at DESC, r.id DESC LIMIT 1) AS drift
        FROM sources s ORDER BY s.name
        """
    ).fetchall()
    conn.commit()
    return {r["name"]: {"tenant": r["tenant"], "baseline": r["baseline"], "latest": r["drift"]} for r in rows}


# -- the model canary ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCanary:
    digest: str
    vectors: np.ndarray
    status: str


def stored_canary(conn: Connection, model_id: int) -> StoredCanary | None:
    row = conn.execute(
        "SELECT texts_digest, vectors, status FROM model_canaries WHERE model_id = %s", (model_id,)
    ).fetchone()
    conn.commit()
    if row is None:
        return None
    return StoredCanary(str(row["texts_digest"]), np.asarray(row["vectors"], dtype=np.float32), str(row["status"]))


def store_canary(conn: Connection, model_id: int, digest: str, vectors: np.ndarray, *, replace: bool) -> bool:
    """Store the reference vectors of ``model_id``'s canary: on its first start (``replace`` False: a
    concurrent first start's stay, and False is returned), or as an operator's acceptance (``replace``: the
    status is cleared)."""
    with conn.transaction():
        if replace:
            cur = conn.execute(
                """
                INSERT INTO model_canaries (model_id, texts_digest, vectors, status, checked_at, checked_by,
                                            min_cosine, mean_cosine, worst_text)
                VALUES (%s, %s, %s, 'ok', now(), %s, 1.0, 1.0, NULL)
                ON CONFLICT (model_id) DO UPDATE SET texts_digest = EXCLUDED.texts_digest,
                    vectors = EXCLUDED.vectors, stored_at = now(), status = 'ok', checked_at = now(),
                    checked_by = EXCLUDED.checked_by, min_cosine = 1.0, mean_cosine = 1.0, worst_text = NULL
                """,
                (model_id, digest, vectors.tolist(), socket.gethostname()),
            )
        else:
            cur = conn.execute(
                """
                INSERT INTO model_canaries (model_id, texts_digest, vectors, checked_at, checked_by,
                                            min_cosine, mean_cosine)
                VALUES (%s, %s, %s, now(), %s, 1.0, 1.0) ON CONFLICT (model_id) DO NOTHING
                """,
                (model_id, digest, vectors.tolist(), socket.gethostname()),
            )
    return cur.rowcount == 1


def record_check(conn: Connection, model_id: int, result: CanaryResult) -> None:
    """Record a check's result. A mismatch stops writes into the generation; a match does not lift a mismatch
    recorded earlier (by this or another process): only the resolution (``store_canary(replace=True)``) does,
    so a generation some process wrote with other numerics stays stopped until an operator has looked."""
    with conn.transaction():
        conn.execute(
            """
            UPDATE model_canaries SET checked_at = now(), checked_by = %s, min_cosine = %s, mean_cosine = %s,
                worst_text = %s, status = CASE WHEN %s THEN status ELSE 'mismatch' END
            WHERE model_id = %s AND (status = 'ok' OR NOT %s)
            """,
            (
                socket.gethostname(),
                result.min_cosine,
                result.mean_cosine,
                result.worst_text,
                result.ok,
                model_id,
                result.ok,
            ),
        )


def canary_states(conn: Connection) -> list[dict[str, Any]]:
    """Each generation's canary: the last check (status, worst text and cosine, when and where)."""
    rows = conn.execute(
        """
        SELECT m.id AS model_id, m.name, m.revision, m.state AS generation_state, c.status, c.stored_at,
               c.checked_at, c.checked_by, c.min_cosine, c.mean_cosine, c.worst_text
        FROM model_canaries c JOIN models m ON m.id = c.model_id
        WHERE m.state <> 'retired' ORDER BY m.id
        """
    ).fetchall()
    conn.commit()
    return [dict(r) for r in rows]


def ensure_writable(conn: Connection, model_id: int) -> None:
    """The canary's write gate, inside the writing transaction: raise ``CanaryMismatchError`` (naming the
    generation, the worst text and its cosine, and the ways out) while ``model_id``'s canary is in mismatch."""
    row = conn.execute(
        """
        SELECT m.name, m.revision, c.min_cosine, c.worst_text, c.checked_by
        FROM model_canaries c JOIN models m ON m.id = c.model_id
        WHERE c.model_id = %s AND c.status = 'mismatch'
        """,
        (model_id,),
    ).fetchone()
    if row is None:
        return
    worst = str(row["worst_text"] or "")
    worst = worst if len(worst) <= 40 else worst[:37] + "..."
    raise CanaryMismatchError(
        f"writes into model generation {model_id} ({row['name']} {row['revision']}) are stopped: the model canary "
        f"text {worst!r} embeds at cosine {row['min_cosine']:.4f} to the vectors stored for this generation "
        f"(checked on {row['checked_by']}): other weights, library or numerics under the same model identity. "
        "Restore what wrote the generation, or run `ragline canary accept` to take the current model's vectors "
        "as the reference (the stored vectors are then mixed with the new numerics), or configure the new "
        "weights as another model (a local directory: its revision is their hash) and `ragline generation "
        "migrate`. Documents of this run stay pending for the next one."
    )


def find_source(conn: Connection, name: str) -> tuple[int, str] | None:
    """The ledger id and tenant of source ``name`` (names are unique across tenants)."""
    row = conn.execute("SELECT id, tenant FROM sources WHERE name = %s", (name,)).fetchone()
    conn.commit()
    return None if row is None else (int(row["id"]), str(row["tenant"]))


def source_names(conn: Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sources ORDER BY name").fetchall()
    conn.commit()
    return [str(r["name"]) for r in rows]
