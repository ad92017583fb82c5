"""Fetching a URL for a caller without becoming a way into the network the service sits in (SSRF).

A URL trigger may name any host; what it resolves to decides. Every address a name resolves to must be public:
loopback, this host's own addresses, private (RFC 1918), carrier-grade NAT, link-local (cloud metadata at
169.254.169.254), unique-local, multicast, unspecified, reserved and documentation ranges are refused, and IPv6
forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by that address. The check runs
after DNS resolution and again at every redirect, and the connection goes to the address that was checked
(the URL's host is sent as ``Host`` and as TLS SNI, and the certificate is verified against it), so a DNS
answer that changes between check and connect ("rebinding") cannot reach inside. ``serve.url_allow`` opens
networks (CIDR) and host names an operator wants reachable.

``refusal`` is a pure function of an address; names are resolved through a ``Resolver`` (a seam: tests map a
host name to any address without contacting it).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import urljoin, urlsplit

import httpx

from vectorstore.db import first_line

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) to the addresses a connection could go to."""

PDF_TYPES = frozenset({"application/pdf", "application/x-pdf", "application/octet-stream", "binary/octet-stream"})

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


class UrlRefused(ValueError):
    """A URL ragline will not fetch; the message names the reason (and never a credential)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class DownloadError(RuntimeError):
    """The fetch itself failed: the server's answer, a timeout, a body that is not a PDF or too large."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UrlRefused(f"cannot resolve {host}: {err.strerror}", 422) from err
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@cache
def host_addresses() -> frozenset[Address]:
    """The addresses of this machine's interfaces: a public one still reaches this host's own services."""
    import psutil  # type: ignore[import-untyped]

    found: set[Address] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(addr.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return frozenset(found)


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo client, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address, *, own: Iterable[Address] = ()) -> str | None:
    """Why ``address`` must not be fetched from, or None for a public address that is not this host's."""
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = refusal(inner, own=own)
        return f"{reason} (embedded in {address})" if reason else None
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.IPv6Network("fc00::/7"):
        return "a unique-local address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved or non-public address"
    if address in set(own):
        return "an address of this host"
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """What may be fetched beyond public addresses: ``networks`` and ``hosts`` of ``serve.url_allow``."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    own: Callable[[], Iterable[Address]] = field(default=host_addresses, repr=False)

    @classmethod
    def parse(cls, allow: Iterable[str], own: Callable[[], Iterable[Address]] = host_addresses) -> UrlPolicy:
        networks: list[Network] = []
        hosts: set[str] = set()
        for item in allow:
            entry = item.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not entry or "/" in entry or ":" in entry:
                    raise ValueError(f"serve.url_allow: {item!r} is neither a CIDR network nor a host name") from None
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts), own)

    def allows(self, address: Address) -> bool:
        return any(address in net for net in self.networks)


@dataclass(frozen=True)
class Target:
    """A URL checked for one hop: the address to connect to and the name to present."""

    url: str
    host: str
    address: str


def redact(url: str) -> str:
    """A URL fit for messages: no credentials, no query (tokens often travel there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    return f"{parts.scheme}://{netloc}{parts.path}"


def check(url: str, policy: UrlPolicy, resolver: Resolver = system_resolver) -> Target:
    """The address ``url`` may be fetched from, after resolving its host; ``UrlRefused`` names why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused(f"only absolute http(s) URLs are fetched, not {redact(url)!r}", 422)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise UrlRefused(f"{redact(url)}: {err}", 422) from err
    host = parts.hostname.lower().rstrip(".")
    try:
        literal: Address | None = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else list(resolver(host, port))
    if not addresses:
        raise UrlRefused(f"{host} resolves to no address", 422)
    if host in policy.hosts:
        return Target(url, host, addresses[0])
    own = frozenset(policy.own())
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if policy.allows(address):
            continue
        reason = refusal(address, own=own)
        if reason is not None:
            what = host if literal is not None else f"{host} resolves to {address}, which"
            raise UrlRefused(f"refused to fetch {redact(url)}: {what} is {reason} (serve.url_allow opens it)")
    return Target(url, host, addresses[0])


def fetch_pdf(
    url: str,
    *,
    policy: UrlPolicy,
    max_bytes: int,
    timeout: float,
    max_redirects: int = 5,
    resolver: Resolver = system_resolver,
) -> tuple[bytes, str]:
    """GET a PDF, each hop checked and connected to the checked address; returns (body, final URL). The answer
    must be a PDF (its type and its first bytes) no larger than ``max_bytes``."""
    current = url
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(max_redirects + 1):
            target = check(current, policy, resolver)
            pinned = httpx.URL(current).copy_with(host=target.address)
            parts = urlsplit(current)
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "application/pdf"}
            extensions = {"sni_hostname": target.host} if parts.scheme == "https" else {}
            where = redact(current)
            try:
                with client.stream("GET", pinned, headers=headers, extensions=extensions) as answer:
                    if answer.is_redirect and answer.headers.get("Location"):
                        current = urljoin(current, answer.headers["Location"])
                        continue
                    if answer.status_code != 200:
                        raise DownloadError(f"GET {where}: HTTP {answer.status_code}")
                    return _pdf_body(answer, where, max_bytes), current
            except httpx.HTTPError as err:
                raise DownloadError(f"GET {where}: {type(err).__name__}: {first_line(err)}") from err
    raise DownloadError(f"GET {redact(url)}: more than {max_redirects} redirects (serve.max_redirects)")


def _pdf_body(answer: httpx.Response, where: str, max_bytes: int) -> bytes:
    kind = answer.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind and kind not in PDF_TYPES:
        raise DownloadError(f"GET {where}: the answer is {kind}, not a PDF")
    declared = answer.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise DownloadError(f"GET {where}: {declared} bytes, over serve.max_body_bytes ({max_bytes} bytes)")
    chunks: list[bytes] = []
    size = 0
    for chunk in answer.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise DownloadError(f"GET {where}: larger than serve.max_body_bytes ({max_bytes} bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if b"%PDF-" not in body[:1024]:
        raise DownloadError(f"GET {where}: the answer is not a PDF (no %PDF- header)")
    return body
