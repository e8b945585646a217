"""A real OTLP receiver for tests: metrics (gRPC ``MetricsService/Export``, HTTP ``POST /v1/metrics``) and logs
(gRPC ``LogsService/Export``, HTTP ``POST /v1/logs``).

Both decode ``ExportMetricsServiceRequest`` / ``ExportLogsServiceRequest`` with the official ``opentelemetry-proto``
messages and keep every request with the headers (gRPC metadata, HTTP headers) it came with (metrics in
``received``, logs in ``received_logs``; :meth:`OtlpReceiver.log_records` flattens the latter). Each listens on
127.0.0.1 on a random port chosen at the first :meth:`OtlpReceiver.start`; :meth:`stop` closes the listeners
*and* open connections (like a killed collector) and a later :meth:`start` listens on the same ports again.

Knobs for failure tests: ``delay_s`` (answer late), ``fail`` (``(grpc.StatusCode, http_status)`` to answer
with), ``reject_points`` (partial success); ``arrivals`` counts requests as they reach a handler.
:func:`make_tls_files` writes a CA, server and client certificates (mTLS) and a self-signed server certificate,
with ``cryptography`` or, without it, the ``openssl`` CLI.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import ssl
import subprocess
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as ms_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as ls_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as ls_grpc

__all__ = ["LogRecordSeen", "OtlpReceiver", "Point", "Received", "make_tls_files", "any_value"]


@dataclass
class Received:
    protocol: str  # "grpc" or "http"
    request: ms_pb2.ExportMetricsServiceRequest
    headers: dict[str, str]  # lower-case names
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LogRecordSeen:
    """One received log record, decoded: ``attributes`` as a dict of plain values (arrays as lists)."""

    body: Any
    attributes: dict[str, Any]
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    event_name: str
    resource: dict[str, Any]
    scope: tuple[str, str]
    protocol: str


@dataclass(frozen=True)
class Point:
    name: str
    kind: str  # "gauge", "sum", "histogram", …
    attributes: tuple[tuple[str, Any], ...]  # sorted
    value: Any  # number; for histograms the HistogramDataPoint
    start_time_unix_nano: int
    time_unix_nano: int
    is_monotonic: bool | None
    temporality: int | None
    description: str
    resource: tuple[tuple[str, Any], ...]
    scope: tuple[str, str]

    @property
    def labels(self) -> dict[str, Any]:
        return dict(self.attributes)


def any_value(v) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def _log_records_of(received: Received) -> list[LogRecordSeen]:
    out = []
    for rl in received.request.resource_logs:
        resource = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            scope = (sl.scope.name, sl.scope.version)
            for lr in sl.log_records:
                out.append(LogRecordSeen(any_value(lr.body), {kv.key: any_value(kv.value) for kv in lr.attributes},
                                         lr.time_unix_nano, lr.observed_time_unix_nano, lr.severity_number,
                                         lr.severity_text, lr.event_name, resource, scope, received.protocol))
    return out


def _points_of(request) -> list[Point]:
    out = []
    for rm in request.resource_metrics:
        resource = tuple(sorted((kv.key, any_value(kv.value)) for kv in rm.resource.attributes))
        for sm in rm.scope_metrics:
            scope = (sm.scope.name, sm.scope.version)
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                for dp in data.data_points:
                    attrs = tuple(sorted((kv.key, any_value(kv.value)) for kv in dp.attributes))
                    if kind in ("gauge", "sum"):
                        value = getattr(dp, dp.WhichOneof("value"))
                    else:
                        value = dp
                    out.append(Point(
                        m.name, kind, attrs, value, dp.start_time_unix_nano, dp.time_unix_nano,
                        data.is_monotonic if kind == "sum" else None,
                        data.aggregation_temporality if kind in ("sum", "histogram") else None,
                        m.description, resource, scope))
    return out


def _admit_grpc(owner: OtlpReceiver, context: Any) -> dict[str, str]:
    """One gRPC export's arrival: count it, apply the injected delay and failure, and return its headers
    (lower-cased names)."""
    headers = {k.lower(): (v if isinstance(v, str) else v.decode("latin-1"))
               for k, v in context.invocation_metadata()}
    owner._arrived()
    if owner.delay_s:
        time.sleep(owner.delay_s)
    if owner.fail is not None:
        context.abort(owner.fail[0], "injected failure")
    return headers


class _Servicer(ms_grpc.MetricsServiceServicer):
    def __init__(self, owner: OtlpReceiver) -> None:
        self.owner = owner

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        owner = self.owner
        owner._record("grpc", request, _admit_grpc(owner, context))
        return owner._response()


class _LogsServicer(ls_grpc.LogsServiceServicer):
    def __init__(self, owner: OtlpReceiver) -> None:
        self.owner = owner

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        owner = self.owner
        owner._record_logs("grpc", request, _admit_grpc(owner, context))
        return ls_pb2.ExportLogsServiceResponse()


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, owner: OtlpReceiver) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return  # the client gave up (timeout) or the receiver was stopped: expected in failure tests
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

    def setup(self):
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/x-protobuf") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        owner: OtlpReceiver = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?")[0]
        if path not in (owner.http_path, owner.logs_path):
            self._reply(404, b"not found", "text/plain")
            return
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        owner._arrived()
        if owner.delay_s:
            time.sleep(owner.delay_s)
        if owner.fail is not None:
            self._reply(owner.fail[1], b"injected failure", "text/plain")
            return
        logs = path == owner.logs_path
        try:
            request = (ls_pb2.ExportLogsServiceRequest if logs else ms_pb2.ExportMetricsServiceRequest).FromString(body)
        except Exception:
            self._reply(400, b"bad protobuf", "text/plain")
            return
        if logs:
            owner._record_logs("http", request, {k.lower(): v for k, v in self.headers.items()})
            self._reply(200, ls_pb2.ExportLogsServiceResponse().SerializeToString())
            return
        owner._record("http", request, {k.lower(): v for k, v in self.headers.items()})
        self._reply(200, owner._response().SerializeToString())


class OtlpReceiver:
    """``OtlpReceiver(tls=None)``; ``tls`` = ``make_tls_files()`` result to serve TLS on both ports
    (``require_client_cert`` for mTLS)."""

    def __init__(self, tls: dict[str, Path] | None = None, *, require_client_cert: bool = False,
                 http_path: str = "/v1/metrics", logs_path: str = "/v1/logs") -> None:
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.http_path = http_path
        self.logs_path = logs_path
        self.received_logs: list[Received] = []
        self.grpc_port = 0
        self.http_port = 0
        self.received: list[Received] = []
        self.delay_s = 0.0
        self.fail: tuple[grpc.StatusCode, int] | None = None
        self.reject_points = 0
        self.arrivals = 0  # requests that reached a handler (before delay_s and fail apply)
        self._cond = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ms_grpc.add_MetricsServiceServicer_to_server(_Servicer(self), server)
        ls_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        address = f"127.0.0.1:{self.grpc_port}"
        if self.tls:
            creds = grpc.ssl_server_credentials(
                [(self.tls["server_key"].read_bytes(), self.tls["server_cert"].read_bytes())],
                root_certificates=self.tls["ca_cert"].read_bytes() if self.require_client_cert else None,
                require_client_auth=self.require_client_cert)
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"cannot listen on {address}")
        server.start()
        self.grpc_port, self._grpc = port, server

        httpd = _HttpServer(("127.0.0.1", self.http_port), _Handler, self)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls["server_cert"], self.tls["server_key"])
            if self.require_client_cert:
                ctx.load_verify_locations(self.tls["ca_cert"])
                ctx.verify_mode = ssl.CERT_REQUIRED
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.http_port = httpd.server_address[1]
        self._http = httpd
        self._http_thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                             name="otlp-receiver-http", daemon=True)
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Close the listeners and every open connection (as a killed collector would)."""
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            httpd, self._http = self._http, None
            httpd.shutdown()
            httpd.server_close()
            with httpd.conn_lock:
                conns = list(httpd.connections)
            for conn in conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            if self._http_thread is not None:
                self._http_thread.join(5)

    @property
    def running(self) -> bool:
        return self._grpc is not None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- endpoints -------------------------------------------------------------------------------------------
    def endpoint(self, protocol: str) -> str:
        scheme = "https" if self.tls else "http"
        if protocol == "grpc":
            return f"{scheme}://127.0.0.1:{self.grpc_port}"
        return f"{scheme}://127.0.0.1:{self.http_port}{self.http_path}"

    # -- what was received -----------------------------------------------------------------------------------
    def _arrived(self) -> None:
        with self._cond:
            self.arrivals += 1
            self._cond.notify_all()

    def _record(self, protocol: str, request, headers: dict[str, str]) -> None:
        with self._cond:
            self.received.append(Received(protocol, request, headers))
            self._cond.notify_all()

    def _record_logs(self, protocol: str, request, headers: dict[str, str]) -> None:
        with self._cond:
            self.received_logs.append(Received(protocol, request, headers))
            self._cond.notify_all()

    def log_records(self) -> list[LogRecordSeen]:
        """Every log record received, in order."""
        with self._cond:
            received = list(self.received_logs)
        return [r for rec in received for r in _log_records_of(rec)]

    def _response(self) -> ms_pb2.ExportMetricsServiceResponse:
        response = ms_pb2.ExportMetricsServiceResponse()
        if self.reject_points:
            response.partial_success.rejected_data_points = self.reject_points
            response.partial_success.error_message = "injected partial success"
        return response

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds (checked at each request received, and every 50 ms)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def count(self) -> int:
        with self._cond:
            return len(self.received)

    def clear(self) -> None:
        with self._cond:
            self.received.clear()
            self.received_logs.clear()

    def requests(self) -> list[Received]:
        with self._cond:
            return list(self.received)

    def points(self, since: int = 0) -> list[Point]:
        """Every data point of the requests received (from request index ``since``), in order."""
        return [p for r in self.requests()[since:] for p in _points_of(r.request)]

    def latest(self, since: int = 0) -> dict[tuple[str, tuple], Point]:
        """The last point of each series ``(name, attributes)``."""
        out: dict[tuple[str, tuple], Point] = {}
        for p in self.points(since):
            out[(p.name, p.attributes)] = p
        return out


