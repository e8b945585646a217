"""OTLP push of the metrics module's families (``docs/otlp.md``).

:class:`OtlpExporter` reads the same families ``/metrics`` renders -- ``families_source()``, e.g.
``MetricsModule.families`` or ``FamilyRegistry.families`` -- every ``interval_s`` in its own thread, and sends
them to an OpenTelemetry Collector (or any OTLP receiver) over gRPC or HTTP/protobuf: same metric names, same label
sets (as attributes), counters as cumulative monotonic Sums, gauges as Gauges; resource attributes
``service.name``, ``service.version``, ``service.instance.id`` (the node name), ``host.name``,
``k8s.node.name``.

Nothing happens per event: state is read at export time, like a scrape (the module's reader thread and the
exporter's thread are independent; the families callable copies what it needs under the module's short lock).
Requests are encoded straight to the OTLP protobuf wire format with per-series caches
(:mod:`metrics_module._otlp_wire`) and sent with one attempt per export (:mod:`metrics_module._otlp_transport`);
the exporter owns retries and logging:

* a failed export is retried after 1 s, 2 s, 4 s … (``backoff_initial_s`` doubling up to ``backoff_max_s``,
  ±``backoff_jitter``), or at the next regular tick of the interval if that comes first; each retry collects the
  current values (cumulative data needs no replay). After a success, exports follow the interval again.
* the first failure of an outage is logged (WARNING) and so is the recovery (INFO); the attempts in between are
  DEBUG. Failures are counted in ``controlplane_networkobservability_otlp_export_failures_counter{reason}``,
  successes in ``controlplane_networkobservability_otlp_exports_counter`` (:meth:`OtlpExporter.families`).
* a down or slow collector costs the exporter's thread at most ``timeout_s`` per request; nothing else waits on it.

Design note: why not the OpenTelemetry SDK. Its instruments would mean per-event work (or observable callbacks
re-creating every series), and a ``MetricProducer`` read by ``PeriodicExportingMetricReader`` still needs a
``MeterProvider`` and the SDK's exporters. Building ``MetricsData`` and calling the SDK's ``OTLPMetricExporter``
works, but (checked with opentelemetry-sdk / exporter-otlp 1.45): the exporters retry inside each ``export()``
(up to 6 attempts with their own backoff until the timeout; the HTTP one has no public way to turn that off), log
every failed attempt at WARNING/ERROR, and report only SUCCESS/FAILURE (no reason to count); and the data model
plus its encoder cost ≈16 µs per data point at every export (1.6 s for 100k series) against ≈1 µs here. So
the agent writes OTLP itself; ``tests/test_otlp.py`` checks the bytes with the official ``opentelemetry-proto``
messages and a real gRPC/HTTP receiver. Runtime dependencies: grpcio only (already the agent's).
"""

from __future__ import annotations

import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from metrics_module._otlp_transport import (
    COMPRESSIONS,
    PROTOCOLS,
    REASONS,
    ExportError,
    GrpcTransport,
    HttpTransport,
    parse_target,
)
from metrics_module._otlp_wire import DEFAULT_MAX_REQUEST_BYTES, HistogramValue, OtlpEncoder
from metrics_module.exposition import Family
from retina_core.version import __version__
from retina_core.telemetry import CONTROL_PLANE_PREFIX
from retina_core.worker import Worker

if TYPE_CHECKING:
    from metrics_module.otlpconfig import OtlpConfig

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_ENDPOINTS",
    "EXPORTS_COUNTER",
    "FAILURES_COUNTER",
    "HistogramValue",
    "OtlpExporter",
    "PROTOCOLS",
    "REASONS",
    "check_settings",
    "parse_attributes",
    "parse_headers",
]

log = logging.getLogger(__name__)

EXPORTS_COUNTER = CONTROL_PLANE_PREFIX + "otlp_exports_counter"
FAILURES_COUNTER = CONTROL_PLANE_PREFIX + "otlp_export_failures_counter"

#: Endpoint used when none is given, per protocol.
DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318/v1/metrics"}

SCOPE_NAME = "retina-exporter"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


