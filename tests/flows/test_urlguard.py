"""The URL guard: refusal as a pure function of the address, names resolved through an injected resolver (a
refused address is never contacted), and fetches end to end against a real server on 127.0.0.1 (opened by
``url_allow``), each redirect checked again and each connection made to the address that was checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

import pytest

from flows.urlguard import DownloadError, UrlPolicy, UrlRefused, check, fetch_pdf, redact, refusal
from tests.support.httpserver import Reply, ScriptedServer, serve

PDF = b"%PDF-1.4\n" + b"0" * 200 + b"\n%%EOF\n"


def no_own() -> frozenset[ipaddress.IPv4Address]:
    return frozenset()


OPEN = UrlPolicy.parse([], own=no_own)


class Resolver:
    """Maps test host names to addresses; records every name asked (nothing is resolved or contacted)."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        return self.table[host]


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "unique-local"),
        ("fc00::1", "unique-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("192.0.2.10", "private"),  # documentation range (Python counts it private)
        ("240.0.0.1", "address"),  # reserved
        ("::ffff:127.0.0.1", "loopback address (embedded in"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
def test_internal_addresses_are_refused(address: str, fragment: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and fragment in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_this_hosts_own_public_address_is_refused() -> None:
    own = ipaddress.ip_address("93.184.215.14")
    assert refusal(own, own=[own]) == "an address of this host"


def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    resolver = Resolver(
        {
            "metadata.test": ["169.254.169.254"],
            "intranet.test": ["10.0.0.7"],
            "mixed.test": ["93.184.215.14", "10.0.0.7"],  # one private answer is enough to refuse
            "public.test": ["93.184.215.14"],
        }
    )
    for host, fragment in [("metadata.test", "link-local"), ("intranet.test", "private"), ("mixed.test", "private")]:
        with pytest.raises(UrlRefused) as refused:
            check(f"http://{host}/doc.pdf", OPEN, resolver)
        assert refused.value.status == 403
        assert f"{host} resolves to" in str(refused.value) and fragment in str(refused.value)
    target = check("https://public.test/doc.pdf", OPEN, resolver)
    assert target.address == "93.184.215.14" and target.host == "public.test"


def test_url_allow_opens_networks_and_names() -> None:
    resolver = Resolver({"wiki.corp.test": ["10.20.30.40"], "other.corp.test": ["10.20.30.41"]})
    policy = UrlPolicy.parse(["10.20.30.40/32", "docs.corp.test"], own=no_own)
    assert check("http://wiki.corp.test/a.pdf", policy, resolver).address == "10.20.30.40"
    with pytest.raises(UrlRefused, match="private"):
        check("http://other.corp.test/a.pdf", policy, resolver)
    named = Resolver({"docs.corp.test": ["192.168.5.5"]})
    assert check("http://docs.corp.test/a.pdf", policy, named).address == "192.168.5.5"
    with pytest.raises(ValueError, match="neither a CIDR network nor a host name"):
        UrlPolicy.parse(["http://x/"])


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.pdf", "gopher://x/", "http:///nohost"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check(url, OPEN, Resolver({}))
    assert refused.value.status == 422


def test_messages_carry_no_credentials_or_query() -> None:
    assert redact("https://user:secret@host.test:8443/a/b.pdf?token=abc") == "https://host.test:8443/a/b.pdf"
    with pytest.raises(UrlRefused) as refused:
        check("http://user:secret@10.0.0.1/x.pdf?sig=abc", OPEN, Resolver({}))
    assert "secret" not in str(refused.value) and "sig=" not in str(refused.value)


# -- fetches against a real server on loopback --------------------------------------------------------------


@pytest.fixture
def files() -> Iterator[ScriptedServer]:
    with serve() as server:
        yield server


LOOPBACK_ONLY = UrlPolicy.parse(["127.0.0.1/32"], own=no_own)


def fetch(url: str, policy: UrlPolicy = LOOPBACK_ONLY, resolver: Resolver | None = None, **kw: int) -> bytes:
    body, _ = fetch_pdf(
        url,
        policy=policy,
        max_bytes=kw.get("max_bytes", 10_000),
        timeout=10,
        max_redirects=kw.get("max_redirects", 5),
        resolver=resolver or Resolver({}),
    )
    return body


def test_loopback_is_refused_unless_allowed(files: ScriptedServer) -> None:
    files.route("/a.pdf", [Reply(200, PDF, {"Content-Type": "application/pdf"})])
    with pytest.raises(UrlRefused, match="loopback"):
        fetch(f"{files.url}/a.pdf", OPEN)
    assert files.calls() == []  # refused before connecting
    assert fetch(f"{files.url}/a.pdf") == PDF


def test_the_connection_goes_to_the_checked_address(files: ScriptedServer) -> None:
    """``files.test`` resolves nowhere but through the seam: the fetch can only have reached the server at the
    checked address, presenting the name as Host."""
    files.route("/a.pdf", [Reply(200, PDF, {"Content-Type": "application/pdf"})])
    port = files.url.rsplit(":", 1)[1]
    resolver = Resolver({"files.test": ["127.0.0.1"]})
    assert fetch(f"http://files.test:{port}/a.pdf", resolver=resolver) == PDF
    assert files.calls("/a.pdf")[0].headers["Host"] == f"files.test:{port}"
    assert resolver.asked == ["files.test"]


def test_every_redirect_is_checked_again(files: ScriptedServer) -> None:
    port = files.url.rsplit(":", 1)[1]
    files.route("/to-metadata", [Reply(302, b"", {"Location": "http://metadata.test/latest/meta-data"})])
    files.route("/to-other-loopback", [Reply(301, b"", {"Location": f"http://127.0.0.2:{port}/a.pdf"})])
    files.route("/hop", [Reply(302, b"", {"Location": "/a.pdf"})])
    files.route("/a.pdf", [Reply(200, PDF, {"Content-Type": "application/pdf"})])
    resolver = Resolver({"metadata.test": ["169.254.169.254"]})
    with pytest.raises(UrlRefused, match="link-local"):
        fetch(f"{files.url}/to-metadata", resolver=resolver)
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.2 is a loopback address"):
        fetch(f"{files.url}/to-other-loopback")
    assert fetch(f"{files.url}/hop") == PDF
    with pytest.raises(DownloadError, match="more than 0 redirects"):
        fetch(f"{files.url}/hop", max_redirects=0)
    assert not [c for c in files.calls() if c.path == "/latest/meta-data"]


def test_the_answer_must_be_a_pdf_within_the_limit(files: ScriptedServer) -> None:
    files.route("/page.html", [Reply(200, b"<html>login</html>", {"Content-Type": "text/html"})])
    files.route("/fake.pdf", [Reply(200, b"MZ\x90\x00 not a pdf", {"Content-Type": "application/pdf"})])
    files.route("/big.pdf", [Reply(200, PDF + b"x" * 20_000, {"Content-Type": "application/pdf"})])
    files.route("/gone.pdf", [Reply(404, b"", {"Content-Type": "application/pdf"})])
    with pytest.raises(DownloadError, match="text/html, not a PDF"):
        fetch(f"{files.url}/page.html")
    with pytest.raises(DownloadError, match="no %PDF- header"):
        fetch(f"{files.url}/fake.pdf")
    with pytest.raises(DownloadError, match=r"over serve\.max_body_bytes"):
        fetch(f"{files.url}/big.pdf")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{files.url}/gone.pdf")