# -- TLS material -----------------------------------------------------------------------------------------------


def make_tls_files(directory: Path) -> dict[str, Path]:
    """Write under ``directory``: ``ca_cert``; ``server_cert``/``server_key`` (127.0.0.1, localhost, signed by
    the CA); ``client_cert``/``client_key`` (signed by the CA, for mTLS); ``self_signed_cert``/``self_signed_key``
    (127.0.0.1, localhost, self-signed); ``other_ca_cert`` (an unrelated CA, for verification failures)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _make_tls_cryptography(directory)
    except ImportError:
        return _make_tls_openssl(directory)


def _make_tls_cryptography(d: Path) -> dict[str, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn, ca_key, ca_cert, usage, sans):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    def write(path, data):
        path.write_bytes(data)
        return path

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key, ca_cert = ca("retina-exporter test CA")
    _, other_ca = ca("unrelated CA")
    # A self-signed server certificate (its own CA, as `openssl req -x509` makes), for 127.0.0.1/localhost.
    ss_key = key()
    ss_cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(name("127.0.0.1"))
               .public_key(ss_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                           x509.DNSName("localhost")]), critical=False)
               .sign(ss_key, hashes.SHA256()))
    s_key, s_cert = leaf("127.0.0.1", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                         [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    c_key, c_cert = leaf("retina-exporter client", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    pem = serialization.Encoding.PEM
    return {
        "ca_cert": write(d / "ca.pem", ca_cert.public_bytes(pem)),
        "self_signed_cert": write(d / "self-signed.pem", ss_cert.public_bytes(pem)),
        "self_signed_key": write(d / "self-signed-key.pem", pem_key(ss_key)),
        "other_ca_cert": write(d / "other-ca.pem", other_ca.public_bytes(pem)),
        "server_cert": write(d / "server.pem", s_cert.public_bytes(pem)),
        "server_key": write(d / "server-key.pem", pem_key(s_key)),
        "client_cert": write(d / "client.pem", c_cert.public_bytes(pem)),
        "client_key": write(d / "client-key.pem", pem_key(c_key)),
    }


def _make_tls_openssl(d: Path) -> dict[str, Path]:
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", f"/CN={ca}", "-keyout", str(d / f"{ca}-key.pem"), "-out", str(d / f"{ca}.pem"))
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", str(d / "self-signed-key.pem"), "-out", str(d / "self-signed.pem"))
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                     ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{who}.ext").write_text(ext + "\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={who}",
            "-keyout", str(d / f"{who}-key.pem"), "-out", str(d / f"{who}.csr"))
        run("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca-key.pem"),
            "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{who}.ext"), "-out", str(d / f"{who}.pem"))
    return {
        "ca_cert": d / "ca.pem",
        "self_signed_cert": d / "self-signed.pem",
        "self_signed_key": d / "self-signed-key.pem",
        "other_ca_cert": d / "other-ca.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server-key.pem",
        "client_cert": d / "client.pem",
        "client_key": d / "client-key.pem",
    }
