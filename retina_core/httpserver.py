"""The one small HTTP server of the agent and the operator: a route table ``path -> handler`` served by
``http.server.ThreadingHTTPServer`` from a daemon thread, and the reply helpers.

A handler takes ``(query, headers)`` — ``query`` as ``urllib.parse.parse_qs`` returns it (``{"last": ["20"]}``),
``headers`` the request's ``email.message.Message`` — and returns a :data:`Response` ``(status, content type,
body bytes)``. A ``ValueError`` from a handler is a 400 with its message (the message names the parameter);
any other exception a 500, logged; the server keeps serving. A client that goes away mid-reply is ignored.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Handler", "Response", "RouteServer", "json_response", "text_response"]

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
Handler = Callable[[dict[str, list[str]], Any], Response]


def json_response(obj: Any, status: int = 200, *, sort_keys: bool = False) -> Response:
    """``obj`` as indented JSON (one trailing newline)."""
    return status, "application/json", (json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n").encode()


def text_response(text: str, status: int = 200) -> Response:
    return status, "text/plain; charset=utf-8", text.encode()


class RouteServer:
    """Binds at construction (raises ``OSError``); :meth:`start` serves from a daemon thread named
    ``thread_name``; :meth:`stop` shuts down and closes the socket."""

    def __init__(self, host: str, port: int, thread_name: str = "http") -> None:
        self.routes: dict[str, Handler] = {}
        self.thread_name = thread_name
        routes = self.routes

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                route = routes.get(url.path)
                if route is None:
                    resp = text_response(f"no such endpoint: {url.path} (try {', '.join(sorted(routes))})\n", 404)
                else:
                    try:
                        resp = route(parse_qs(url.query), self.headers)
                    except ValueError as exc:
                        resp = text_response(f"{exc}\n", 400)
                    except Exception as exc:  # noqa: BLE001 - one bad request must not kill the server
                        log.exception("http: handler for %s failed", url.path)
                        resp = text_response(f"internal error: {exc}\n", 500)
                status, ctype, body = resp
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (e.g. a probe that timed out)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self.server = ThreadingHTTPServer((host, port), _Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, so only after start()
            self.server.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server.server_close()
