"""The posted-file store of ``ragline serve``: PDFs kept once per content under ``RAGLINE_HOME/inbox``, and
URLs downloaded into it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from flows.trigger import safe_filename
from vectorstore.db import first_line


def store_pdf(root: Path, data: bytes, filename: str | None) -> tuple[str, Path]:
    """Store ``data`` once per content under ``root/<sha[:2]>/<sha>/<name>`` (the first name posted is kept,
    so titles read well); returns (sha256, path). Written to a temporary name and renamed: a reader never
    sees half a file."""
    digest = hashlib.sha256(data).hexdigest()
    folder = root / digest[:2] / digest
    existing = sorted(folder.glob("*.pdf")) if folder.is_dir() else []
    if existing:
        return digest, existing[0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe_filename(filename, digest[:16])
    tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.part"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return digest, path


def redact_url(url: str) -> str:
    """A URL fit for messages: no credentials, no query (tokens often travel there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def download(url: str, dest_root: Path, *, max_bytes: int, timeout: float) -> tuple[str, Path]:
    """Fetch ``url`` (redirects followed, size capped while streaming) into the content-addressed store."""
    where = redact_url(url)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url, headers={"Accept": "application/pdf"}) as answer,
        ):
            if answer.status_code != 200:
                raise DownloadError(f"GET {where}: HTTP {answer.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in answer.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(f"GET {where}: larger than serve.max_body_bytes ({max_bytes} bytes)")
                chunks.append(chunk)
    except httpx.HTTPError as err:
        raise DownloadError(f"GET {where}: {type(err).__name__}: {first_line(err)}") from err
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return store_pdf(dest_root, b"".join(chunks), name or None)


class DownloadError(RuntimeError):
    pass
