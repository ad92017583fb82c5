"""The Confluence cursor: where a listing or an incremental run stands, with the page ids known from earlier
runs (deflated: the pipeline gives a remote source no view of the ledger, so a reconcile needs them here)."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.cursors import CursorReader
from connectors.values import parse_timestamp


def pack_ids(ids: Iterable[str]) -> str:
    """Page ids, sorted and deflated: the known set of a large wiki stays a small part of the cursor."""
    raw = "\n".join(sorted(set(ids))).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack_ids(packed: Any) -> set[str]:
    if not packed:
        return set()
    raw = zlib.decompress(base64.b64decode(str(packed))).decode()
    return set(raw.split("\n")) if raw else set()


@dataclass(frozen=True)
class ConfluenceCursor:
    """``full``: listing ``space`` from link ``next``, ``seen`` the ids listed so far, ``since`` the newest
    change when the listing began. ``incremental``: searching changes from ``since`` (``latest`` the newest
    seen so far) from link ``next``, or listing removed pages (``phase="removed"``). Both carry ``known``, the
    ids of the last complete listing plus changes since, and when that listing began (``reconciled_at``)."""

    mode: Literal["full", "incremental"] = "full"
    since: str | None = None
    next: str | None = None
    known: frozenset[str] = field(default_factory=frozenset)
    reconciled_at: str | None = None
    space: str | None = None
    seen: frozenset[str] = field(default_factory=frozenset)
    latest: str | None = None
    phase: Literal["removed"] | None = None

    @classmethod
    def from_json(cls, saved: Mapping[str, Any] | None, *, source: str = "confluence") -> ConfluenceCursor:
        if not saved:
            return cls()
        read = CursorReader(source, saved)
        mode = read.choice("mode", ("full", "incremental"), "full")
        stamps = {name: read.text(name) for name in ("since", "latest", "reconciled_at")}
        for name, value in stamps.items():
            if value is not None and parse_timestamp(value) is None:
                raise read.fail(name, f"{value!r:.80} is not an ISO 8601 timestamp")
        phase = read.text("phase")
        if phase not in (None, "removed"):
            raise read.fail("phase", f"{phase!r:.80} is not 'removed'")
        return cls(
            mode="incremental" if mode == "incremental" else "full",
            since=stamps["since"],
            next=read.text("next"),
            known=_ids(read, "known"),
            reconciled_at=stamps["reconciled_at"],
            space=read.text("space"),
            seen=_ids(read, "seen"),
            latest=stamps["latest"],
            phase="removed" if phase else None,
        )

    def to_json(self) -> dict[str, Any]:
        shared = {"mode": self.mode, "since": self.since, "next": self.next, "known": pack_ids(self.known)}
        if self.mode == "full":
            listing = {"space": self.space, "seen": pack_ids(self.seen), "reconciled_at": self.reconciled_at}
            return shared | listing
        phase = {"phase": self.phase} if self.phase else {}
        return shared | {"latest": self.latest, "reconciled_at": self.reconciled_at} | phase


def _ids(read: CursorReader, name: str) -> frozenset[str]:
    packed = read.text(name)
    try:
        return frozenset(unpack_ids(packed))
    except (binascii.Error, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise read.fail(name, f"not a packed id list ({err})") from err
