"""Where a running ``ragline serve`` says it is: ``RAGLINE_HOME/serve.json`` with its pid and URL, read by the
CLI (which must stay light: this module imports nothing of the service)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "serve.json"


def read_state(home: Path) -> dict[str, Any] | None:
    """The running service's ``{"pid", "url"}`` under ``home``, if one wrote it."""
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state else None


def write_state(home: Path, url: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url}))
    os.replace(tmp, home / STATE_FILE)


def clear_state(home: Path) -> None:
    """Remove the state file if this process wrote it."""
    state = read_state(home)
    if state is not None and state.get("pid") == os.getpid():
        (home / STATE_FILE).unlink(missing_ok=True)
