"""Model generations: every vector belongs to the model that made it, and exactly one model serves search.

A configured model that differs from the serving one starts a new generation: its vectors are written next
to the old ones (the embedding column is untyped, each generation has its own partial HNSW index, so even
the dimension may change), search keeps answering from the active generation, and once every document has
vectors of the new model the two swap in one transaction. Vectors of retired generations are deleted
afterwards, in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import sql

from vectorstore.db import Connection
from vectorstore.migrations import index_name


class ModelIdentity(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def normalized(self) -> bool: ...


@dataclass(frozen=True)
class Generation:
    id: int
    name: str
    revision: str
    dim: int
    normalized: bool
    state: str
    fingerprint: str | None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.revision}, dim {self.dim})"


_COLUMNS = sql.SQL("id, name, revision, dim, normalized, state, fingerprint")


def _one(conn: Connection, where: str, params: tuple[Any, ...] = ()) -> Generation | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM models WHERE {}").format(_COLUMNS, sql.SQL(where)),  # where: constants below
        params,
    ).fetchone()
    return Generation(**row) if row else None


def active(conn: Connection) -> Generation | None:
    return _one(conn, "state = 'active'")


def building(conn: Connection) -> Generation | None:
    return _one(conn, "state = 'building'")


def by_id(conn: Connection, model_id: int) -> Generation | None:
    return _one(conn, "id = %s", (model_id,))


def register(conn: Connection, identity: ModelIdentity, fingerprint: str | None = None) -> Generation:
    """Record the configured model and return its generation.

    The first model of a store serves at once. The serving model stays serving. Any other model becomes the
    generation being built (a generation that was being built for yet another model is retired: the
    configuration changed again before it finished).
    """
    with conn.transaction():
        conn.execute("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE")
        row = conn.execute(
            """
            INSERT INTO models (name, revision, dim, normalized) VALUES (%s, %s, %s, %s)
            ON CONFLICT (name, revision, dim, normalized) DO UPDATE SET name = EXCLUDED.name
            RETURNING id, state
            """,
            (identity.name, identity.revision, identity.dim, identity.normalized),
        ).fetchone()
        assert row is not None
        model_id, state = int(row["id"]), str(row["state"])
        if state != "active":
            serving = active(conn)
            if serving is None:
                state = "active"
            else:
                conn.execute(
                    "UPDATE models SET state = 'retired', state_changed_at = now() "
                    "WHERE state = 'building' AND id <> %s",
                    (model_id,),
                )
                state = "building"
        conn.execute(
            "UPDATE models SET state = %s, fingerprint = coalesce(%s, fingerprint), "
            "state_changed_at = CASE WHEN state = %s THEN state_changed_at ELSE now() END WHERE id = %s",
            (state, fingerprint, state, model_id),
        )
    found = by_id(conn, model_id)
    conn.commit()
    assert found is not None
    return found


_PENDING = """
FROM documents d
WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = d.id AND c.model_id = %(active)s)
  AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = d.id AND c.model_id = %(target)s)
  AND (d.status = 'quarantined' OR d.fingerprint IS DISTINCT FROM %(fingerprint)s)
