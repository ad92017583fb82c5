"""What every ``ragline`` command shares: the lazily built settings and services, the one-line failure, the
errors reported as one line, and the log setup. Command modules import this; it imports no command module.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from flows.runtime import Services
    from flows.settings import RaglineSettings

_OUR_LOGGERS = ("ragline", "connectors", "embedding", "vectorstore", "flows")


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ragline: %(levelname)s: %(message)s"))
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        logger.propagate = False


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with one line on stderr, as every command fails."""
    click.echo(f"ragline: error: {message}", err=True)
    sys.exit(code)


class Context:
    """The click ``obj``: settings and services are built on first use, so ``--help`` and commands that need
    neither start nothing."""

    def __init__(self) -> None:
        self._settings: RaglineSettings | None = None
        self._services: Services | None = None

    @property
    def settings(self) -> RaglineSettings:
        if self._settings is None:
            from flows.settings import load_settings  # validated once, here: not for a command the service answers

            self._settings = load_settings()
        return self._settings

    @property
    def services(self) -> Services:
        if self._services is None:
            from flows.runtime import Services, use_services  # the store and models: not for --help or a client

            self._services = Services(self.settings)
            use_services(self._services)
        return self._services


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can act on from their message alone: one line, exit 1, no traceback."""
    from psycopg.errors import DiskFull

    from connectors.pdf import NotAFileError
    from embedding.chunking import ChunkTooLongError
    from embedding.model import ModelNotFoundError
    from flows.prefect_server import PrefectServerError
    from flows.settings import ConfigError
    from vectorstore.baselines import CanaryMismatchError
    from vectorstore.db import DatabaseError
    from vectorstore.ledger import SourceKindMismatchError

    return (
        CanaryMismatchError,  # writes into a generation stopped: the message says how to resolve it
        ConfigError,
        DatabaseError,
        FileNotFoundError,
        NotAFileError,
        DiskFull,  # the database's disk: nothing of the batch was committed, the next run finishes it
        ModelNotFoundError,
        PrefectServerError,
        SourceKindMismatchError,
        ChunkTooLongError,
    )