def parse_headers(value: Any) -> dict[str, str]:
    """Headers from a mapping, or from ``"k1=v1,k2=v2"`` (``OTEL_EXPORTER_OTLP_HEADERS`` format: values
    URL-decoded). Raises ValueError naming the bad entry. ``None``/``""`` → ``{}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for item in value.split(","):
            if not item.strip():
                continue
            name, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"header {item.strip()!r} is not name=value")
            items.append((unquote(name.strip()), unquote(val.strip())))
    else:
        raise ValueError("headers must be a mapping or a 'name=value,…' string")
    out: dict[str, str] = {}
    for name, val in items:
        name = name.strip()
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise ValueError(f"header {name!r}: the value must be a string")
        val = str(val)
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        if name.lower().endswith("-bin") or name.lower().startswith("grpc-"):
            raise ValueError(f"header name {name!r} is reserved by gRPC")
        if any(c in val for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: the value contains a line break or NUL")
        if any(k.lower() == name.lower() for k in out):
            raise ValueError(f"header {name!r} is given twice")
        out[name] = val
    return out


def parse_attributes(value: Any) -> dict[str, str]:
    """Resource attributes from a mapping or ``"k1=v1,k2=v2"`` (values URL-decoded); ``None``/``""`` → ``{}``.
    Raises ValueError."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = []
        for item in value.split(","):
            if item.strip():
                name, sep, val = item.partition("=")
                if not sep:
                    raise ValueError(f"attribute {item.strip()!r} is not name=value")
                items.append((unquote(name.strip()), unquote(val.strip())))
    else:
        raise ValueError("attributes must be a mapping or a 'name=value,…' string")
    out: dict[str, str] = {}
    for name, val in items:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"attribute name {name!r} is not a non-empty string")
        if val is None or not isinstance(val, (str, int, float, bool)):
            raise ValueError(f"attribute {name!r}: the value must be a string")
        out[name.strip()] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


