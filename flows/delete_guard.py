"""The mass-delete guard: no run deletes most of a source silently.

Every run marks the documents it found gone as held (``vectorstore.ledger.hold_deletions``) and, at its end,
settles its source's held deletions at once: within the guard they are applied, beyond it none is, the run
fails with one line that says why and how to confirm, and they stay held (chunks searchable) for a later
run with ``--allow-mass-delete`` or ``deletes.allow_mass``. A document seen again meanwhile is no longer
held. The decision itself (``allows``) is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.base import DeleteGuard
from flows.planning import SourceRef
from flows.settings import RaglineSettings
from vectorstore import ledger
from vectorstore.db import Connection

CONFIRM_FLAG = "--allow-mass-delete"


class DeletionsHeld(Exception):
    """A run's deletions went past the guard: nothing of them was deleted. Raised once the run's counts are
    recorded, so the run ends failed with this one line as its reason."""


def allows(held: int, documents: int, guard: DeleteGuard, *, confirmed: bool = False) -> bool:
    """Whether ``held`` deletions out of a source's ``documents`` (not deleted, the held ones included) may
    go: when confirmed (the flag or ``allow_mass``), when they are few (at most ``min_count``), or when they
    are at most ``max_share`` of the documents."""
    if held == 0 or confirmed or guard.allow_mass or held <= guard.min_count:
        return True
    return held <= guard.max_share * documents


def guard_of(settings: RaglineSettings, source: str) -> tuple[DeleteGuard, str]:
    """The guard of ``source`` and the setting it comes from (named in messages): the source's own
    ``deletes``, else the top-level one (also for a PDF run under a name no source configures)."""
    for index, configured in enumerate(settings.sources):
        if configured.name == source and configured.deletes is not None:
            return configured.deletes, f"sources[{index}].deletes"
    return settings.deletes, "deletes"


@dataclass(frozen=True)
class Settled:
    """What settling a source's held deletions did: ``deleted`` applied, or ``held`` kept (then ``message``
    says why in one line)."""

    deleted: int = 0
    held: int = 0
    message: str | None = None

    def raise_if_held(self) -> None:
        if self.message is not None:
            raise DeletionsHeld(self.message)


def held_message(source: str, held: int, documents: int, guard: DeleteGuard, setting: str) -> str:
    share = held / documents if documents else 1.0
    return (
        f"source {source!r}: {held} of its {documents} documents ({share:.0%}) are gone, more than "
        f"{setting}.max_share ({guard.max_share:.0%}) allows: nothing deleted, their chunks stay searchable; "
        f"confirm with {CONFIRM_FLAG} (or {setting}.allow_mass: true)"
    )


def settle(conn: Connection, settings: RaglineSettings, source: SourceRef, *, confirmed: bool = False) -> Settled:
    """Apply the source's held deletions if the guard (or the operator) allows them all, else keep them all."""
    pending = ledger.pending_deletions(conn, source.id)
    guard, setting = guard_of(settings, source.name)
    held = len(pending.held)
    if allows(held, pending.documents, guard, confirmed=confirmed):
        return Settled(deleted=ledger.delete_held(conn, pending.held))
    return Settled(held=held, message=held_message(source.name, held, pending.documents, guard, setting))
