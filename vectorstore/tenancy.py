"""Tenant isolation enforced by Postgres: row-level security policies on the tables searches read.

Searches for a tenant switch to the role ``ragline_tenant`` (no login, read-only) and set ``ragline.tenant``
for their transaction; the policies show that role only the tenant's rows, so a bug in a filter cannot leak
another tenant's chunks. The tables' owner (the pipeline, and operators' searches without a tenant) is not
subject to the policies. Roles are cluster-wide:
creating it is idempotent and safe when several databases of one server use ragline.
"""

from __future__ import annotations

from psycopg import sql

from vectorstore.db import Connection
from vectorstore.search import TENANT_ROLE

_TABLES = ("sources", "documents", "chunks")
_READ_ONLY = ("models",)
_POLICY = "ragline_tenant_isolation"


def ensure_row_level_security(conn: Connection) -> None:
    """Create the tenant role and the policies (idempotent). Needs a role allowed to create roles (the
    embedded server's superuser, or grant CREATEROLE once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x72676C74,))
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TENANT_ROLE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(TENANT_ROLE)))
        role = sql.Identifier(TENANT_ROLE)
        member = conn.execute(
            "SELECT pg_has_role(current_user, %s, 'MEMBER') AS m, "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS su",
            (TENANT_ROLE,),
        ).fetchone()
        if member and not member["m"] and not member["su"]:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        for table in (*_TABLES, *_READ_ONLY):
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), role))
        for table in _TABLES:
            ident = sql.Identifier(table)
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ident))
            conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(_POLICY), ident))
            conn.execute(
                sql.SQL(
                    "CREATE POLICY {policy} ON {table} FOR SELECT TO {role} "
                    "USING (tenant = current_setting('ragline.tenant', true))"
                ).format(policy=sql.Identifier(_POLICY), table=ident, role=role)
            )


def source_tenant(conn: Connection, name: str) -> str | None:
    """The tenant source ``name`` belongs to, None when the ledger has no such source yet."""
    row = conn.execute("SELECT tenant FROM sources WHERE name = %s", (name,)).fetchone()
    conn.commit()
    return None if row is None else str(row["tenant"])
