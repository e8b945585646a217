"""The operator's debug HTTP server (``--http-port``, default 9091): a route table of ``path -> handler(query)``
returning ``(status, content type, body)``. Handlers never take the server down: an exception is a 500."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["DebugHTTPServer", "Response", "json_response", "text_response"]

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]


def json_response(obj: Any, status: int = 200) -> Response:
    return status, "application/json", (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def text_response(text: str, status: int = 200) -> Response:
    return status, "text/plain; charset=utf-8", text.encode()


class DebugHTTPServer:
    """Binds at construction (raises ``OSError``); :meth:`start` serves from a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self.routes: dict[str, Callable[[dict[str, list[str]]], Response]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                route = routes.get(url.path)
                if route is None:
                    resp = text_response(f"no such endpoint: {url.path} (try {', '.join(sorted(routes))})\n", 404)
                else:
                    try:
                        resp = route(parse_qs(url.query))
                    except ValueError as exc:
                        resp = text_response(f"{exc}\n", 400)
                    except Exception as exc:  # noqa: BLE001 - one bad request must not kill the server
                        log.exception("operator: handler for %s failed", url.path)
                        resp = text_response(f"internal error: {exc}\n", 500)
                status, ctype, body = resp
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def route(self, path: str, handler: Callable[[dict[str, list[str]]], Response]) -> None:
        self.routes[path] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="operator-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server.server_close()
