"""Content-derived ids: a replay of the same document version writes the same rows."""

from __future__ import annotations

import hashlib
import uuid


def chunk_id(source: str, external_id: str, chunk_index: int, text: str, model_key: str) -> uuid.UUID:
    """Stable id of one chunk of one document under one model.

    The document and position are part of the id so that the same sentence in two documents (or twice in
    one) stays two rows with their own lineage; the model is part of it so that vectors of different models
    never collide.
    """
    digest = hashlib.sha256(
        "\x1f".join((source, external_id, str(chunk_index), model_key, text)).encode("utf-8")
    ).digest()
    return uuid.UUID(bytes=digest[:16], version=5)