def check_settings(
    *,
    endpoint: str | None = None,
    protocol: str = "grpc",
    insecure: bool | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    headers: Mapping[str, str] | str | None = None,
    compression: str = "gzip",
) -> str:
    """Validate the connection settings without touching the network or the files; returns the endpoint URL the
    exporter will use. Raises ValueError with a one-line message (for config validation at load time)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; accepted: {', '.join(COMPRESSIONS)}")
    if bool(cert_file) != bool(key_file):
        raise ValueError("certFile and keyFile go together (the client certificate and its key)")
    target = parse_target(endpoint or DEFAULT_ENDPOINTS[protocol], protocol, insecure)
    if not target.tls and (ca_file or cert_file):
        raise ValueError(f"TLS files are given but the endpoint {target.url} is plaintext")
    parse_headers(headers)
    return target.url


class OtlpExporter(Worker):
    """Pushes ``families_source()`` to an OTLP receiver every ``interval_s`` from its own thread.

    Raises ValueError for a bad setting (endpoint, protocol, headers, unreadable TLS files) at construction.
    :meth:`start` starts the thread, :meth:`stop` stops it after a last export (when the collector was
    reachable), :meth:`families` yields the exporter's own control-plane counters.
    """

    def __init__(
        self,
        families_source: Callable[[], Iterable[Family]],
        *,
        endpoint: str | None = None,
        protocol: str = "grpc",
        interval_s: float = 60.0,
        headers: Mapping[str, str] | str | None = None,
        insecure: bool | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout_s: float = 10.0,
        compression: str = "gzip",
        service_name: str = "retina-exporter",
        service_version: str = __version__,
        host_name: str | None = None,
        node_name: str | None = None,
        resource_attributes: Mapping[str, str] | str | None = None,
        start_time_unix_nano: int | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        backoff_jitter: float = 0.2,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        flush_on_stop: bool = True,
    ) -> None:
        check_settings(endpoint=endpoint, protocol=protocol, insecure=insecure, ca_file=ca_file,
                       cert_file=cert_file, key_file=key_file, headers=headers, compression=compression)
        for what, v in (("interval_s", interval_s), ("timeout_s", timeout_s),
                        ("backoff_initial_s", backoff_initial_s), ("backoff_max_s", backoff_max_s)):
            if not v > 0:
                raise ValueError(f"{what} must be positive")
        if not 0 <= backoff_jitter < 1:
            raise ValueError("backoff_jitter must be in [0, 1)")
        self.target = parse_target(endpoint or DEFAULT_ENDPOINTS[protocol], protocol, insecure)
        self.headers = parse_headers(headers)
        self.families_source = families_source
        self.protocol = protocol
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.backoff_jitter = float(backoff_jitter)
        self.flush_on_stop = flush_on_stop

        host_name = host_name or socket.gethostname()
        resource: dict[str, str] = {"service.name": service_name, "service.version": service_version,
                                    # Prometheus-compatible backends make it the `instance` label: without it,
                                    # node-level series of different nodes (no node label) would collide.
                                    "service.instance.id": node_name or host_name,
                                    "host.name": host_name}
        if node_name:
            resource["k8s.node.name"] = node_name
        for k, v in parse_attributes(resource_attributes).items():
            if k in resource:
                raise ValueError(f"resource attribute {k!r} is set by the exporter")
            resource[str(k)] = str(v)
        self.resource = resource
        self.start_time_unix_nano = start_time_unix_nano if start_time_unix_nano is not None else time.time_ns()
        self._encoder = OtlpEncoder(resource.items(), scope_name=SCOPE_NAME, scope_version=service_version,
                                    start_time_unix_nano=self.start_time_unix_nano,
                                    max_request_bytes=max_request_bytes)
        transport_cls = GrpcTransport if protocol == "grpc" else HttpTransport
        self._transport = transport_cls(self.target, headers=self.headers, timeout_s=self.timeout_s,
                                        compression=compression, user_agent=f"retina-exporter/{__version__}",
                                        ca_file=ca_file, cert_file=cert_file, key_file=key_file)

        # Counters (read by families(); written by the exporting thread under _export_lock).
        self.exports = 0
        self.failures: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.exported_points = 0
        self.last_success_unix: float | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self._outage_since: float | None = None
        self._outage_reasons: dict[str, int] = {}
        self._partial = False
        self._warned_types: set[tuple[str, str]] = set()

        self._export_lock = threading.Lock()
        super().__init__("otlp-exporter")

    @classmethod
    def from_config(cls, families_source: Callable[[], Iterable[Family]], config: "OtlpConfig", *,
                    node_name: str | None = None, **kwargs: Any) -> "OtlpExporter":
        """An exporter from the parsed ``otlp`` section (:class:`metrics_module.otlpconfig.OtlpConfig`)."""
        return cls(families_source, endpoint=config.endpoint or None, protocol=config.protocol,
                   interval_s=config.interval_ns / 1e9, timeout_s=config.timeout_ns / 1e9,
                   headers=dict(config.headers), insecure=config.insecure, ca_file=config.ca_file or None,
                   cert_file=config.cert_file or None, key_file=config.key_file or None,
                   compression=config.compression, node_name=node_name,
                   resource_attributes=dict(config.resource_attributes), **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the exporting thread (first export one interval from now). No-op when running."""
        if not self.alive():
            super().start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the thread; it makes a last export first when ``flush_on_stop`` and the last attempt did not fail.
        Waits at most ``timeout_s`` (default: twice the export timeout, plus a second)."""
        ended = super().stop(timeout_s if timeout_s is not None else 2 * self.timeout_s + 1)
        if not ended:
            log.warning("OTLP exporter thread did not stop in time; abandoning its export")
        self._transport.close()
        return ended

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_initial_s * 2 ** min(failures - 1, 30), self.backoff_max_s)
        if self.backoff_jitter:
            delay *= random.uniform(1 - self.backoff_jitter, 1 + self.backoff_jitter)
        return min(delay, self.backoff_max_s)

    def _run(self) -> None:
        interval = self.interval_s
        next_tick = time.monotonic() + interval
        next_at = next_tick
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            ok = self.export_once()
            now = time.monotonic()
            while next_tick <= now:
                next_tick += interval
            next_at = next_tick if ok else min(next_tick, now + self._backoff(self.consecutive_failures))
        if self.flush_on_stop and self.consecutive_failures == 0:
            self.export_once()

    # -- one export --------------------------------------------------------------------------------------------

    def export_once(self) -> bool:
        """Collect, encode and send once (in the calling thread); True on success. Counts and logs like the
        thread does. Concurrent calls are serialised."""
        with self._export_lock:
            try:
                requests = self._encoder.encode(self.families_source(), time.time_ns())
            except Exception as exc:  # a bug in a source or in the encoder: keep the thread alive
                self._failed("internal", f"collecting or encoding the metric families failed: {exc!r}",
                             exc_info=True)
                return False
            self._warn_skipped()
            rejected, messages = 0, []
            try:
                for payload in requests:
                    n, message = self._transport.send(payload)
                    if n:
                        rejected += n
                        messages.append(message)
            except ExportError as exc:
                self._failed(exc.reason, str(exc))
                return False
            except Exception as exc:
                self._failed("internal", f"sending failed: {exc!r}", exc_info=True)
                return False
            self._succeeded(len(requests), rejected, messages)
            return True

    def _succeeded(self, requests: int, rejected: int, messages: list[str]) -> None:
        self.exports += 1
        self.exported_points += self._encoder.last_points
        self.last_success_unix = time.time()
        if self._outage_since is not None:
            took = time.monotonic() - self._outage_since
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self._outage_reasons.items()))
            log.info("OTLP export to %s resumed after %d failed attempts over %.1fs (%s)",
                     self.target.url, self.consecutive_failures, took, reasons)
        elif self.exports == 1:
            log.info("OTLP export to %s: first export sent (%d data points, %d requests)",
                     self.target.url, self._encoder.last_points, requests)
        self._outage_since = None
        self._outage_reasons = {}
        self.consecutive_failures = 0
        self.last_error = None
        if rejected and not self._partial:
            log.warning("OTLP receiver %s rejected %d of %d data points: %s (logged again when this changes)",
                        self.target.url, rejected, self._encoder.last_points, "; ".join(m for m in messages if m))
        elif not rejected and self._partial:
            log.info("OTLP receiver %s accepts all data points again", self.target.url)
        self._partial = bool(rejected)

    def _failed(self, reason: str, message: str, exc_info: bool = False) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.consecutive_failures += 1
        self.last_error = f"{reason}: {message}"
        self._outage_reasons[reason] = self._outage_reasons.get(reason, 0) + 1
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("OTLP export to %s failed (%s): %s; retrying with backoff (up to %gs), "
                        "logging again when exports resume", self.target.url, reason, message,
                        min(self.backoff_max_s, self.interval_s), exc_info=exc_info)
        else:
            log.debug("OTLP export to %s failed again (%s, attempt %d): %s", self.target.url, reason,
                      self.consecutive_failures, message, exc_info=exc_info)

    def _warn_skipped(self) -> None:
        new = self._encoder.skipped - self._warned_types
        for name, mtype in sorted(new):
            log.warning("OTLP: family %s of type %s is not exported (only counter, gauge and histogram samples "
                        "of HistogramValue are)", name, mtype)
        self._warned_types |= new

    # -- introspection -----------------------------------------------------------------------------------------

    def families(self) -> list[tuple]:
        """The exporter's control-plane counters, for the agent's registry (and so for /metrics and OTLP)."""
        return [
            (EXPORTS_COUNTER, "counter", "Number of successful OTLP metric exports",
             [((), self.exports)]),
            (FAILURES_COUNTER, "counter", "Number of failed OTLP metric export attempts, by reason",
             [((("reason", r),), n) for r, n in list(self.failures.items())]),
        ]

    def status(self) -> dict[str, Any]:
        """A JSON-able summary (for a debug endpoint)."""
        return {
            "endpoint": self.target.url,
            "protocol": self.protocol,
            "interval_s": self.interval_s,
            "running": self.alive(),
            "exports": self.exports,
            "failures": {r: n for r, n in self.failures.items() if n},
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_success_unix": self.last_success_unix,
            "exported_points": self.exported_points,
            "last_export_points": self._encoder.last_points,
            "series_tracked": self._encoder.last_series,
            "resource": dict(self.resource),
        }
