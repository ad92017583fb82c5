"""How a Confluence site is addressed: its API root, links from its answers, basic auth, CQL and the time
zone CQL dates are read in."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from err


# ---- URLs -------------------------------------------------------------------------------------------------


def site_url(base_url: str) -> str:
    """The root every API path hangs off. Confluence Cloud serves under ``/wiki``, so a URL that stops at the
    host gets it added: both spellings operators copy from the browser work."""
    site = base_url.strip().rstrip("/")
    return site if urlsplit(site).path.endswith("/wiki") else f"{site}/wiki"


def join_link(site: str, link: str) -> str:
    """Absolute URL of a link from an answer.

    v2 ``_links.next`` carries the context path (``/wiki/api/v2/...?cursor=``) while v1 ``_links.next`` and
    every ``_links.webui`` are relative to the site (``/rest/api/...``, ``/spaces/...``). Absolute links must
    stay on the site: the client sends credentials with every request.
    """
    site_parts = urlsplit(site)
    origin = f"{site_parts.scheme}://{site_parts.netloc}"
    parts = urlsplit(link)
    if parts.scheme or parts.netloc:
        if f"{parts.scheme}://{parts.netloc}" != origin:
            raise ValueError(f"link {link!r} leaves the site {origin}")
        return link
    path = link if link.startswith("/") else f"/{link}"
    context = site_parts.path.rstrip("/")
    if context and (path == context or path.startswith((f"{context}/", f"{context}?"))):
        return origin + path
    return site + path


def basic_auth(email: str, token: str) -> dict[str, str]:
    """Atlassian Cloud's basic auth: the account's email and an API token."""
    return {"Authorization": "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode("ascii")}


# ---- CQL --------------- ----------------------------------------------------------------------------------


def cql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cql_date(moment: datetime, zone: tzinfo) -> str:
    """A CQL date: minute precision, in the account's time zone (the minute is floored, never rounded up)."""
    return moment.astimezone(zone).strftime("%Y/%m/%d %H:%M")


def changes_cql(spaces: Sequence[str], since: str | None, order: Literal["asc", "desc"] = "asc") -> str:
    clauses = [f"space in ({', '.join(cql_string(k) for k in spaces)})", "type = page"]
    if since is not None:
        clauses.append(f"lastmodified >= {cql_string(since)}")
    return " and ".join(clauses) + f" order by lastmodified {order}"
