"""Salesforce REST API: records of configured sObjects (Account, Contact, Opportunity, Case, ...) as documents.

One SOQL query per object through ``queryAll`` (so records in the recycle bin come back with
``IsDeleted = true`` and become deletions), ordered by ``SystemModstamp, Id`` and paged with the query
locator in ``nextRecordsUrl``. Cursor (``SalesforceCursor``) per object: ``{"since": T, "next": locator}``,
saved after each page:
``T`` is the newest ``SystemModstamp`` of the pages committed so far (a SOQL datetime literal), ``next`` the
locator of the page after them, or None once the query is done.

- The next run queries ``SystemModstamp >= T``: records stamped in the same second as the last one seen
  come again, so one committed in that second after the previous query ran is not lost; a re-seen
  unchanged record costs a hash comparison.
- A locator dies after some idle minutes (and with the session that opened it): a resumed or slow run that
  gets 400/404 for it (or 401 for a locator saved by an earlier run) queries again from ``T``.
- Records leave the recycle bin after 15 days: a source not synced within that time misses those deletions.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import (
    Batch,
    DocumentError,
    SourceDocument,
    SourceSettingsBase,
    failing_document,
)
from connectors.cursors import CursorReader, ObjectCursor
from connectors.errors import MalformedPayloadError, RequestRejectedError
from connectors.http import HttpPolicy, HttpSource, ResilientClient
from connectors.salesforce_records import parse_record, record_text
from connectors.values import parse_timestamp, secret_from_env

log = logging.getLogger(__name__)

# Only letters, digits and underscores (custom `__c`, namespaced `ns__X__c`, relationship `__r` names
# included): nothing that could end an identifier and start SOQL of its own.
OBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# A field, or a path through up to five parent relationships (SOQL's limit): Account.Owner.Name.
FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*){0,5}")
SOQL_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
API_VERSION = re.compile(r"v\d+\.\d+")
SYSTEM_FIELDS = ("Id", "SystemModstamp", "IsDeleted")

DEFAULT_FIELDS: dict[str, list[str]] = {
    "Account": ["Name", "Type", "Industry", "Website", "BillingCity", "BillingCountry", "Description"],
    "Contact": ["Name", "Title", "Department", "Email", "Phone", "Account.Name", "Description"],
    "Opportunity": ["Name", "StageName", "Amount", "CloseDate", "Type", "Account.Name", "NextStep", "Description"],
    "Case": ["CaseNumber", "Subject", "Status", "Priority", "Origin", "Account.Name", "Description"],
    "Lead": ["Name", "Company", "Title", "Email", "Status", "Industry", "Description"],
}
DEFAULT_OBJECTS = ["Account", "Contact", "Opportunity", "Case"]
# Most objects have a Name; Case has none (its number is not a title people search for).
DEFAULT_TITLE: dict[str, str] = {"Case": "Subject"}


def _check_field(value: str, where: str) -> str:
    if not FIELD_NAME.fullmatch(value):
        raise ValueError(
            f"{where} {value!r} is not a SOQL field name: letters, digits and underscores, starting with a "
            "letter, relationship paths joined by dots (Account.Name)"
        )
    return value


class SalesforceObject(BaseModel):
    """One sObject to ingest. Written in config as a dict, or just its name where defaults exist."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="API name of the sObject: Account, Invoice__c, ns__Thing__c.")
    fields: list[str] = Field(
        min_length=1, description="Fields that become the record's text; parent fields as Account.Name."
    )
    title_field: str = Field(default="Name", description="Field shown as the title (Subject for Case).")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return data
        data = dict(data)
        # The standard objects in their canonical spelling: SOQL does not mind case, external ids do.
        name = data["name"] = next((k for k in DEFAULT_FIELDS if k.lower() == data["name"].lower()), data["name"])
        if data.get("fields") is None:
            if name not in DEFAULT_FIELDS:
                raise ValueError(f"no default fields for object {name!r}: list its fields")
            data["fields"] = list(DEFAULT_FIELDS[name])
        if data.get("title_field") is None:
            data["title_field"] = DEFAULT_TITLE.get(name, "Name")
        return data

    @field_validator("name")
    @classmethod
    def _object_name(cls, value: str) -> str:
        if not OBJECT_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a Salesforce object name: letters, digits and underscores, starting with a letter"
            )
        return value

    @field_validator("fields")
    @classmethod
    def _field_names(cls, value: list[str]) -> list[str]:
        return [_check_field(v, f"fields[{i}]") for i, v in enumerate(value)]

    @field_validator("title_field")
    @classmethod
    def _title_name(cls, value: str) -> str:
        return _check_field(value, "title_field")


