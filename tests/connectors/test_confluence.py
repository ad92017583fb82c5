"""Pure parts of the Confluence connector: storage format to text, URL joining, CQL, cursor packing,
settings."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from connectors.base import DocumentError
from connectors.confluence import ConfluenceSettings, ConfluenceSource, _parse_page
from connectors.confluence_cursor import pack_ids, unpack_ids
from connectors.confluence_site import changes_cql, cql_date, join_link, site_url
from connectors.confluence_storage import storage_to_text, strip_tags
from connectors.errors import RequestRejectedError

RUNBOOK = """\
<h1>Deploy&nbsp;runbook</h1>
<p>Run the <strong>deploy</strong> script before noon &amp; check the &ldquo;status&rdquo; page&#8212;always.</p>
<ac:structured-macro ac:name="code" ac:schema-version="1" ac:macro-id="7f0c">
  <ac:parameter ac:name="language">python</ac:parameter>
  <ac:parameter ac:name="title">rollback.py</ac:parameter>
  <ac:plain-text-body><![CDATA[if replicas < 3 and "x" != 'y':
    rollback(release) # <not a tag>]]></ac:plain-text-body>
</ac:structured-macro>
<ac:structured-macro ac:name="info" ac:schema-version="1">
  <ac:parameter ac:name="title">Heads up</ac:parameter>
  <ac:parameter ac:name="icon">true</ac:parameter>
  <ac:rich-text-body><p>Backups run nightly at 02:00.</p></ac:rich-text-body>
</ac:structured-macro>
<table data-layout="default"><colgroup><col style="width: 200px;" /><col /></colgroup><tbody>
  <tr><th><p><strong>Service</strong></p></th><th><p>Owner</p></th></tr>
  <tr><td><p>billing-api</p></td><td><p>Ada</p><p>(backup: Grace)</p></td></tr>
</tbody></table>
<ul>
  <li><p>Read <ac:link><ri:page ri:content-title="Incident process" /></ac:link> first</p></li>
  <li><ac:link><ri:page ri:content-title="Escalation" ri:space-key="OPS" />\
<ac:plain-text-link-body><![CDATA[who to call]]></ac:plain-text-link-body></ac:link></li>
  <li><ac:link><ri:attachment ri:filename="topology.pdf" /></ac:link></li>
</ul>
<p>Ask <ac:link><ri:user ri:account-id="557058:5f1e" /></ac:link> before <time datetime="2026-04-01" />\
 <ac:emoticon ac:name="smile" /></p>
<ac:task-list><ac:task><ac:task-id>17</ac:task-id><ac:task-status>incomplete</ac:task-status>\
<ac:task-body>Update the dashboard</ac:task-body></ac:task></ac:task-list>
<ac:structured-macro ac:name="toc"><ac:parameter ac:name="maxLevel">3</ac:parameter></ac:structured-macro>
<ac:image ac:height="250"><ri:attachment ri:filename="diagram.png" /></ac:image>
<ac:layout><ac:layout-section ac:type="two_equal"><ac:layout-cell><p>Left column</p></ac:layout-cell>\
<ac:layout-cell><p>Right column</p></ac:layout-cell></ac:layout-section></ac:layout>
"""


def test_storage_format_becomes_clean_text() -> None:
    text = storage_to_text(RUNBOOK)
    lines = text.split("\n")
    assert lines[0] == "Deploy runbook"
    assert "Run the deploy script before noon & check the “status” page—always." in lines
    # code macro: its body kept verbatim (CDATA, < and quotes), its parameters gone
    assert """if replicas < 3 and "x" != 'y':""" in lines
    assert "rollback(release) # <not a tag>" in lines
    assert "python" not in text and "rollback.py" not in text
    # panel macro: body kept, parameters dropped
    assert "Backups run nightly at 02:00." in lines
    assert "Heads up" not in text and "true" not in text
    # a table row per line, cells separated
    assert "Service | Owner" in lines
    assert "billing-api | Ada (backup: Grace)" in lines
    # links: a page link without text shows the page title, a link body wins over the title
    assert "Read Incident process first" in lines
    assert "who to call" in lines and "Escalation" not in text
    assert "topology.pdf" in lines
    # mentions' account ids, task ids and status, toc parameters, emoticons, images: not text
    assert "557058" not in text and "incomplete" not in text and "17" not in text and "maxLevel" not in text
    assert "diagram.png" not in text
    assert "Ask before 2026-04-01" in lines
    assert "Update the dashboard" in lines
    assert "Left column" in lines and "Right column" in lines
    assert "\n\n\n" not in text and "  " not in text


@pytest.mark.parametrize(
    ("xhtml", "expected"),
    [
        ("<p>Unclosed <b>bold <i>and italic", "Unclosed bold and italic"),
        ("</p></div>stray end tags<p>then text", "stray end tags\n\nthen text"),
        ("<td>cell outside a row</td><tr>", "cell outside a row"),
        ("<![weird[ marked ]]><p>t &amp; u</p>", "t & u"),  # html.parser raises on this: tags stripped
        ('<p>before</p><ac:parameter ac:name="x">noise<p>after</p>', "before noise after"),  # never closed
        ("<p>a &lt; b &gt; c &#x27;d&#39; &unknown; &amp</p>", "a < b > c 'd' &unknown; &"),
        ("", ""),
        ("plain text, no markup", "plain text, no markup"),
        ("<p>x\u0000y</p>", "x y"),
    ],
)
def test_broken_markup_never_crashes(xhtml: str, expected: str) -> None:
    text = storage_to_text(xhtml)
    assert " ".join(text.split()) == " ".join(expected.split())


def test_strip_tags_keeps_cdata_as_written() -> None:
    assert strip_tags("<p>a</p><![CDATA[<b> & ]]><p>&amp;</p>") == "a <b> & &"


def test_a_page_without_text_is_poison_at_load() -> None:
    with pytest.raises(DocumentError) as err:
        _parse_page("Only a picture", '<ac:image><ri:attachment ri:filename="a.png" /></ac:image>')
    assert err.value.reason == "no_text"
    parsed = _parse_page("Title", "<p>Body</p>")
    assert parsed.pages[0].text == "Title\n\nBody"


@pytest.mark.parametrize(
    ("base", "site"),
    [
        ("https://example.atlassian.net/wiki", "https://example.atlassian.net/wiki"),
        ("https://example.atlassian.net/wiki/", "https://example.atlassian.net/wiki"),
        ("https://example.atlassian.net", "https://example.atlassian.net/wiki"),
        ("https://example.atlassian.net/", "https://example.atlassian.net/wiki"),
        ("http://127.0.0.1:8080/wiki", "http://127.0.0.1:8080/wiki"),
    ],
)
def test_site_url_always_ends_with_wiki(base: str, site: str) -> None:
    assert site_url(base) == site


SITE = "https://example.atlassian.net/wiki"


@pytest.mark.parametrize(
    ("link", "url"),
    [
        # v2 _links.next carries the context path
        (
            "/wiki/api/v2/spaces/123/pages?cursor=abc%3D&limit=10",
            f"{SITE}/api/v2/spaces/123/pages?cursor=abc%3D&limit=10",
        ),
        # v1 _links.next and webui links are relative to the site
        ("/rest/api/content/search?next=true&cursor=xyz", f"{SITE}/rest/api/content/search?next=true&cursor=xyz"),
        ("/spaces/ENG/pages/98001/Deploy+runbook", f"{SITE}/spaces/ENG/pages/98001/Deploy+runbook"),
        ("spaces/ENG/overview", f"{SITE}/spaces/ENG/overview"),
        ("/wikipedia/page", f"{SITE}/wikipedia/page"),  # only the whole context path counts
        (f"{SITE}/api/v2/pages?cursor=1", f"{SITE}/api/v2/pages?cursor=1"),
    ],
)
@pytest.mark.parametrize("base", ["https://example.atlassian.net/wiki", "https://example.atlassian.net"])
def test_links_join_the_same_whether_or_not_the_base_url_has_wiki(base: str, link: str, url: str) -> None:
    assert join_link(site_url(base), link) == url


def test_absolute_links_must_stay_on_the_site() -> None:
    with pytest.raises(ValueError, match="leaves the site"):
        join_link(SITE, "https://attacker.example/wiki/api/v2/pages?cursor=1")


def test_cql_quotes_keys_and_reads_dates_in_the_account_time_zone() -> None:
    moment = datetime(2026, 3, 2, 8, 7, 59, tzinfo=UTC)
    assert cql_date(moment, UTC) == "2026/03/02 08:07"  # floored to the minute, never rounded up
    assert cql_date(moment, ZoneInfo("Europe/Berlin")) == "2026/03/02 09:07"
    assert changes_cql(["ENG", 'we"ird'], "2026/03/02 08:07") == (
        'space in ("ENG", "we\\"ird") and type = page and lastmodified >= "2026/03/02 08:07" order by lastmodified asc'
    )
    assert changes_cql(["ENG"], None, "desc") == 'space in ("ENG") and type = page order by lastmodified desc'


def test_page_ids_pack_small_and_round_trip() -> None:
    ids = {str(98_000_000 + i * 7) for i in range(20_000)}
    packed = pack_ids(ids)
    assert unpack_ids(packed) == ids
    assert len(packed) < 4 * len(ids)  # a few bytes per id, not the 11 of a JSON list
    assert unpack_ids(pack_ids([])) == set() and unpack_ids(None) == set()


def test_settings_name_the_bad_field() -> None:
    ok = ConfluenceSettings(name="kb", base_url="https://example.atlassian.net", spaces=[" ENG ", "OPS", "ENG"])
    assert ok.spaces == ["ENG", "OPS"] and ok.http.rate_per_second
    with pytest.raises(ValidationError, match="spaces"):
        ConfluenceSettings(name="kb", base_url="https://example.atlassian.net", spaces=[])
    with pytest.raises(ValidationError, match="page_size"):
        ConfluenceSettings(name="kb", base_url="https://example.atlassian.net", spaces=["ENG"], page_size=251)
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        ConfluenceSettings(name="kb", base_url="https://example.atlassian.net", spaces=["ENG"], timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="base_url"):
        ConfluenceSettings(name="kb", base_url="example.atlassian.net", spaces=["ENG"])
    with pytest.raises(ValidationError, match="kind"):
        ConfluenceSettings.model_validate({"kind": "jira", "name": "kb", "base_url": SITE, "spaces": ["ENG"]})


def test_missing_credentials_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ConfluenceSettings(name="kb", base_url=SITE, spaces=["ENG"])
    monkeypatch.delenv("CONFLUENCE_EMAIL", raising=False)
    monkeypatch.delenv("CONFLUENCE_TOKEN", raising=False)
    with pytest.raises(RequestRejectedError, match="CONFLUENCE_EMAIL"):
        ConfluenceSource(settings)
    monkeypatch.setenv("CONFLUENCE_EMAIL", "bot@example.com")
    with pytest.raises(RequestRejectedError, match="CONFLUENCE_TOKEN") as err:
        ConfluenceSource(settings)
    assert "bot@example.com" not in str(err.value)
