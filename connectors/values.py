"""Small readers shared by the connectors: secrets from the environment and the timestamps APIs send."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from connectors.errors import RequestRejectedError


def secret_from_env(source: str, variable: str) -> str:
    """The value of ``variable``; its absence is a clear error naming the variable (never a value)."""
    value = os.environ.get(variable)
    if not value:
        raise RequestRejectedError(source, 401, f"no credentials: set the environment variable {variable}")
    return value


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as APIs write it (``Z``, ``+0000`` or no zone, read as UTC); None if it is not."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