class SalesforceSettings(SourceSettingsBase):
    kind: Literal["salesforce"] = "salesforce"
    base_url: str = Field(description="Instance URL, e.g. https://example.my.salesforce.com")
    api_version: str = Field(default="v60.0", description="REST API version, e.g. v60.0.")
    token_env: str = Field(default="SALESFORCE_TOKEN", description="Environment variable with the OAuth access token.")
    objects: list[SalesforceObject] = Field(
        default_factory=lambda: [SalesforceObject.model_validate(o) for o in DEFAULT_OBJECTS],
        description="Objects to ingest: names with defaults, {name, fields, title_field}, or {name: fields}.",
    )
    page_size: int = Field(
        default=2000, ge=200, le=2000, description="Records per page (Sforce-Query-Options batchSize, 200-2000)."
    )
    # API calls count against the org's daily allowance; a few per second is plenty for paging 2,000 at a time.
    http: HttpPolicy = Field(default_factory=lambda: HttpPolicy(rate_per_second=5.0, burst=5))

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL of a Salesforce instance")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not API_VERSION.fullmatch(value):
            raise ValueError(f"{value!r} is not an API version like v60.0")
        return value

    @field_validator("objects", mode="before")
    @classmethod
    def _objects_mapping(cls, value: Any) -> Any:
        """``{Account: [Name, Industry], Case: null}`` is the short form of the list."""
        if isinstance(value, Mapping):
            return [{"name": k, "fields": v} for k, v in value.items()]
        return value

    @field_validator("objects")
    @classmethod
    def _unique_objects(cls, value: list[SalesforceObject]) -> list[SalesforceObject]:
        seen: set[str] = set()
        for obj in value:
            if obj.name.lower() in seen:  # SOQL names are case-insensitive; the cursor is kept per object
                raise ValueError(f"object {obj.name!r} is listed twice")
            seen.add(obj.name.lower())
        return value


def select_fields(obj: SalesforceObject) -> list[str]:
    """The system fields the sync needs, then the configured ones; SOQL rejects a field selected twice."""
    out: list[str] = []
    seen: set[str] = set()
    for name in [*SYSTEM_FIELDS, *obj.fields, obj.title_field]:
        if name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


def build_soql(obj: SalesforceObject, since: str | None) -> str:
    """The query of one object's changes from ``since`` (a SOQL datetime literal) on, oldest first.

    Names were validated with the settings; ``since`` comes from a saved cursor and is checked again here,
    so nothing but identifiers and a datetime literal ever reaches the query text."""
    where = ""
    if since is not None:
        if not SOQL_DATETIME.fullmatch(since):
            raise ValueError(f"cursor of {obj.name}: {since!r} is not a SOQL datetime like 2024-01-01T00:00:00Z")
        where = f" WHERE SystemModstamp >= {since}"
    select = ", ".join(select_fields(obj))
    # SOQL over REST binds no parameters: every part here is a validated identifier or the checked literal.
    return f"SELECT {select} FROM {obj.name}{where} ORDER BY SystemModstamp, Id"  # noqa: S608


def soql_datetime(value: datetime) -> str:
    """UTC, whole seconds: truncating only widens a ``>=`` query, so nothing is skipped."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


parse_modstamp = parse_timestamp  # Salesforce writes 2024-01-01T12:34:56.000+0000


def _locator_lost(err: RequestRejectedError, carried: bool) -> bool:
    """Whether a rejected ``nextRecordsUrl`` means the locator is gone (expired, or purged as one of too many
    open ones) rather than a request the source will never take. A locator belongs to the session that
    opened it, so one saved by an earlier run may also meet 401 under today's token."""
    return err.status in (400, 404) or (carried and err.status == 401)


class _Page(NamedTuple):
    """One answer: documents and deletions, its newest ``SystemModstamp``, and the next locator."""

    documents: list[SourceDocument]
    deleted: list[str]
    newest: datetime | None
    next_url: str | None


@dataclass(frozen=True)
class ObjectPosition:
    """Where one object's query stands: the newest ``SystemModstamp`` committed (a SOQL datetime literal) and
    the locator of the page after it, None once the query is done."""

    since: str | None = None
    next: str | None = None

    @classmethod
    def read(cls, read: CursorReader) -> ObjectPosition:
        since, locator = read.text("since"), read.text("next")
        if since is not None and not SOQL_DATETIME.fullmatch(since):
            raise read.fail("since", f"{since!r:.80} is not a SOQL datetime like 2024-01-01T00:00:00Z")
        if locator is not None and not locator.startswith("/services/data/"):
            # Anything but a path on this instance could send the bearer token elsewhere.
            raise read.fail("next", f"the saved locator is not a /services/data/ path: {locator!r:.80}")
        return cls(since, locator)

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "next": self.next}


