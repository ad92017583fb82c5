"""Where snapshots live: a directory path or any fsspec URL (``s3://``, ``gs://``, ``memory://``...)."""

from __future__ import annotations

import hashlib

import fsspec
from fsspec.core import url_to_fs

from vectorstore.db import first_line
from vectorstore.snapshot.format import SnapshotError

_HASH_BLOCK = 1 << 20


def child_url(root: str, name: str) -> str:
    """``name`` under a directory path or fsspec URL."""
    return root.rstrip("/") + "/" + name


def open_location(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = url_to_fs(url)
    except (ValueError, ImportError) as err:
        raise SnapshotError(f"{url}: unusable snapshot location: {first_line(err)}") from err
    return fs, str(path).rstrip("/") or "/"


def file_sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
