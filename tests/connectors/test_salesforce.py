"""Salesforce connector logic: SOQL building, identifier validation, record text, and the paging loop against
an ``httpx.MockTransport`` seam (the sync against an emulated API is in tests/flows/test_sync_salesforce.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from connectors.base import DocumentError
from connectors.errors import CursorError, MalformedPayloadError, RequestRejectedError
from connectors.http import HttpPolicy, ResilientClient
from connectors.salesforce import (
    SalesforceObject,
    SalesforceSettings,
    SalesforceSource,
    build_soql,
    parse_modstamp,
    soql_datetime,
)
from connectors.salesforce_records import record_text

BASE = "https://example.my.salesforce.com"
ACC = "001000000000001AAA"


def settings(**overrides: Any) -> SalesforceSettings:
    return SalesforceSettings.model_validate({"name": "sf", "base_url": BASE, **overrides})


def test_defaults_cover_the_common_objects() -> None:
    cfg = settings()
    assert [o.name for o in cfg.objects] == ["Account", "Contact", "Opportunity", "Case"]
    case = cfg.objects[3]
    assert case.title_field == "Subject" and "Account.Name" in case.fields
    assert cfg.api_version == "v60.0" and cfg.page_size == 2000 and cfg.token_env == "SALESFORCE_TOKEN"
    assert cfg.http.rate_per_second is not None


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        (["Lead"], [("Lead", "Name")]),
        ({"Account": ["Name", "Industry"], "Case": None}, [("Account", "Name"), ("Case", "Subject")]),
        ([{"name": "Invoice__c", "fields": ["Amount__c"], "title_field": "Number__c"}], [("Invoice__c", "Number__c")]),
        (
            ["case", {"name": "ns__Thing__c", "fields": ["Parent__r.Name"]}],
            [("Case", "Subject"), ("ns__Thing__c", "Name")],
        ),
    ],
)
def test_objects_in_their_config_forms(objects: Any, expected: list[tuple[str, str]]) -> None:
    assert [(o.name, o.title_field) for o in settings(objects=objects).objects] == expected


def test_a_dict_of_fields_keeps_them() -> None:
    [obj] = settings(objects={"Account": ["Name", "Owner.Manager.Name"]}).objects
    assert obj.fields == ["Name", "Owner.Manager.Name"]


@pytest.mark.parametrize(
    ("objects", "where", "says"),
    [
        ([{"name": "Account", "fields": ["Name", "Id FROM User --"]}], "objects.0.fields", "fields[1]"),
        ([{"name": "Account", "fields": ["(SELECT Id FROM Contacts)"]}], "objects.0.fields", "fields[0]"),
        ([{"name": "Account", "fields": ["Name, Phone"]}], "objects.0.fields", "'Name, Phone'"),
        ([{"name": "Account", "fields": ["1stField"]}], "objects.0.fields", "fields[0]"),
        ([{"name": "Account", "fields": ["Account..Name"]}], "objects.0.fields", "fields[0]"),
        ([{"name": "Account", "fields": ["Name'"]}], "objects.0.fields", "fields[0]"),
        ([{"name": "Account", "fields": ["A.B.C.D.E.F.G"]}], "objects.0.fields", "fields[0]"),
        (
            [{"name": "Account", "fields": ["Name"], "title_field": "Name WHERE"}],
            "objects.0.title_field",
            "title_field",
        ),
        ([{"name": "Account WHERE Id != null", "fields": ["Name"]}], "objects.0.name", "object name"),
        ([{"name": "Account.Name", "fields": ["Name"]}], "objects.0.name", "object name"),
        ([{"name": "Account", "fields": []}], "objects.0.fields", "at least 1"),
        (["Widget__c"], "objects.0", "no default fields for object 'Widget__c'"),
        (["Account", "account"], "objects", "listed twice"),
    ],
)
def test_bad_identifiers_are_refused_naming_the_field(objects: Any, where: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        settings(objects=objects)
    [error] = info.value.errors()
    assert ".".join(str(p) for p in error["loc"]) == where
    assert says in error["msg"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"page_size": 100}, "page_size"),
        ({"page_size": 5000}, "page_size"),
        ({"api_version": "60.0"}, "api_version"),
        ({"base_url": "example.my.salesforce.com"}, "base_url"),
        ({"tokn_env": "X"}, "tokn_env"),
    ],
)
def test_bad_settings_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        settings(**overrides)


def test_base_url_loses_its_trailing_slash() -> None:
    assert settings(base_url=f"{BASE}/").base_url == BASE


@pytest.mark.parametrize(
    ("fields", "title", "since", "expected"),
    [
        (
            ["Name", "Industry"],
            "Name",
            None,
            "SELECT Id, SystemModstamp, IsDeleted, Name, Industry FROM Account ORDER BY SystemModstamp, Id",
        ),
        (
            ["name", "id", "Account.Name"],
            "Subject",
            "2024-01-01T00:00:00Z",
            "SELECT Id, SystemModstamp, IsDeleted, name, Account.Name, Subject FROM Account"
            " WHERE SystemModstamp >= 2024-01-01T00:00:00Z ORDER BY SystemModstamp, Id",
        ),
    ],
)
def test_build_soql(fields: list[str], title: str, since: str | None, expected: str) -> None:
    assert build_soql(SalesforceObject(name="Account", fields=fields, title_field=title), since) == expected


@pytest.mark.parametrize("since", ["2024-01-01", "'2024-01-01T00:00:00Z'", "2024-01-01T00:00:00Z OR Id != null"])
def test_a_tampered_cursor_never_reaches_the_query(since: str) -> None:
    with pytest.raises(ValueError, match="cursor of Account"):
        build_soql(SalesforceObject(name="Account", fields=["Name"]), since)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01T12:34:56.000+0000", datetime(2024, 1, 1, 12, 34, 56, tzinfo=UTC)),
        ("2024-01-01T14:34:56.999+0200", datetime(2024, 1, 1, 12, 34, 56, 999000, tzinfo=UTC)),
        ("2024-01-01T12:34:56Z", datetime(2024, 1, 1, 12, 34, 56, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
        (1704112496, None),
    ],
)
def test_parse_modstamp(value: Any, expected: datetime | None) -> None:
    assert parse_modstamp(value) == expected


def test_soql_datetime_is_utc_whole_seconds() -> None:
    assert soql_datetime(datetime(2024, 1, 1, 14, 34, 56, 999000, tzinfo=UTC)) == "2024-01-01T14:34:56Z"
    assert soql_datetime(parse_modstamp("2024-01-01T14:34:56.000+0200") or datetime.now(UTC)) == "2024-01-01T12:34:56Z"


def test_record_text_flattens_parents_and_compound_fields_and_leaves_timestamps_out() -> None:
    record = {
        "attributes": {"type": "Contact", "url": "/services/data/v60.0/sobjects/Contact/003"},
        "Id": "003000000000001AAA",
        "SystemModstamp": "2024-01-01T12:34:56.000+0000",
        "name": "Ada Lovelace",
        "Email": None,
        "DoNotCall": False,
        "NumberOfEmployees": 12,
        "Account": {"attributes": {"type": "Account"}, "Name": "Analytical\u00a0Engines Ltd"},
        "MailingAddress": {"city": "London", "street": None, "country": "UK"},
    }
    fields = ["Name", "Email", "DoNotCall", "NumberOfEmployees", "Account.Name", "MailingAddress", "Owner.Name"]
    title, text = record_text(record, fields, "Name")
    assert title == "Ada Lovelace"
    assert text.splitlines() == [
        "Name: Ada Lovelace",
        "DoNotCall: false",
        "NumberOfEmployees: 12",
        "Account.Name: Analytical Engines Ltd",
        "MailingAddress.city: London",
        "MailingAddress.country: UK",
    ]
    assert "2024" not in text and "attributes" not in text


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"Name": ["a", "b"]}, "Name: a list"),
        ({"Name": "x", "Account": "Acme"}, "Account.Name: 'Name' is read from a str"),
    ],
)
def test_unusable_values_are_errors(record: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        record_text(record, ["Name", "Account.Name"], "Name")


Route = Callable[[httpx.Request], httpx.Response]


def source(route: Route, **overrides: Any) -> tuple[SalesforceSource, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return route(request)

    cfg = settings(objects={"Account": ["Name", "Industry"]}, page_size=500, **overrides)
    client = ResilientClient(
        "sf",
        HttpPolicy(max_attempts=1),
        base_url=BASE,
        headers={"Authorization": "Bearer t"},
        transport=httpx.MockTransport(handler),
    )
    return SalesforceSource(cfg, client), seen


def record(n: int, stamp: str, **fields: Any) -> dict[str, Any]:
    rid = f"001{n:012d}AAA"
    return {"attributes": {"type": "Account"}, "Id": rid, "SystemModstamp": stamp, "IsDeleted": False, **fields}


def test_pages_follow_the_locator_and_the_cursor_keeps_the_newest_stamp() -> None:
    pages = {
        "/services/data/v60.0/queryAll": {
            "totalSize": 3,
            "done": False,
            "nextRecordsUrl": "/services/data/v60.0/query/01gA-2",
            "records": [
                record(1, "2024-01-01T00:00:01.000+0000", Name="Acme", Industry="Rockets"),
                record(2, "2024-01-01T00:00:02.000+0000", IsDeleted=True),
            ],
        },
        "/services/data/v60.0/query/01gA-2": {
            "totalSize": 3,
            "done": True,
            "records": [record(3, "2024-01-01T00:00:03.000+0000", Name="Globex")],
        },
    }
    sf, seen = source(lambda r: httpx.Response(200, json=pages[r.url.path]))
    batches = list(sf.batches(None))
    assert [(len(b.documents), b.deleted) for b in batches] == [(1, ["Account/001000000000002AAA"]), (1, [])]
    assert [b.cursor for b in batches] == [
        {"Account": {"since": "2024-01-01T00:00:02Z", "next": "/services/data/v60.0/query/01gA-2"}},
        {"Account": {"since": "2024-01-01T00:00:03Z", "next": None}},
    ]
    first = seen[0]
    assert first.headers["Sforce-Query-Options"] == "batchSize=500"
    assert first.url.params["q"].endswith("FROM Account ORDER BY SystemModstamp, Id")
    doc = batches[0].documents[0]
    assert doc.external_id == f"Account/{ACC}"
    assert doc.uri == f"{BASE}/lightning/r/Account/{ACC}/view"
    assert doc.title == "Acme" and doc.metadata == {"object": "Account", "salesforce_id": ACC}
    assert doc.modified == datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert doc.load().pages[0].text == "Acme\nName: Acme\nIndustry: Rockets"


def test_a_touch_without_a_change_keeps_the_content_hash() -> None:
    answers = iter(
        [
            {"done": True, "records": [record(1, "2024-01-01T00:00:01.000+0000", Name="Acme")]},
            {"done": True, "records": [record(1, "2024-03-01T00:00:00.000+0000", Name="Acme")]},
        ]
    )
    sf, _ = source(lambda _: httpx.Response(200, json=next(answers)))
    [one] = list(sf.batches(None))
    [two] = list(sf.batches(one.cursor))
    assert one.documents[0].content_hash == two.documents[0].content_hash
    assert one.documents[0].modified != two.documents[0].modified


def test_the_next_run_queries_from_the_saved_stamp_inclusive() -> None:
    sf, seen = source(lambda _: httpx.Response(200, json={"done": True, "records": []}))
    [batch] = list(sf.batches({"Account": {"since": "2024-01-01T00:00:03Z", "next": None}}))
    assert "WHERE SystemModstamp >= 2024-01-01T00:00:03Z" in seen[0].url.params["q"]
    assert batch.cursor == {"Account": {"since": "2024-01-01T00:00:03Z", "next": None}}


def test_records_without_id_are_skipped_and_unusable_ones_fail_at_load() -> None:
    body = {
        "done": True,
        "records": [
            "not a record",
            {"Name": "no id", "SystemModstamp": "2024-01-01T00:00:01.000+0000"},
            record(1, "2024-01-01T00:00:02.000+0000", Name=["a", "b"]),
            record(2, "not a time", Name="Acme"),
            record(3, "2024-01-01T00:00:03.000+0000", Name=None, Industry=None),
        ],
    }
    sf, _ = source(lambda _: httpx.Response(200, json=body))
    [batch] = list(sf.batches(None))
    assert [d.external_id for d in batch.documents] == [f"Account/001{n:012d}AAA" for n in (1, 2, 3)]
    reasons = []
    for doc in batch.documents:
        with pytest.raises(DocumentError) as info:
            doc.load()
        reasons.append(info.value.reason)
    assert reasons == ["malformed", "malformed", "no_text"]
    assert batch.documents[0].content_hash.startswith("malformed:")
    assert batch.cursor == {"Account": {"since": "2024-01-01T00:00:03Z", "next": None}}


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"records": []},
        {"done": True, "records": None},
        {"done": False, "records": []},
        {"done": False, "records": [], "nextRecordsUrl": "https://elsewhere.example/steal"},
    ],
)
def test_an_unknown_answer_shape_is_a_malformed_payload(answer: Any) -> None:
    sf, _ = source(lambda _: httpx.Response(200, json=answer))
    with pytest.raises(MalformedPayloadError, match="sf: Account"):
        list(sf.batches(None))


def test_a_rejected_query_surfaces_the_provider_message() -> None:
    error = [{"message": "No such column 'Industry' on entity 'Account'", "errorCode": "INVALID_FIELD"}]
    sf, seen = source(lambda _: httpx.Response(400, content=json.dumps(error)))
    with pytest.raises(RequestRejectedError, match="HTTP 400: No such column 'Industry'"):
        list(sf.batches(None))
    assert len(seen) == 1


def test_a_lost_locator_restarts_once_then_surfaces() -> None:
    def route(request: httpx.Request) -> httpx.Response:
        if "query/" in request.url.path:
            return httpx.Response(
                400, json=[{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]
            )
        return httpx.Response(
            200,
            json={"done": False, "nextRecordsUrl": "/services/data/v60.0/query/01gB-1", "records": []},
        )

    sf, seen = source(route)
    cursor = {"Account": {"since": "2024-01-01T00:00:03Z", "next": "/services/data/v60.0/query/01gA-1"}}
    with pytest.raises(RequestRejectedError, match="invalid query locator"):
        list(sf.batches(cursor))
    # the saved locator, a fresh query, its locator lost again with no progress: no endless loop
    assert [r.url.path.rsplit("/", 1)[-1] for r in seen] == ["01gA-1", "queryAll", "01gB-1"]


def test_a_saved_locator_must_be_a_path_on_the_instance() -> None:
    sf, seen = source(lambda _: httpx.Response(200, json={"done": True, "records": []}))
    with pytest.raises(CursorError, match=r"Account[.]next: the saved locator is not a /services/data/ path") as err:
        list(sf.batches({"Account": {"since": None, "next": "https://elsewhere.example/x"}}))
    assert err.value.source == "sf" and seen == []


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALESFORCE_TOKEN", raising=False)
    with pytest.raises(RequestRejectedError, match="SALESFORCE_TOKEN"):
        SalesforceSource(settings())