"""


def pending_documents(conn: Connection, serving: Generation, target: Generation, limit: int) -> list[int]:
    """Documents that still have only vectors of the serving generation: their chunks must be embedded by the
    target model before the switch. A document already committed under the target's fingerprint is done even
    without chunks (it became empty)."""
    rows = conn.execute(
        sql.SQL("SELECT d.id {} ORDER BY d.id LIMIT %(limit)s").format(sql.SQL(_PENDING)),
        {"active": serving.id, "target": target.id, "fingerprint": target.fingerprint, "limit": limit},
    ).fetchall()
    conn.commit()
    return [int(r["id"]) for r in rows]


def count_pending(conn: Connection, serving: Generation, target: Generation) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) AS n {}").format(sql.SQL(_PENDING)),
        {"active": serving.id, "target": target.id, "fingerprint": target.fingerprint},
    ).fetchone()
    conn.commit()
    return int(row["n"]) if row else 0


class SwitchRefusedError(RuntimeError):
    """The target generation is not complete (or not built): search stays on the serving one."""


def switch(conn: Connection, target: Generation) -> None:
    """Make ``target`` the serving generation, atomically: a search sees either the old generation or the
    new one, never a mix. Refused while a document lacks target vectors or the target has no index."""
    with conn.transaction():
        conn.execute("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE")
        current = by_id(conn, target.id)
        if current is None or current.state != "building":
            raise SwitchRefusedError(f"model {target.label} is not the generation being built")
        serving = active(conn)
        if serving is not None:
            # Writers commit documents under row locks of the ledger: lock it so none lands between the check
            # and the switch.
            conn.execute("LOCK TABLE documents IN SHARE MODE")
            left = conn.execute(
                sql.SQL("SELECT count(*) AS n {}").format(sql.SQL(_PENDING)),
                {"active": serving.id, "target": target.id, "fingerprint": target.fingerprint},
            ).fetchone()
            if left and left["n"]:
                raise SwitchRefusedError(f"{left['n']} document(s) still lack vectors of {target.label}")
        if not index_present(conn, target.id):
            raise SwitchRefusedError(f"the index of {target.label} is not built")
        conn.execute(
            "UPDATE models SET state = 'retired', state_changed_at = now() WHERE state = 'active'",
        )
        conn.execute("UPDATE models SET state = 'active', state_changed_at = now() WHERE id = %s", (target.id,))


def index_present(conn: Connection, model_id: int) -> bool:
    row = conn.execute(
        """
        SELECT x.indisvalid AS valid FROM pg_index x
        WHERE x.indexrelid = to_regclass(%s)
        """,
        (index_name(model_id),),
    ).fetchone()
    return bool(row and row["valid"])


def index_type(conn: Connection, model_id: int) -> str | None:
    """The vector type of the generation's valid index (vector or halfvec), None without one."""
    row = conn.execute(
        """
        SELECT pg_get_indexdef(x.indexrelid) AS def FROM pg_index x
        WHERE x.indexrelid = to_regclass(%s) AND x.indisvalid
        """,
        (index_name(model_id),),
    ).fetchone()
    if not row:
        return None
    return "halfvec" if "::halfvec" in str(row["def"]) else "vector"


def purge_retired(conn: Connection, batch: int = 5000) -> int:
    """Delete vectors of retired generations in batches (short transactions, no long lock on chunks) and
    drop their indexes; returns the chunks deleted."""
    total = 0
    retired = [
        int(r["id"]) for r in conn.execute("SELECT id FROM models WHERE state = 'retired' ORDER BY id").fetchall()
    ]
    conn.commit()
    for model_id in retired:
        while True:
            with conn.transaction():
                cur = conn.execute(
                    "DELETE FROM chunks WHERE id IN (SELECT id FROM chunks WHERE model_id = %s LIMIT %s)",
                    (model_id, batch),
                )
                deleted = cur.rowcount
            total += deleted
            if deleted < batch:
                break
        with conn.transaction():
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(model_id))))
    return total


def overview(conn: Connection) -> list[dict[str, Any]]:
    """Generations that hold vectors or serve, for ``ragline status``: with a build in progress both show,
    with the documents still to re-embed."""
    rows = conn.execute(
        """
        SELECT m.id, m.name, m.revision, m.dim, m.normalized, m.state, m.state_changed_at,
               (SELECT count(*) FROM chunks c WHERE c.model_id = m.id) AS chunks
        FROM models m
        WHERE m.state <> 'retired' OR EXISTS (SELECT 1 FROM chunks c WHERE c.model_id = m.id)
        ORDER BY CASE m.state WHEN 'active' THEN 0 WHEN 'building' THEN 1 ELSE 2 END, m.id
        """
    ).fetchall()
    conn.commit()
    result = [dict(r) for r in rows]
    serving, target = active(conn), building(conn)
    for entry in result:
        entry["indexed"] = index_present(conn, entry["id"])
        if target is not None and serving is not None and entry["id"] == target.id:
            entry["pending_documents"] = count_pending(conn, serving, target)
    conn.commit()
    return result
