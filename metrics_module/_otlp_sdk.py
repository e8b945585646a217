"""The bridge between the metrics module's families and the OpenTelemetry SDK (design in docs/otlp.md).

* :class:`FamiliesProducer` turns ``families_source()`` -- the families ``/metrics`` renders -- into the SDK's
  ``Metric`` objects at each collection (nothing per event). Per series it keeps the attribute set (parsed once
  from the label text, as a :class:`SeriesAttributes` dict that also caches its encoded form), the start time and
  the last value (for cumulative start times, resets, and delta temporality).
* :class:`FamiliesMetricReader` is an SDK ``MetricReader`` registered on the ``MeterProvider`` (so SDK
  instruments, if any are ever created on that provider, are exported too). The Python SDK has no
  ``MetricProducer`` yet, so the reader merges the producer's metrics into the ``MetricsData`` it collects and
  hands them to the ``OTLPMetricExporter``, split into requests of bounded size.
* :func:`make_exporter` builds the SDK's ``OTLPMetricExporter`` (gRPC or HTTP/protobuf) from resolved settings,
  subclassed for two things only: the outcome of every attempt is recorded (gRPC: a client interceptor on the
  exporter's channel; HTTP: the ``requests.Session`` passed as ``session``) so failures can be counted by reason,
  and ``MetricsData`` is encoded with the cached attribute bytes (:func:`encode_metrics_fast`; it produces the same
  message as the SDK's ``encode_metrics`` -- tested -- and falls back to it for anything it does not know).
* :func:`make_log_exporter` builds the SDK's ``OTLPLogExporter`` (gRPC or HTTP/protobuf) for the flow logs from
  the same resolved settings (signal ``logs``), its attempts recorded the same way.
* :func:`quiet_sdk_exporter_logs` demotes the SDK exporters' own WARNING/ERROR records (one per attempt) to DEBUG:
  :mod:`metrics_module.otlp` logs an outage once and its end once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes, _encode_instrumentation_scope
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb2
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from metrics_module.exposition import HistogramValue

__all__ = [
    "AttemptLog", "FamiliesMetricReader", "FamiliesProducer", "HistogramValue", "REASONS", "SeriesAttributes",
    "encode_metrics_fast", "make_exporter", "make_log_exporter", "parse_label_text", "quiet_sdk_exporter_logs",
    "split_metrics_data",
]

log = logging.getLogger("metrics_module.otlp")

#: Failure reasons (label values of the failures counter), all present from the start.
REASONS = ("unavailable", "timeout", "tls", "throttled", "too_large", "rejected", "server_error", "internal")

DEFAULT_MAX_REQUEST_BYTES = 4_000_000  # gRPC servers (the Collector too) refuse messages over 4 MiB by default


# -- label text -------------------------------------------------------------------------------------------------


_UNESCAPE = {"\\": "\\", "n": "\n", '"': '"'}


def parse_label_text(text: str) -> tuple[tuple[str, str], ...]:
    """The pairs of a rendered label set ``{a="1",b="x\\"y"}`` (``""`` → ``()``); the inverse of the exposition's
    rendering. Raises ValueError on malformed text."""
    if not text:
        return ()
    if text[0] != "{" or text[-1] != "}":
        raise ValueError(f"not a label set: {text!r}")
    out = []
    i, n = 1, len(text) - 1
    while i < n:
        eq = text.index("=", i)
        name = text[i:eq]
        if text[eq + 1] != '"':
            raise ValueError(f"label {name!r}: value not quoted in {text!r}")
        j = eq + 2
        chars = []
        while True:
            c = text[j]
            if c == "\\":
                chars.append(_UNESCAPE.get(text[j + 1], "\\" + text[j + 1]))
                j += 2
            elif c == '"':
                break
            else:
                k = j
                while text[k] not in '\\"':
                    k += 1
                chars.append(text[j:k])
                j = k
        out.append((name, "".join(chars)))
        i = j + 1
        if i < n:
            if text[i] != ",":
                raise ValueError(f"expected ',' at {i} in {text!r}")
            i += 1
    return tuple(out)


class SeriesAttributes(dict):
    """A series' attributes (a plain mapping for the SDK) that also caches their OTLP encoding: the bytes of a
    ``NumberDataPoint`` (``_ndp``) / ``HistogramDataPoint`` (``_hdp``) holding only these attributes."""

    __slots__ = ("_ndp", "_hdp")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__(pairs)
        self._ndp: bytes | None = None
        self._hdp: bytes | None = None


def _ndp_bytes(attrs: Any) -> bytes:
    if attrs.__class__ is SeriesAttributes:
        b = attrs._ndp
        if b is None:
            b = attrs._ndp = pb2.NumberDataPoint(attributes=_encode_attributes(attrs)).SerializeToString()
        return b
    return pb2.NumberDataPoint(attributes=_encode_attributes(attrs)).SerializeToString() if attrs else b""


def _hdp_bytes(attrs: Any) -> bytes:
    if attrs.__class__ is SeriesAttributes:
        b = attrs._hdp
        if b is None:
            b = attrs._hdp = pb2.HistogramDataPoint(attributes=_encode_attributes(attrs)).SerializeToString()
        return b
    return pb2.HistogramDataPoint(attributes=_encode_attributes(attrs)).SerializeToString() if attrs else b""


# -- families -> SDK metrics -------------------------------------------------------------------------------------


class FamiliesProducer:
    """``produce(now_ns)`` → the SDK ``Metric`` list of ``families_source()``.

    * ``counter`` → ``Sum`` (monotonic) with the temporality of ``ObservableCounter`` in ``temporality`` (the
      exporter's preference: cumulative unless ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta``);
      ``gauge``/``untyped``/``unknown`` → ``Gauge``; ``histogram`` with :class:`HistogramValue` samples →
      ``Histogram`` (temporality of ``Histogram``); other types are skipped (``skipped``, for a warning).
    * start time of a cumulative point: ``start_time_unix_nano`` for series present at the first collection; the
      previous collection's time for a series first seen later or after a reset (value went down). A delta point
      covers the previous collection to now (its value: the increase; after a reset or for a new series, the value).
    """

    def __init__(self, families_source: Callable[[], Iterable[tuple]], *, start_time_unix_nano: int,
                 temporality: dict[type, AggregationTemporality] | None = None) -> None:
        self.families_source = families_source
        self.start_time_unix_nano = start_time_unix_nano
        temporality = temporality or {}
        self.counter_temporality = temporality.get(ObservableCounter, AggregationTemporality.CUMULATIVE)
        self.histogram_temporality = temporality.get(HistogramInstrument, AggregationTemporality.CUMULATIVE)
        self._series: dict[str, dict[Any, list]] = {}
        self._last_ns: int | None = None
        self.skipped: set[tuple[str, str]] = set()
        self.last_points = 0
        self.last_series = 0

    @staticmethod
    def _attributes(labels: Any) -> SeriesAttributes:
        if labels.__class__ is str:
            labels = parse_label_text(labels)
        return SeriesAttributes((str(k), str(v)) for k, v in labels)

    def produce(self, now_ns: int | None = None) -> list[Metric]:
        now = time.time_ns() if now_ns is None else now_ns
        prev_ns = self._last_ns
        new_start = self.start_time_unix_nano if prev_ns is None else prev_ns
        old = self._series
        new: dict[str, dict[Any, list]] = {}
        out: list[Metric] = []
        points = 0
        for name, mtype, help_text, samples in self.families_source():
            if mtype == "counter":
                kind = Sum
            elif mtype in ("gauge", "untyped", "unknown"):
                kind = Gauge
            elif mtype == "histogram":
                kind = Histogram
            else:
                self.skipped.add((name, mtype))
                continue
            cache_old = old.get(name) or {}
            cache = new.setdefault(name, {})
            dps: list = []
            append = dps.append
            attributes = self._attributes
            if kind is Gauge:
                for labels, value in samples:
                    e = cache_old.get(labels)
                    if e is None:
                        e = [attributes(labels), 0, None]
                    cache[labels] = e
                    append(NumberDataPoint(e[0], 0, now, value))
                if dps:
                    out.append(Metric(name, help_text, "", Gauge(dps)))
            elif kind is Sum:
                delta = self.counter_temporality is AggregationTemporality.DELTA
                for labels, value in samples:
                    e = cache_old.get(labels)
                    if e is None:
                        e = [attributes(labels), new_start, value]
                        last = None
                    else:
                        last = e[2]
                        if value < last:  # a reset: the series starts again
                            e[1] = prev_ns
                            last = None
                        e[2] = value
                    cache[labels] = e
                    if delta:  # from the previous collection (the first: from the start) to now
                        append(NumberDataPoint(e[0], new_start, now, value - last if last is not None else value))
                    else:
                        append(NumberDataPoint(e[0], e[1], now, value))
                if dps:
                    out.append(Metric(name, help_text, "", Sum(dps, self.counter_temporality, True)))
            else:
                delta = self.histogram_temporality is AggregationTemporality.DELTA
                for labels, value in samples:
                    if not isinstance(value, HistogramValue):
                        self.skipped.add((name, "histogram without HistogramValue"))
                        continue
                    e = cache_old.get(labels)
                    if e is None:
                        e = [attributes(labels), new_start, value]
                        last = None
                    else:
                        last = e[2]
                        if value.count < last.count:
                            e[1] = prev_ns
                            last = None
                        e[2] = value
                    cache[labels] = e
                    v = value
                    if delta and last is not None:
                        v = HistogramValue(v.bounds, tuple(a - b for a, b in zip(v.counts, last.counts)),
                                           v.sum - last.sum, v.count - last.count)
                    start = new_start if delta else e[1]
                    append(HistogramDataPoint(e[0], start, now, v.count, v.sum, list(v.counts), list(v.bounds),
                                              None, None))
                if dps:
                    out.append(Metric(name, help_text, "", Histogram(dps, self.histogram_temporality)))
            points += len(dps)
        self._series = new
        self._last_ns = now
        self.last_points = points
        self.last_series = sum(len(c) for c in new.values())
        return out


# -- encoding ----------------------------------------------------------------------------------------------------


class _NotSimple(Exception):
    pass


def encode_metrics_fast(data: MetricsData) -> ExportMetricsServiceRequest:
    """The same ``ExportMetricsServiceRequest`` as the SDK's ``encode_metrics(data)``, with each data point's
    attributes copied from their cached encoding (:class:`SeriesAttributes`). Data it does not handle (exemplars,
    exponential histograms …) goes through ``encode_metrics``."""
    try:
        return _encode_fast(data)
    except _NotSimple:
        return encode_metrics(data)



def _number_points(add: Any, points: Any, attribute_bytes: Any, with_start: bool) -> None:
    """Append Gauge/Sum number data points (attributes from the per-series byte cache); a point with exemplars is
    not the simple case this encoder takes: :class:`_NotSimple` falls back to the SDK's encoder."""
    for dp in points:
        if dp.exemplars:
            raise _NotSimple
        pt = add()
        pt.MergeFromString(attribute_bytes(dp.attributes))
        if with_start:
            pt.start_time_unix_nano = dp.start_time_unix_nano
        pt.time_unix_nano = dp.time_unix_nano
        v = dp.value
        if isinstance(v, int):
            pt.as_int = v
        else:
            pt.as_double = v

def _encode_fast(data: MetricsData) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    by_resource: dict[Any, Any] = {}
    for rm in data.resource_metrics:
        prm = by_resource.get(rm.resource)
        if prm is None:
            prm = by_resource[rm.resource] = req.resource_metrics.add()
            prm.resource.attributes.extend(_encode_attributes(rm.resource.attributes))
            prm.schema_url = rm.resource.schema_url or ""
        for sm in rm.scope_metrics:
            psm = prm.scope_metrics.add()
            psm.scope.CopyFrom(_encode_instrumentation_scope(sm.scope))
            psm.schema_url = sm.scope.schema_url or ""
            for m in sm.metrics:
                pm = psm.metrics.add(name=m.name, description=m.description, unit=m.unit)
                d = m.data
                cls = d.__class__
                if cls is Gauge:
                    _number_points(pm.gauge.data_points.add, d.data_points, _ndp_bytes, with_start=False)
                elif cls is Sum:
                    s = pm.sum
                    s.aggregation_temporality = d.aggregation_temporality
                    s.is_monotonic = d.is_monotonic
                    _number_points(s.data_points.add, d.data_points, _ndp_bytes, with_start=True)
                elif cls is Histogram:
                    h = pm.histogram
                    h.aggregation_temporality = d.aggregation_temporality
                    add = h.data_points.add
                    for dp in d.data_points:
                        if dp.exemplars:
                            raise _NotSimple
                        pt = add()
                        pt.MergeFromString(_hdp_bytes(dp.attributes))
                        pt.time_unix_nano = dp.time_unix_nano
                        pt.start_time_unix_nano = dp.start_time_unix_nano
                        pt.count = dp.count
                        pt.sum = dp.sum
                        pt.bucket_counts.extend(dp.bucket_counts)
                        pt.explicit_bounds.extend(dp.explicit_bounds)
                        if dp.max is not None:
                            pt.max = dp.max
                        if dp.min is not None:
                            pt.min = dp.min
                else:
                    raise _NotSimple
    return req


def _point_bytes(dp: Any) -> int:
    attrs = dp.attributes
    n = len(_hdp_bytes(attrs) if dp.__class__ is HistogramDataPoint else _ndp_bytes(attrs))
    if dp.__class__ is HistogramDataPoint:
        n += 11 * (len(dp.bucket_counts) + len(dp.explicit_bounds))
    return n + 40  # times, value, tags and lengths


def split_metrics_data(data: MetricsData, max_bytes: int) -> list[MetricsData]:
    """``data`` cut into parts whose encoded request stays under ``max_bytes`` (estimated from the cached attribute
    encodings; one metric may span parts)."""
    parts: list[MetricsData] = []
    for rm in data.resource_metrics:
        base = len(encode_metrics(MetricsData([replace(rm, scope_metrics=[])])).SerializeToString()) + 16
        size = base
        scopes: list[ScopeMetrics] = []
        for sm in rm.scope_metrics:
            scope_base = len(sm.scope.name) + len(sm.scope.version or "") + 32
            metrics: list[Metric] = []
            size += scope_base
            for m in sm.metrics:
                head = len(m.name) + len(m.description) + len(m.unit) + 32
                pts = list(m.data.data_points)
                start = 0
                size += head
                for i, dp in enumerate(pts):
                    n = _point_bytes(dp)
                    if size + n > max_bytes and (i > start or metrics or scopes):
                        if i > start:
                            metrics.append(replace(m, data=replace(m.data, data_points=pts[start:i])))
                        if metrics:
                            scopes.append(replace(sm, metrics=metrics))
                        parts.append(MetricsData([replace(rm, scope_metrics=scopes)]))
                        scopes, metrics, start = [], [], i
                        size = base + scope_base + head
                    size += n
                if len(pts) > start:
                    metrics.append(replace(m, data=replace(m.data, data_points=pts[start:]) if start else m.data))
            if metrics:
                scopes.append(replace(sm, metrics=metrics))
        if scopes:
            parts.append(MetricsData([replace(rm, scope_metrics=scopes)]))
    return parts


# -- attempts and their reasons ----------------------------------------------------------------------------------


_GRPC_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.CANCELLED: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "throttled",
    grpc.StatusCode.UNAUTHENTICATED: "rejected",
    grpc.StatusCode.PERMISSION_DENIED: "rejected",
    grpc.StatusCode.INVALID_ARGUMENT: "rejected",
    grpc.StatusCode.NOT_FOUND: "rejected",
    grpc.StatusCode.UNIMPLEMENTED: "rejected",
    grpc.StatusCode.FAILED_PRECONDITION: "rejected",
    grpc.StatusCode.OUT_OF_RANGE: "rejected",
    grpc.StatusCode.ALREADY_EXISTS: "rejected",
}
_TLS_WORDS = ("ssl", "tls", "certificate", "handshake")


def grpc_reason(code: grpc.StatusCode, details: str) -> str:
    low = (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(w in low for w in _TLS_WORDS):
        return "tls"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and ("larger than max" in low or "message too large" in low):
        return "too_large"
    return _GRPC_REASONS.get(code, "server_error")


def http_reason(status: int | None, error: BaseException | None) -> str:
    if status is not None:
        if status == 429:
            return "throttled"
        if status == 413:
            return "too_large"
        if status >= 500:
            return "server_error"
        return "rejected"
    import requests.exceptions as rex

    if isinstance(error, rex.SSLError):
        return "tls"
    if isinstance(error, rex.Timeout):
        return "timeout"
    if isinstance(error, rex.ConnectionError):
        text = str(error).lower()
        if "timed out" in text or "timeout" in text:
            return "timeout"
        if any(w in text for w in _TLS_WORDS):
            return "tls"
        return "unavailable"
    return "internal"


class AttemptLog:
    """What the attempts of the export under way ended with (the SDK exporters retry inside one ``export()`` and
    report only SUCCESS/FAILURE): the reason and message of the last failed attempt, the points the receiver
    rejected (partial success), the bytes sent."""

    def __init__(self, response_cls: Any = ExportMetricsServiceResponse,
                 rejected_field: str = "rejected_data_points") -> None:
        self._lock = threading.Lock()
        self.response_cls = response_cls  # the signal's Export*ServiceResponse (logs: rejected_log_records)
        self.rejected_field = rejected_field
        self.begin()
        self.bytes_sent = 0

    def begin(self) -> None:
        with self._lock:
            self.reason: str | None = None
            self.message = ""
            self.attempts = 0
            self.rejected = 0
            self.rejected_message = ""

    def failed(self, reason: str, message: str) -> None:
        with self._lock:
            self.attempts += 1
            self.reason, self.message = reason, message
        log.debug("OTLP export attempt failed (%s): %s", reason, message)

    def succeeded(self, response_bytes: bytes | None = None, response: Any = None, sent: int = 0) -> None:
        with self._lock:
            self.attempts += 1
            self.reason = None
            self.bytes_sent += sent
            try:
                if response is None and response_bytes:
                    response = self.response_cls.FromString(response_bytes)
                if response is not None and response.HasField("partial_success"):
                    self.rejected += getattr(response.partial_success, self.rejected_field)
                    if response.partial_success.error_message:
                        self.rejected_message = response.partial_success.error_message
            except Exception:  # a receiver answering something else than OTLP: not our business here
                pass


class _Interceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, attempts: AttemptLog) -> None:
        self.attempts = attempts

    def intercept_unary_unary(self, continuation, client_call_details, request):
        outcome = continuation(client_call_details, request)
        try:
            exc = outcome.exception()
        except Exception as e:  # pragma: no cover - defensive
            exc = e
        if exc is None:
            try:
                self.attempts.succeeded(response=outcome.result())
            except Exception:  # pragma: no cover - defensive
                self.attempts.succeeded()
        elif isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            self.attempts.failed(grpc_reason(exc.code(), exc.details()), f"{exc.code().name}: {exc.details()}")
        else:
            self.attempts.failed("internal", repr(exc))
        return outcome


def _session_class():
    import requests

    class ObservedSession(requests.Session):
        attempts: AttemptLog

        def request(self, method, url, *args, **kwargs):  # noqa: D401 - requests API
            data = kwargs.get("data")
            # The exporter sets its CA and client certificate on the session, but requests lets REQUESTS_CA_BUNDLE /
            # CURL_CA_BUNDLE override the session's `verify`: pass them per request so otlp.caFile (or
            # OTEL_EXPORTER_OTLP_CERTIFICATE) is what verifies the collector.
            if kwargs.get("verify") is None:
                kwargs["verify"] = self.verify
            if kwargs.get("cert") is None and self.cert is not None:
                kwargs["cert"] = self.cert
            try:
                response = super().request(method, url, *args, **kwargs)
            except Exception as exc:
                self.attempts.failed(http_reason(None, exc), f"{type(exc).__name__}: {exc}")
                raise
            if 200 <= response.status_code < 400:
                self.attempts.succeeded(response_bytes=response.content,
                                        sent=len(data) if isinstance(data, (bytes, bytearray)) else 0)
            else:
                body = (response.text or "")[:200].strip()
                self.attempts.failed(http_reason(response.status_code, None),
                                     f"HTTP {response.status_code} {response.reason}" + (f": {body}" if body else ""))
            return response

    return ObservedSession


def temporality_map(preference: str) -> dict[type, AggregationTemporality]:
    """The SDK's per-instrument temporality for ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` (the same
    table as the OTLP exporters')."""
    from opentelemetry.sdk.metrics import Counter, ObservableUpDownCounter, UpDownCounter

    c, d = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
    delta = preference == "delta"
    low = preference == "lowmemory"
    return {Counter: d if delta or low else c, UpDownCounter: c, HistogramInstrument: d if delta or low else c,
            ObservableCounter: d if delta else c, ObservableUpDownCounter: c, ObservableGauge: c}



def _grpc_credentials(settings: Any) -> Any:
    """TLS channel credentials for resolved settings (CA, client key and certificate read from their files), or
    None for plaintext."""
    if not settings.tls:
        return None

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(settings.ca_file), read(settings.key_file), read(settings.cert_file))