@dataclass(frozen=True)
class SalesforceCursor(ObjectCursor[ObjectPosition]):
    @classmethod
    def from_json(cls, saved: Mapping[str, Any] | None, *, source: str = "salesforce") -> SalesforceCursor:
        return cls(cls.read_objects(source, saved, ObjectPosition.read))

    def position(self, obj: str) -> ObjectPosition:
        return self.objects.get(obj) or ObjectPosition()


class SalesforceSource(HttpSource):
    kind = "salesforce"

    def __init__(
        self,
        settings: SalesforceSettings,
        client: ResilientClient | None = None,
        *,
        gate: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        token = secret_from_env(settings.name, settings.token_env) if client is None else ""
        self.client = client or ResilientClient(
            settings.name,
            settings.http,
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            gate=gate,
        )

    def _document(self, obj: SalesforceObject, record: dict[str, Any], rid: str) -> SourceDocument:
        external_id = f"{obj.name}/{rid}"
        uri = f"{self.settings.base_url}/lightning/r/{obj.name}/{rid}/view"
        try:
            title, text = record_text(record, obj.fields, obj.title_field)
            modified = parse_modstamp(record.get("SystemModstamp"))
            if modified is None:
                raise ValueError(f"SystemModstamp {record.get('SystemModstamp')!r} is not a timestamp")
        except ValueError as err:
            digest = hashlib.sha256(repr(record).encode()).hexdigest()
            return failing_document(
                external_id, uri, f"malformed:{digest}", DocumentError("malformed", f"{external_id}: {err}")
            )
        return SourceDocument(
            external_id=external_id,
            uri=uri,
            content_hash=hashlib.sha256(f"{title}\x1f{text}".encode()).hexdigest(),
            load=partial(parse_record, title, text),
            title=title or external_id,
            modified=modified,
            metadata={"object": obj.name, "salesforce_id": rid},
        )

    def _page(self, obj: SalesforceObject, answer: Any) -> _Page:
        records = answer.get("records") if isinstance(answer, dict) else None
        if not isinstance(records, list) or not isinstance(answer.get("done"), bool):
            raise MalformedPayloadError(self.settings.name, f"{obj.name} query answer has no records list or done flag")
        next_url = answer.get("nextRecordsUrl")
        if answer["done"]:
            next_url = None
        elif not isinstance(next_url, str) or not next_url.startswith("/services/data/"):
            # Anything but a path on this instance could send the bearer token elsewhere.
            raise MalformedPayloadError(
                self.settings.name, f"{obj.name} query is not done but nextRecordsUrl is {next_url!r}"
            )
        docs: list[SourceDocument] = []
        deleted: list[str] = []
        newest: datetime | None = None
        for record in records:
            rid = record.get("Id") if isinstance(record, dict) else None
            if not isinstance(record, dict) or not isinstance(rid, str) or not RECORD_ID.fullmatch(rid):
                log.warning("%s: a %s record without a valid Id: %.200r", self.settings.name, obj.name, record)
                continue
            stamp = parse_modstamp(record.get("SystemModstamp"))
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
            if record.get("IsDeleted") is True:
                deleted.append(f"{obj.name}/{rid}")
            else:
                docs.append(self._document(obj, record, rid))
        return _Page(docs, deleted, newest, next_url)

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]:
        state = SalesforceCursor.from_json(cursor, source=self.settings.name)
        for obj in self.settings.objects:
            for page, position in self._object(obj, state.position(obj.name)):
                state = state.moved(obj.name, position)
                yield Batch(page.documents, page.deleted, state.to_json())

    def _object(self, obj: SalesforceObject, position: ObjectPosition) -> Iterator[tuple[_Page, ObjectPosition]]:
        """Each page of the object's query, with the position after it."""
        locator = position.next
        carried = locator is not None  # saved by an earlier run
        restarted_at: str | None = None
        restarted = False
        while True:
            if locator is None:
                answer = self.client.get_json(
                    f"/services/data/{self.settings.api_version}/queryAll",
                    params={"q": build_soql(obj, position.since)},
                    headers={"Sforce-Query-Options": f"batchSize={self.settings.page_size}"},
                )
            else:
                try:
                    answer = self.client.get_json(locator)
                except RequestRejectedError as err:
                    # A second loss without progress would loop: surface it instead.
                    if not _locator_lost(err, carried) or (restarted and restarted_at == position.since):
                        raise
                    log.warning(
                        "%s: the query locator of %s is gone (%s); querying again from %s",
                        self.settings.name,
                        obj.name,
                        err,
                        position.since or "the start",
                    )
                    restarted, restarted_at = True, position.since
                    locator, carried = None, False
                    continue
                carried = False
            page = self._page(obj, answer)
            since = position.since
            if page.newest is not None:
                stamp = soql_datetime(page.newest)
                since = stamp if since is None or stamp > since else since
            locator = page.next_url
            position = replace(position, since=since, next=locator)
            yield page, position
            if locator is None:
                return
