"""Document claims: a session advisory lock per document, so concurrent runs over the same documents (several
workers on one source set) process each document once, and a run that dies releases its claims with its
connection. Session locks are why the pipeline keeps a connection of its own rather than one from a pool."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import psycopg

from vectorstore.db import Connection

log = logging.getLogger(__name__)


def claim_key(source_id: int, external_id: str) -> int:
    """The advisory lock of one document: a 64-bit hash, so concurrent runs agree on it without a table."""
    digest = hashlib.sha256(f"{source_id}\x1f{external_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Claims:
    """The documents this connection's session holds."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._held: set[int] = set()

    def claim(self, source_id: int, external_id: str, *, wait: bool) -> bool:
        """Take the document's lock; without ``wait``, only if nobody holds it. True when held."""
        key = claim_key(source_id, external_id)
        if key in self._held:
            return True
        if wait:
            self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            got = True
        else:
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (key,)).fetchone()
            got = bool(row and row["got"])
        self.conn.commit()
        if got:
            self._held.add(key)
        return got

    def release(self, source_id: int, external_ids: Iterable[str]) -> None:
        """Release these documents (those not held are ignored)."""
        self._unlock([k for k in (claim_key(source_id, e) for e in external_ids) if k in self._held])

    def release_all(self) -> None:
        """Release whatever is held; on a broken connection the locks went with its session."""
        try:
            self._unlock(list(self._held))
        except psycopg.Error:
            log.warning("could not release document claims", exc_info=True)
            self._held.clear()

    def _unlock(self, keys: list[int]) -> None:
        if not keys or self.conn.closed:
            return
        self.conn.rollback()  # an unlock inside a failed transaction would fail too
        for key in keys:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            self._held.discard(key)
        self.conn.commit()