class _AttemptRecordingChannel:
    """Mixin for the SDK's gRPC exporters (put it first among the bases): after the SDK builds its channel, wrap it
    so every call's outcome lands in the class attribute ``_retina_attempts``."""

    _retina_attempts: AttemptLog

    def _initialize_channel_and_stub(self):
        super()._initialize_channel_and_stub()
        self._channel = grpc.intercept_channel(self._channel, _Interceptor(self._retina_attempts))
        self._client = self._stub(self._channel)


def _grpc_exporter_kwargs(settings: Any, user_agent: str) -> dict[str, Any]:
    """The keyword arguments the SDK's gRPC exporters (metrics and logs alike) take for resolved settings."""
    return dict(
        endpoint=settings.endpoint, insecure=not settings.tls, credentials=_grpc_credentials(settings),
        headers=tuple((k.lower(), v) for k, v in settings.headers.items()), timeout=settings.timeout_s,
        compression=grpc.Compression.Gzip if settings.compression == "gzip" else grpc.Compression.NoCompression,
        channel_options=(("grpc.primary_user_agent", user_agent),))


def _http_exporter_kwargs(settings: Any, attempts: AttemptLog, user_agent: str) -> dict[str, Any]:
    """The keyword arguments the SDK's HTTP exporters (metrics and logs alike) take for resolved settings, with a
    session that records every attempt's outcome in ``attempts``."""
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

    session = _session_class()()
    session.attempts = attempts
    headers = dict(settings.headers)
    if not any(k.lower() == "user-agent" for k in headers):
        headers["User-Agent"] = user_agent
    return dict(
        endpoint=settings.endpoint, certificate_file=settings.ca_file if settings.tls else None,
        client_key_file=settings.key_file, client_certificate_file=settings.cert_file, headers=headers,
        timeout=settings.timeout_s,
        compression=HttpCompression.Gzip if settings.compression == "gzip" else HttpCompression.NoCompression,
        session=session)


