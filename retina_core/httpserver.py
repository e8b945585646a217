"""The one small HTTP server of the agent and the operator: a route table ``path -> handler`` served by
``http.server.ThreadingHTTPServer`` from a daemon thread, and the reply helpers.

A handler takes ``(query, headers)`` — ``query`` as ``urllib.parse.parse_qs`` returns it (``{"last": ["20"]}``),
``headers`` the request's ``email.message.Message`` — and returns a :data:`Response` ``(status, content type,
body bytes)`` (or the body as a list of bytes pieces, written one after the other: no whole-body copy; after such a
large reply the freed heap is returned to the kernel, :func:`retina_core.heap.release_free_heap`). A ``ValueError`` from a handler is a 400 with its message (the message names the parameter);
any other exception a 500, logged; the server keeps serving. A client that goes away mid-reply is ignored.

Hardening (:class:`Limits`): every connection has its own thread, and a request is read under limits so that a slow
or stalled client only ever holds its own thread, never the others' scrapes (a handler's reply is rendered before
any byte is written, so no lock is held while a client is slow to read):

* the request line and headers must arrive within ``read_timeout_s`` of the connection opening (or of the previous
  reply on a kept-alive connection), however slowly they trickle in; then the connection is closed;
* a request line longer than ``max_request_line`` bytes is a 414, headers over ``max_header_bytes`` in all or more
  than ``max_headers`` lines a 431, a request body (``Content-Length`` > 0 or ``Transfer-Encoding``) a 413: the
  endpoints take GET (and HEAD) only;
* a reply must be taken by the client within ``write_timeout_s`` (in all), else the connection is closed;
* at most ``max_connections`` connections are served at once; one more gets an immediate 503 and is closed.

:attr:`RouteServer.stats` counts what the limits turned away.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from retina_core.heap import release_free_heap

__all__ = ["Handler", "Limits", "Response", "RouteServer", "json_response", "text_response"]

log = logging.getLogger(__name__)

Response = tuple[int, str, "bytes | list[bytes]"]
Handler = Callable[[dict[str, list[str]], Any], Response]

#: Most query parameters (name=value pairs) one request may carry; more is a 400.
MAX_QUERY_FIELDS = 100


@dataclass(frozen=True)
class Limits:
    """Size and time limits of a :class:`RouteServer` (see the module docstring)."""

    max_request_line: int = 8192
    """Bytes of ``GET /path?query HTTP/1.1`` (a longer one is a 414); the longest ``/debug/flows`` filter query
    fits several times over."""
    max_header_bytes: int = 16384
    """Bytes of all header lines together (more is a 431); Prometheus and kubelet send a few hundred."""
    max_headers: int = 64
    """Header lines (more is a 431)."""
    read_timeout_s: float = 10.0
    """Seconds for the whole request head to arrive (and the idle time allowed between requests on a kept-alive
    connection); a client that stalls or trickles is disconnected after this."""
    write_timeout_s: float = 30.0
    """Seconds for the client to take a whole reply (a large ``/metrics`` on a slow link included)."""
    max_connections: int = 64
    """Connections served at once (each holds one thread); one more gets a 503 at once."""


def json_response(obj: Any, status: int = 200, *, sort_keys: bool = False) -> Response:
    """``obj`` as indented JSON (one trailing newline)."""
    return status, "application/json", (json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n").encode()


def text_response(text: str, status: int = 200) -> Response:
    return status, "text/plain; charset=utf-8", text.encode()


class _DeadlineReader(io.RawIOBase):
    """The connection's socket as a raw stream whose reads all end by :attr:`deadline` (``time.monotonic()``):
    each ``recv`` waits at most the time left, so a client trickling one byte at a time cannot extend it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("read timed out")
            self._sock.settimeout(remaining)
        return self._sock.recv_into(buf)


