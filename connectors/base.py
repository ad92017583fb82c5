"""The contract between a source and the rest of the pipeline.

A connector yields ``SourceDocument`` objects that are cheap to produce (identity and a content hash), and
only parses them when asked: an unchanged document is recognised by its hash and never parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field

from connectors.http import HttpStats


class DeleteGuard(BaseModel):
    """When a run's deletions wait for an operator: a share of a source's documents gone at once is more
    likely an unmounted share or an API answering empty than a real clean-up, and deleting would empty the
    index. Held deletions keep their chunks searchable until confirmed or seen again."""

    model_config = ConfigDict(extra="forbid")

    max_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="A run may delete at most this share of the source's documents; more are held until confirmed.",
    )
    min_count: int = Field(
        default=3,
        ge=0,
        description="Deletions of at most this many documents always go, whatever their share (a small source "
        "may lose a file or two).",
    )
    allow_mass: bool = Field(
        default=False,
        description="Apply deletions over max_share without confirmation (what --allow-mass-delete does for one run).",
    )


class SourceSettingsBase(BaseModel):
    """What every configured source has, whatever its kind: a name, a schedule for deployments, a tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Source name in the ledger and the CLI.")
    schedule: str | None = Field(default=None, description="Cron schedule of batch runs (deployments).")
    tenant: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Tenant of every document and chunk of this source (searches can be scoped to one).",
    )
    deletes: DeleteGuard | None = Field(
        default=None, description="This source's mass-delete guard; unset: the top-level `deletes` settings."
    )


class DocumentError(Exception):
    """A document that cannot be ingested as it is: it gets quarantined, the run goes on.

    ``reason`` is a short stable code (``encrypted``, ``truncated``, ``not_a_pdf``, ...) operators can filter
    on; ``retryable`` marks failures that may go away by themselves (a file being written, an I/O error), so
    the ledger schedules another attempt instead of waiting for the content to change.
    """

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (a document's load may carry one to a parser process): the default passes only args.
        return (type(self), (self.reason, self.message), {"retryable": self.retryable})


@dataclass(frozen=True)
class Page:
    """Text of one page; ``number`` is 1-based, or None where pages do not apply (a wiki page, a record)."""

    number: int | None
    text: str


@dataclass(frozen=True)
class ParsedDocument:
    title: str
    pages: list[Page]
    metadata: dict[str, Any] = field(default_factory=dict)


Load = Callable[[], ParsedDocument]
"""Parses one document version (raising ``DocumentError`` for poison input)."""


@dataclass(frozen=True)
class SourceDocument:
    """One version of one document at its source.

    ``content_hash`` identifies the version; ``load`` parses it (raising ``DocumentError`` for poison input).

    A source whose content must be read to be hashed (a file) can defer both: ``read`` reads it once and
    returns its ``Content`` (the hash and a ``load`` over what was read), so a file is read once per run, and
    only when its ``stat_key`` (a cheap change signal: size, mtime, inode) differs from the ledger's. Until
    then ``content_hash`` is a placeholder that never reaches the ledger.
    """

    external_id: str
    uri: str
    content_hash: str
    load: Callable[[], ParsedDocument] = field(repr=False, compare=False)
    title: str | None = None
    modified: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stat_key: str | None = None
    read: Callable[[], Content] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Content:
    """A document read once: its content hash, a parse of what was read, how many bytes that took, and the
    stat key taken just before reading (the one that matches these bytes)."""

    content_hash: str
    load: Callable[[], ParsedDocument] = field(repr=False)
    size: int = 0
    stat_key: str | None = None


class DocumentGone(Exception):
    """The document vanished between listing and reading: it is skipped, and the next listing finds it gone."""


def _raise(error: DocumentError) -> ParsedDocument:
    raise error


def failing_document(
    external_id: str, uri: str, content_hash: str, error: DocumentError, title: str | None = None
) -> SourceDocument:
    """A document whose load raises ``error``: a record the source gave us but that cannot be read (bad
    payload, unreadable file) is quarantined like any poison document instead of failing the run."""
    return SourceDocument(external_id, uri, content_hash, partial(_raise, error), title=title)


class Connector(Protocol):
    """A source of documents. ``kind`` names the connector type stored in the ledger."""

    kind: str

    def iter_documents(self) -> Iterator[SourceDocument]: ...


@dataclass(frozen=True)
class Batch:
    """One page of a remote source: documents seen, external ids deleted at the source, and the cursor to
    save once all of it is committed (or quarantined). ``None`` as cursor: the sync is complete."""

    documents: list[SourceDocument]
    deleted: list[str]
    cursor: dict[str, Any] | None


class RemoteSource(Protocol):
    """A paged remote source, resumable from a saved cursor. It owns an HTTP client: ``stats`` counts its
    requests for the run's report, ``close`` (or leaving a ``with`` block) releases its connections."""

    kind: str

    @property
    def stats(self) -> HttpStats: ...

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
