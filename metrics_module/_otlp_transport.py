"""OTLP transports for :mod:`metrics_module.otlp`: gRPC and HTTP/protobuf, one attempt per call.

Each :meth:`send` makes exactly one attempt bounded by the timeout and either returns the partial-success answer
or raises :class:`ExportError` with a ``reason`` from :data:`REASONS`; retrying, backoff and logging are the
exporter's. Payloads are already-encoded ``ExportMetricsServiceRequest`` bytes.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from metrics_module._otlp_wire import read_partial_success

__all__ = [
    "COMPRESSIONS",
    "ExportError",
    "GrpcTransport",
    "HttpTransport",
    "PROTOCOLS",
    "REASONS",
    "Target",
    "parse_target",
]

PROTOCOLS = ("grpc", "http/protobuf")
COMPRESSIONS = ("gzip", "none")
GRPC_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
HTTP_DEFAULT_PATH = "/v1/metrics"
DEFAULT_GRPC_PORT = 4317

#: Failure reasons (label values of ``..._otlp_export_failures_counter{reason}``).
REASONS = (
    "unavailable",  # no connection: refused, reset, unreachable, name not resolved, gRPC UNAVAILABLE
    "timeout",  # no answer within the timeout (gRPC DEADLINE_EXCEEDED)
    "tls",  # TLS handshake or certificate verification failed
    "throttled",  # HTTP 429, gRPC RESOURCE_EXHAUSTED
    "too_large",  # HTTP 413, or a gRPC message over the server's size limit
    "rejected",  # other HTTP 4xx (401, 403, 400 …) and gRPC codes the retry would not fix
    "server_error",  # HTTP 5xx, gRPC INTERNAL / UNKNOWN / DATA_LOSS …
    "internal",  # collecting or encoding the families failed (a bug: logged with its traceback)
)


class ExportError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    protocol: str
    tls: bool
    address: str  # gRPC: "host:port"; HTTP: "host:port" (for display)
    host: str
    port: int
    path: str  # HTTP only: path (and query) of the request

    @property
    def url(self) -> str:
        if self.protocol == "grpc":
            return ("https://" if self.tls else "http://") + self.address
        return ("https://" if self.tls else "http://") + self.address + self.path


def parse_target(endpoint: str, protocol: str, insecure: bool | None) -> Target:
    """Resolve ``endpoint`` for ``protocol``; raises ValueError.

    ``http://`` means plaintext and ``https://`` TLS; without a scheme, TLS unless ``insecure``. ``insecure``
    contradicting the scheme is an error. gRPC: ``host:port`` (port 4317 when absent), any path is an error. HTTP:
    the path ``/v1/metrics`` is used when the URL has no path (or ``/``), else the path as given; without a port,
    80 or 443.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    text = (endpoint or "").strip()
    if not text:
        raise ValueError("empty endpoint")
    if "://" not in text:
        parts = urlsplit("//" + text)
        scheme = ""
    else:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"endpoint {endpoint!r}: scheme must be http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"endpoint {endpoint!r}: invalid port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"endpoint {endpoint!r}: no host")
    if parts.username or parts.password:
        raise ValueError(f"endpoint {endpoint!r}: credentials in the URL are not supported; use headers")
    if scheme == "https":
        if insecure:
            raise ValueError(f"endpoint {endpoint!r} is https:// but insecure is true")
        tls = True
    elif scheme == "http":
        if insecure is False:
            raise ValueError(f"endpoint {endpoint!r} is http:// (plaintext) but insecure is false")
        tls = False
    else:
        tls = not insecure
    host_text = f"[{host}]" if ":" in host else host
    if protocol == "grpc":
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"endpoint {endpoint!r}: a gRPC endpoint takes no path")
        port = port or DEFAULT_GRPC_PORT
        return Target(protocol, tls, f"{host_text}:{port}", host, port, "")
    port = port or (443 if tls else 80)
    path = parts.path if parts.path not in ("", "/") else HTTP_DEFAULT_PATH
    if parts.query:
        path += "?" + parts.query
    return Target(protocol, tls, f"{host_text}:{port}", host, port, path)


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


# -- gRPC ---------------------------------------------------------------------------------------------------------

_GRPC_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.CANCELLED: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "throttled",
    grpc.StatusCode.INTERNAL: "server_error",
    grpc.StatusCode.UNKNOWN: "server_error",
    grpc.StatusCode.DATA_LOSS: "server_error",
    grpc.StatusCode.ABORTED: "server_error",
}
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate")


def _grpc_reason(code: grpc.StatusCode, details: str) -> str:
    low = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(w in low for w in _TLS_WORDS):
        return "tls"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and ("larger than max" in low or "message too large" in low):
        return "too_large"
    return _GRPC_REASONS.get(code, "rejected")