def make_exporter(settings: Any, attempts: AttemptLog, *, user_agent: str,
                  temporality: str = "cumulative") -> MetricExporter:
    """The SDK's ``OTLPMetricExporter`` for resolved :class:`~metrics_module._otlp_settings.OtlpSettings`, with every
    attempt's outcome recorded in ``attempts`` and the cached-attribute encoding."""
    preferred = temporality_map(temporality)
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        class RetinaGrpcMetricExporter(_AttemptRecordingChannel, GrpcExporter):
            _retina_attempts = attempts

            def _translate_data(self, data):
                return encode_metrics_fast(data)

        return RetinaGrpcMetricExporter(**_grpc_exporter_kwargs(settings, user_agent),
                                        preferred_temporality=preferred)

    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    class RetinaHttpMetricExporter(HttpExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            batch = getattr(self, "_export_batch", None)
            if self._shutdown or batch is None:
                return super().export(metrics_data, timeout_millis, **kwargs)
            try:
                request = encode_metrics_fast(metrics_data)
            except Exception as exc:
                attempts.failed("internal", f"encoding failed: {exc!r}")
                return MetricExportResult.FAILURE
            return batch(request)

    return RetinaHttpMetricExporter(**_http_exporter_kwargs(settings, attempts, user_agent),
                                    preferred_temporality=preferred)


def make_log_exporter(settings: Any, attempts: AttemptLog, *, user_agent: str) -> Any:
    """The SDK's ``OTLPLogExporter`` for resolved ``logs`` settings, every attempt's outcome recorded in
    ``attempts`` (build ``attempts`` as ``AttemptLog(ExportLogsServiceResponse, "rejected_log_records")``)."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter

        class RetinaGrpcLogExporter(_AttemptRecordingChannel, GrpcLogExporter):
            _retina_attempts = attempts

        return RetinaGrpcLogExporter(**_grpc_exporter_kwargs(settings, user_agent))

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    return HttpLogExporter(**_http_exporter_kwargs(settings, attempts, user_agent))


# -- the reader --------------------------------------------------------------------------------------------------


class FamiliesMetricReader(MetricReader):
    """A pull ``MetricReader`` (register it on the ``MeterProvider``): :meth:`collect_all` returns the SDK's own
    collection (instruments created on the provider, if any) merged with ``producer``'s metrics, under the
    provider's resource and ``scope``; :meth:`export` cuts it into requests and sends them with ``exporter``."""

    def __init__(self, exporter: MetricExporter, producer: FamiliesProducer, *, resource: Any,
                 scope: InstrumentationScope, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation)
        self.exporter = exporter
        self.producer = producer
        self.resource = resource
        self.scope = scope
        self.max_request_bytes = max_request_bytes
        self._received: MetricsData | None = None
        self._lock = threading.Lock()
        self.last_requests = 0

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> None:
        self._received = metrics_data

    def collect_all(self, timeout_millis: float = 10_000) -> MetricsData:
        with self._lock:
            self._received = None
            self.collect(timeout_millis=timeout_millis)  # SDK instruments -> _receive_metrics (None when none)
            sdk, self._received = self._received, None
        ours = self.producer.produce()
        resource_metrics = list(sdk.resource_metrics) if sdk is not None else []
        if ours:
            resource_metrics.append(ResourceMetrics(self.resource, [ScopeMetrics(self.scope, ours, "")],
                                                    self.resource.schema_url))
        return MetricsData(resource_metrics)

    def export(self, data: MetricsData, timeout_millis: float = 10_000) -> tuple[bool, int]:
        """Send ``data`` in requests of bounded size; ``(all succeeded, requests)``. Stops at the first failure
        (the collector is failing: the next export sends current values anyway)."""
        parts = split_metrics_data(data, self.max_request_bytes)
        self.last_requests = len(parts)
        for i, part in enumerate(parts):
            if self.exporter.export(part, timeout_millis=timeout_millis) is not MetricExportResult.SUCCESS:
                return False, i + 1
        return True, len(parts)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis)


# -- SDK logs ----------------------------------------------------------------------------------------------------


SDK_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
    # the flow logs' exporters and the SDK's batch processor ("Exception while exporting Log", "Queue full")
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.sdk._shared_internal",
)


class _DemoteToDebug(logging.Filter):
    """WARNING/ERROR records of the SDK exporters (one per attempt: "Transient error … retrying", "Failed to
    export …") become DEBUG, and are dropped unless DEBUG is enabled for their logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_info if logging.getLogger(record.name).isEnabledFor(logging.DEBUG) else None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = _DemoteToDebug()


def quiet_sdk_exporter_logs(loggers: Iterable[str] = SDK_EXPORTER_LOGGERS) -> None:
    """Install the demoting filter on the SDK exporters' loggers (the metric and log exporters', the batch
    processor's) (idempotent)."""
    for name in loggers:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
