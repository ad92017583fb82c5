"""A real HTTP server on 127.0.0.1 for tests, answering from a script of responses per path and logging
every request (path, time) so tests can count calls and measure rates."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False  # close the connection without answering


@dataclass
class Logged:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    at: float
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Logged], Reply]


class ScriptedServer:
    """Routes by path: a list of replies is consumed in order (the last one repeats), a callable decides."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply] | Handler] = {}
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self.url = ""

    def route(self, path: str, replies: list[Reply] | Handler) -> None:
        self.routes[path] = replies

    def calls(self, path: str | None = None) -> list[Logged]:
        return [c for c in self.log if path is None or c.path == path]

    def _reply(self, logged: Logged) -> Reply:
        with self._lock:
            self.log.append(logged)
            route = self.routes.get(logged.path)
            if route is None:
                return Reply(404, {"message": f"no route {logged.path}"})
            if callable(route):
                handler = route
            else:
                return route.pop(0) if len(route) > 1 else route[0]
        return handler(logged)


def _handler_class(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            parsed = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            logged = Logged(
                self.command, parsed.path, parse_qs(parsed.query), body, time.monotonic(), dict(self.headers)
            )
            reply = server._reply(logged)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                self.close_connection = True
                return
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            if not any(k.lower() == "content-type" for k in reply.headers):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

        do_GET = do_POST = _serve

    return H


@contextmanager
def serve(server: ScriptedServer | None = None) -> Iterator[ScriptedServer]:
    server = server or ScriptedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(server))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
