"""Parsing contained: each document's ``load`` runs in a worker process with a wall-time limit and a memory
limit, so one hostile file (a parse-time bomb, a zlib bomb, a page tree that cycles) is killed and quarantined
while the run goes on, and parsing of the next documents overlaps embedding in the parent.

Workers are forked from a fork server (cheap to replace after a kill, and never a copy of the parent's
threads, connections or model). A worker sets ``RLIMIT_AS`` on itself; the parent also watches its resident
memory, since a parser's C allocations can fail in ways Python never sees. Loads travel by pickle: the
connectors' loads are ``functools.partial`` objects of module-level functions.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import DocumentError

log = logging.getLogger(__name__)

T = TypeVar("T")
Load = Callable[[], Any]
"""What a parser process runs for one document: a connector's load, or that and its chunking
(``flows.preparing.parse_and_chunk``); its result travels back by pickle."""

_POLL_SECONDS = 0.05
_START_SECONDS = 120.0
_READY = "ready"


class ParseSettings(BaseModel):
    """How documents are parsed: in worker processes with limits (default), or in this process."""

    model_config = ConfigDict(extra="forbid")

    isolate: bool = Field(
        default=True,
        description="Parse in worker processes with the limits below. false: in the ingesting process, "
        "without limits (a hostile file can then hang or exhaust it).",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Parser processes. Default: the CPUs this process may use minus one (the embedding "
        "worker's), at least one, at most four.",
    )
    timeout_seconds: float = Field(
        default=120.0, gt=0, description="Wall time one document may take to parse before it is killed."
    )
    memory_bytes: int = Field(
        default=2 * 1024**3,
        ge=64 * 1024**2,
        description="Memory one parser process may use (address space limit and resident size watched); "
        "a document over it is killed and quarantined.",
    )

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


@dataclass(frozen=True)
class _Failure:
    """A ``DocumentError`` as it crosses the pipe (exceptions with keyword arguments do not unpickle)."""

    reason: str
    message: str
    retryable: bool


def _serve(conn: Connection, memory_bytes: int) -> None:
    """A worker: parse what the parent sends, one document at a time, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker ends
    with contextlib.suppress(ValueError, OSError):  # a limit the system refuses leaves the watch by RSS
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    conn.send(_READY)  # the parse clock starts once the worker is up, not while it starts
    while True:
        result: Any
        try:
            load = conn.recv()
        except EOFError:
            return
        except Exception as err:  # noqa: BLE001 - a load that does not unpickle here fails alone
            conn.send(_Failure("internal", f"cannot receive the document to parse: {type(err).__name__}: {err}", True))
            continue
        try:
            result = load()
        except DocumentError as err:
            result = _Failure(err.reason, err.message, err.retryable)
        except MemoryError:
            result = _Failure(
                "parse_memory", f"parsing needed more than {_mib(memory_bytes)} (parsing.memory_bytes)", False
            )
        except Exception as err:  # noqa: BLE001 - untrusted input: anything a parser raises is this document's
            result = _Failure("internal", f"{type(err).__name__}: {err}", True)
        conn.send(result)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def _rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` from /proc (0 where it cannot be read: the worker is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Worker:
    """One parser process and the thread in this process that feeds it."""

    def __init__(self, sandbox: ParseSandbox, number: int) -> None:
        self.sandbox = sandbox
        self.number = number
        self.process: Any = None
        self.conn: Connection | None = None
        self.thread = threading.Thread(target=self._run, name=f"ragline-parser-{number}", daemon=True)
        self.thread.start()

    def _start(self) -> tuple[Any, Connection]:
        parent, child = self.sandbox.context.Pipe()
        process = self.sandbox.context.Process(
            target=_serve, args=(child, self.sandbox.settings.memory_bytes), name=f"ragline-parser-{self.number}"
        )
        process.daemon = True
        process.start()
        child.close()
        if not parent.poll(_START_SECONDS) or parent.recv() != _READY:
            process.kill()
            raise RuntimeError(f"a parser process did not start within {_START_SECONDS:g} s")
        return process, parent

    def _stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError, ValueError):
                self.process.kill()
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn = None, None

    def _run(self) -> None:
        tasks = self.sandbox.tasks
        try:
            while True:
                task = tasks.get()
                if task is None:
                    return
                load, future = task
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(self._parse(load))
                except DocumentError as err:
                    future.set_exception(err)
                except BaseException as err:  # noqa: BLE001 - the parent side failed (pickling, a pipe): the caller is told
                    self._stop()
                    future.set_exception(err)
        finally:
            self._stop()

    def _parse(self, load: Load) -> Any:
        settings = self.sandbox.settings
        if self.process is None or not self.process.is_alive():
            self._stop()
            self.process, self.conn = self._start()
        assert self.conn is not None
        self.conn.send(load)
        deadline = time.monotonic() + settings.timeout_seconds
        while not self.conn.poll(_POLL_SECONDS):
            if time.monotonic() > deadline:
                self._stop()
                raise DocumentError(
                    "parse_timeout",
                    f"parsing took longer than {settings.timeout_seconds:g} s (parsing.timeout_seconds)",
                )
            if _rss_bytes(self.process.pid) > settings.memory_bytes:
                self._stop()
                raise DocumentError(
                    "parse_memory", f"parsing needed more than {_mib(settings.memory_bytes)} (parsing.memory_bytes)"
                )
        try:
            result = self.conn.recv()
        except (EOFError, OSError):
            # The pipe closes a moment before the process is reaped: wait for its exit status to name it.
            self.process.join(5)
            code = self.process.exitcode
            self._stop()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise DocumentError(
                "parse_crashed",
                f"the parser process died ({how}); with a memory limit of {_mib(settings.memory_bytes)} "
                "(parsing.memory_bytes), a document that needs more ends this way",
            ) from None
        if isinstance(result, _Failure):
            raise DocumentError(result.reason, result.message, retryable=result.retryable)
        return result


class ParseSandbox:
    """Runs loads in ``settings.worker_count()`` parser processes, started on first use. ``submit`` returns a
    future that raises ``DocumentError`` for a document that failed, or went over a limit."""

    def __init__(self, settings: ParseSettings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("forkserver")
        self.tasks: queue.Queue[tuple[Load, Future[Any]] | None] = queue.Queue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def lookahead(self) -> int:
        """Documents worth having in parse at once: every worker busy, and one more each waiting."""
        return 2 * self.settings.worker_count() if self.settings.isolate else 0

    def submit(self, load: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        if not self.settings.isolate:
            try:
                future.set_result(load())
            except BaseException as err:  # noqa: BLE001 - handed to the caller through the future, like a worker's
                future.set_exception(err)
            return future
        with self._lock:
            if self._closed:
                raise RuntimeError("the parse sandbox is closed")
            if not self._workers:
                # Parser processes fork from a server that has imported what they run: a new one starts in
                # milliseconds instead of importing numpy, pydantic and the PDF libraries again.
                self.context.set_forkserver_preload(["flows.preparing", "connectors.pdf_parse"])
                self._workers = [_Worker(self, n) for n in range(self.settings.worker_count())]
        self.tasks.put((load, future))
        return future

    def close(self) -> None:
        """Stop the workers (a parse in progress is abandoned: its future is cancelled or fails)."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for _ in workers:
            self.tasks.put(None)
        for worker in workers:
            worker.thread.join(10)
