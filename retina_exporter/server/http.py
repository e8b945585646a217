"""The agent's HTTP server on ``apiServer.host:apiServer.port`` (default 0.0.0.0:10093).

``/metrics`` (Prometheus text), ``/healthz`` (event readers alive), ``/readyz`` (plugins started; 503 with the
reasons otherwise), ``/debug/config`` (effective config), ``/debug/flows?last=N`` (newest flows in the output
ring as protobuf JSON, field names as in flow.proto), ``/debug/plugins``.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

DEFAULT_DEBUG_FLOWS = 100


class AgentHTTPServer:
    """Routes are callables ``(query: dict, headers) -> (status, content_type, body_bytes)``."""

    def __init__(self, host: str, port: int) -> None:
        self.routes: dict[str, Callable[[dict, object], tuple[int, str, bytes]]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                url = urlparse(self.path)
                route = outer.routes.get(url.path)
                if route is None:
                    status, ctype, body = 404, "text/plain", f"no such endpoint: {url.path}\n".encode()
                else:
                    try:
                        status, ctype, body = route(parse_qs(url.query), self.headers)
                    except ValueError as exc:
                        status, ctype, body = 400, "text/plain", f"{exc}\n".encode()
                    except Exception as exc:  # never let one bad request kill the server
                        log.exception("handler for %s failed", url.path)
                        status, ctype, body = 500, "text/plain", f"internal error: {exc}\n".encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (e.g. a probe that timed out)

            def log_message(self, fmt, *args):
                log.debug("http: " + fmt, *args)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            from retina_exporter.errors import StartupError

            raise StartupError(
                f"apiServer: cannot listen on {host}:{port}: {exc.strerror}; change apiServer.host/apiServer.port"
            ) from exc
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def route(self, path: str, handler: Callable[[dict, object], tuple[int, str, bytes]]) -> None:
        self.routes[path] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, so only after start()
            self.server.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server.server_close()


def json_response(obj, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def parse_last(query: dict, maximum: int, default: int = DEFAULT_DEBUG_FLOWS) -> int:
    """``?last=N``: a whole number from 1 to ``maximum`` (the ring's capacity)."""
    raw = query.get("last", [str(default)])[0]
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= maximum:
        raise ValueError(f"last={raw!r}: expected a whole number from 1 to {maximum} (outputRingCapacity)")
    return n


def parse_since(query: dict) -> int:
    """``?since=T``: Unix time in seconds (may have a fraction) -> nanoseconds; 0 when absent."""
    raw = query.get("since", [""])[0]
    if not raw:
        return 0
    try:
        return int(float(raw) * 1e9)
    except ValueError:
        raise ValueError(f"since={raw!r}: expected Unix time in seconds, e.g. 1767225600.5") from None
