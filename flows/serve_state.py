"""Where ragline keeps its state (``RAGLINE_HOME``) and where a running ``ragline serve`` says it is:
``RAGLINE_HOME/serve.json`` with its pid, URL and the name of its operator token's variable. The CLI reads it
before anything else, so this module imports nothing of the service (or of the settings)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATE_FILE = "serve.json"


def default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("ragline", appauthor=False))


def resolve_home(environ: Mapping[str, str]) -> Path:
    """``RAGLINE_HOME``, else the user's data directory."""
    return Path(environ.get("RAGLINE_HOME") or default_home()).expanduser().absolute()


def read_state(home: Path) -> dict[str, Any] | None:
    """The running service's ``{"pid", "url"}`` under ``home``, if one wrote it."""
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state else None


def write_state(home: Path, url: str, token_env: str | None) -> None:
    """Record this process as the running service; ``token_env`` names the variable of the operator's token
    (never the token), so that a client finds both without loading the settings."""
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "token_env": token_env}))
    os.replace(tmp, home / STATE_FILE)


def clear_state(home: Path) -> None:
    """Remove the state file if this process wrote it."""
    state = read_state(home)
    if state is not None and state.get("pid") == os.getpid():
        (home / STATE_FILE).unlink(missing_ok=True)