_BUSY_TEXT = b"too many connections, retry later\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
         + str(len(_BUSY_TEXT)).encode() + b"\r\nConnection: close\r\n\r\n" + _BUSY_TEXT)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler: type, limits: Limits) -> None:
        if ":" in host:  # an IPv6 address
            self.address_family = socket.AF_INET6
        self.limits = limits
        self.active: set[socket.socket] = set()
        self.stats = {"read_timeouts": 0, "write_timeouts": 0, "rejected_connections": 0, "too_large": 0}
        self._lock = threading.Lock()
        super().__init__((host, port), handler)

    def count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            busy = len(self.active) >= self.limits.max_connections
            if busy:
                self.stats["rejected_connections"] += 1
            else:
                self.active.add(request)
        if busy:  # answered from the accept loop without blocking it: the reply fits an empty send buffer
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self.active.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._lock:
            active = list(self.active)
        for sock in active:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RouteServer:
    """Binds at construction (raises ``OSError``); :meth:`start` serves from a daemon thread named
    ``thread_name``; :meth:`stop` shuts down, closes the socket and the connections still open."""

    def __init__(self, host: str, port: int, thread_name: str = "http", *, limits: Limits | None = None) -> None:
        self.routes: dict[str, Handler] = {}
        self.thread_name = thread_name
        self.limits = limits if limits is not None else Limits()
        self.not_found_hint = ""
        """Appended to the 404 text (e.g. where ``/debug/*`` is served instead)."""
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server: _Server

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # the stdlib's buffered reader: replaced by one with a deadline
                self._raw = _DeadlineReader(self.connection)
                self.rfile = io.BufferedReader(self._raw)

            def handle_one_request(self) -> None:
                limits = self.server.limits
                self._raw.deadline = time.monotonic() + limits.read_timeout_s
                try:
                    if not self._read_request(limits):
                        return
                except TimeoutError:
                    self.server.count("read_timeouts")
                    log.debug("http: %s: request not complete within %.3gs, disconnected", self.client_address[0],
                              limits.read_timeout_s)
                    self.close_connection = True
                    return
                except OSError:  # reset by the client
                    self.close_connection = True
                    return
                if self.command in ("GET", "HEAD"):
                    self._reply(*owner._dispatch(self.path, self.headers))
                else:
                    self._reply(*text_response(f"method {self.command} not allowed: GET or HEAD\n", 405),
                                extra=(("Allow", "GET, HEAD"),))

            def _read_request(self, limits: Limits) -> bool:
                """The request line and headers, under the limits; False when the connection is to be closed (an
                error reply already sent, or the client went away)."""
                self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
                line = self.rfile.readline(limits.max_request_line + 1)
                if len(line) > limits.max_request_line:
                    return self._refuse(414, f"request line longer than {limits.max_request_line} bytes")
                if not line.endswith(b"\n"):  # end of stream (an idle kept-alive connection closing, or mid-line)
                    self.close_connection = True
                    return False
                self.raw_requestline = line
                head: list[bytes] = []
                size = 0
                while True:
                    hline = self.rfile.readline(limits.max_header_bytes - size + 1)
                    size += len(hline)
                    if size > limits.max_header_bytes:
                        return self._refuse(431, f"request headers longer than {limits.max_header_bytes} bytes")
                    if not hline.endswith(b"\n"):
                        self.close_connection = True
                        return False
                    if hline in (b"\r\n", b"\n"):
                        break
                    head.append(hline)
                    if len(head) > limits.max_headers:
                        return self._refuse(431, f"more than {limits.max_headers} request header lines")
                rfile, self.rfile = self.rfile, io.BufferedReader(io.BytesIO(b"".join(head) + b"\r\n"))
                try:
                    if not self.parse_request():  # the stdlib's checks of the request line and headers (a 400)
                        self.close_connection = True
                        return False
                finally:
                    self.rfile = rfile
                length = self.headers.get("Content-Length", "0").strip() or "0"
                if not length.isdigit():
                    return self._refuse(400, f"Content-Length {length!r} is not a number")
                if self.headers.get("Transfer-Encoding") or int(length) > 0:
                    return self._refuse(413, "a request body is not accepted (GET and HEAD only)")
                return True

            def _refuse(self, status: int, reason: str) -> bool:
                if status in (413, 414, 431):
                    self.server.count("too_large")
                log.debug("http: %s: %d %s", self.client_address[0], status, reason)
                self._reply(*text_response(reason + "\n", status), close=True)
                return False

            def _reply(self, status: int, ctype: str, body: bytes | list[bytes], *, close: bool = False,
                       extra: tuple[tuple[str, str], ...] = ()) -> None:
                if close:
                    self.close_connection = True
                try:
                    deadline = time.monotonic() + self.server.limits.write_timeout_s
                    self.connection.settimeout(self.server.limits.write_timeout_s)
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    pieces = body if body.__class__ is list else (body,)
                    self.send_header("Content-Length", str(sum(map(len, pieces))))
                    for name, value in extra:
                        self.send_header(name, value)
                    if close:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        for piece in pieces:  # the write timeout holds for the whole reply
                            left = deadline - time.monotonic()
                            if left <= 0:
                                raise TimeoutError
                            self.connection.settimeout(left)
                            self.wfile.write(piece)
                    if body.__class__ is list:  # a large reply: its freed pieces go back to the kernel
                        body = pieces = None
                        release_free_heap()
                except TimeoutError:
                    self.server.count("write_timeouts")
                    log.debug("http: %s: reply not taken within %.3gs, disconnected", self.client_address[0],
                              self.server.limits.write_timeout_s)
                    self.close_connection = True
                except OSError:
                    self.close_connection = True  # the client went away (e.g. a probe that timed out)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self.server = _Server(host, port, _Handler, self.limits)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def stats(self) -> dict[str, int]:
        """Counts of ``read_timeouts``, ``write_timeouts``, ``rejected_connections`` (over ``max_connections``) and
        ``too_large`` (414, 413 and 431 replies)."""
        return dict(self.server.stats)

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def _dispatch(self, path: str, headers: Any) -> Response:
        url = urlsplit(path)
        route = self.routes.get(url.path)
        if route is None:
            return text_response(f"no such endpoint: {url.path} (try {', '.join(sorted(self.routes))})"
                                 f"{self.not_found_hint}\n", 404)
        try:
            return route(parse_qs(url.query, max_num_fields=MAX_QUERY_FIELDS), headers)
        except ValueError as exc:
            return text_response(f"{exc}\n", 400)
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the server
            log.exception("http: handler for %s failed", url.path)
            return text_response(f"internal error: {exc}\n", 500)

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
        self.server.close_connections()