class GrpcTransport:
    """``MetricsService/Export`` over one gRPC channel (re-created after a connection failure, so that a collector
    that comes back is reached on the next attempt instead of after gRPC's own reconnect backoff)."""

    def __init__(
        self,
        target: Target,
        *,
        headers: dict[str, str],
        timeout_s: float,
        compression: str,
        user_agent: str,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        self.options = [
            ("grpc.primary_user_agent", user_agent),
            ("grpc.max_send_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        self.credentials = None
        if target.tls:
            self.credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file, "CA file"),
                private_key=_read(key_file, "client key file"),
                certificate_chain=_read(cert_file, "client certificate file"),
            )
        self._channel: grpc.Channel | None = None
        self._call = None

    def _connect(self):
        if self._call is None:
            if self.credentials is not None:
                self._channel = grpc.secure_channel(self.target.address, self.credentials, options=self.options)
            else:
                self._channel = grpc.insecure_channel(self.target.address, options=self.options)
            self._call = self._channel.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
        return self._call

    def send(self, payload: bytes) -> tuple[int, str]:
        call = self._connect()
        try:
            response = call(payload, timeout=self.timeout_s, metadata=self.metadata, compression=self.compression)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
            reason = _grpc_reason(code, details)
            if reason in ("unavailable", "tls", "timeout"):
                self.close()  # a fresh channel connects at once on the next attempt
            raise ExportError(reason, f"gRPC {code.name}: {details}") from None
        try:
            return read_partial_success(response or b"")
        except ValueError:
            return 0, ""

    def close(self) -> None:
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            channel.close()


# -- HTTP/protobuf ----------------------------------------------------------------------------------------------


def _http_reason(status: int) -> str:
    if status == 429:
        return "throttled"
    if status == 413:
        return "too_large"
    if status >= 500:
        return "server_error"
    return "rejected"


class HttpTransport:
    """``POST`` of ``application/x-protobuf`` over one kept-alive HTTP/1.1 connection (re-opened after an
    error). The timeout bounds the connection and each read and write."""

    def __init__(
        self,
        target: Target,
        *,
        headers: dict[str, str],
        timeout_s: float,
        compression: str,
        user_agent: str,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.gzip = compression == "gzip"
        reserved = {"content-type", "content-encoding", "content-length", "host", "connection"}
        self.headers = {k: v for k, v in headers.items() if k.lower() not in reserved}
        self.headers.setdefault("User-Agent", user_agent)
        self.headers["Content-Type"] = "application/x-protobuf"
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.context: ssl.SSLContext | None = None
        if target.tls:
            for path, what in ((ca_file, "CA file"), (cert_file, "client certificate file"),
                               (key_file, "client key file")):
                _read(path, what)  # readable, or a clear error now
            try:
                self.context = ssl.create_default_context(cafile=ca_file or None)
                if cert_file:
                    self.context.load_cert_chain(cert_file, key_file or None)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"TLS files: {exc}") from None
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.context is not None:
                self._conn = http.client.HTTPSConnection(self.target.host, self.target.port,
                                                         timeout=self.timeout_s, context=self.context)
            else:
                self._conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=self.timeout_s)
        return self._conn

    def _post(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        reused = self._conn is not None
        conn = self._connection()
        try:
            conn.request("POST", self.target.path, body=body, headers=self.headers)
            response = conn.getresponse()
            return response, response.read()
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            if not reused:
                raise
        # The server closed the kept-alive connection while it was idle: once more on a new one.
        self.close()
        conn = self._connection()
        conn.request("POST", self.target.path, body=body, headers=self.headers)
        response = conn.getresponse()
        return response, response.read()

    def send(self, payload: bytes) -> tuple[int, str]:
        body = gzip.compress(payload, compresslevel=1) if self.gzip else payload
        try:
            response, data = self._post(body)
        except (TimeoutError, socket.timeout) as exc:
            self.close()
            raise ExportError("timeout", f"HTTP: no answer within {self.timeout_s:g}s ({exc})") from None
        except ssl.SSLError as exc:
            self.close()
            raise ExportError("tls", f"HTTP: TLS: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ExportError("unavailable", f"HTTP: {exc.__class__.__name__}: {exc}") from None
        if response.will_close:
            self.close()
        if not 200 <= response.status < 300:
            snippet = data[:200].decode("utf-8", "replace") if data else ""
            if response.getheader("Content-Type", "").startswith("application/x-protobuf") or "\x00" in snippet:
                snippet = ""
            raise ExportError(_http_reason(response.status),
                              f"HTTP {response.status} {response.reason}" + (f": {snippet}" if snippet else ""))
        try:
            return read_partial_success(data)
        except ValueError:
            return 0, ""

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
