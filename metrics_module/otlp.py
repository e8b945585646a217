"""OTLP push of the metrics module's families on the OpenTelemetry SDK (``docs/otlp.md``).

:class:`OtlpExporter` reads the same families ``/metrics`` renders -- ``families_source()``, e.g.
``MetricsModule.families`` or ``FamilyRegistry.families`` -- every interval in its own thread and pushes them with
the SDK's ``OTLPMetricExporter`` (gRPC or HTTP/protobuf): same metric names, same label sets (as attributes),
counters as monotonic Sums (cumulative; delta with ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``), gauges
as Gauges. The SDK set-up (:mod:`metrics_module._otlp_sdk`):

* one ``Resource`` (:func:`~metrics_module._otlp_settings.build_resource`: the SDK's, ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_SERVICE_NAME``, ours, ``otlp.resourceAttributes``) shared by every provider of this exporter;
* a ``MeterProvider`` with one reader, :class:`~metrics_module._otlp_sdk.FamiliesMetricReader`, which merges the
  module's series (built at collection time from its state: nothing per event) into what the SDK collects;
* the settings of each signal resolved by :func:`~metrics_module._otlp_settings.resolve` (``otlp.*`` keys over
  ``OTEL_EXPORTER_OTLP_<SIGNAL>_*`` over ``OTEL_EXPORTER_OTLP_*`` over defaults).

With ``logs=True`` (``otlp.flowLogs.enabled``) a :class:`OtlpLogPipeline` goes beside the ``MeterProvider``:
``LoggerProvider(resource=self.resource)`` with a ``BatchLogRecordProcessor`` (``OTEL_BLRP_*``) over the SDK's
``OTLPLogExporter`` built from ``resolve("logs", ...)`` (the same keys and variables, signal ``LOGS``), its loggers
quietened like the metric exporter's, shut down (flushed) in :meth:`OtlpExporter.stop`. The flow records reach it
from the assembler (``retina_exporter.flowlogs``), which filters, rate-limits and converts them.

Delivery: the SDK exporter retries transient failures inside one export (backoff 1 s, 2 s, 4 s … within the
timeout); a failed export is counted in ``controlplane_networkobservability_otlp_export_failures_counter{reason}``
with the reason of its last attempt (observed on the gRPC channel / HTTP session), the next export comes at the
next interval with the current values (cumulative data needs no replay). The first failure of an outage is
logged at WARNING and the recovery at INFO; the attempts in between, and the SDK exporters' own per-attempt
records, at DEBUG. Nothing else in the agent waits on the exporter's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from metrics_module._otlp_sdk import (
    DEFAULT_MAX_REQUEST_BYTES,
    REASONS,
    AttemptLog,
    FamiliesMetricReader,
    FamiliesProducer,
    HistogramValue,
    make_exporter,
    make_log_exporter,
    quiet_sdk_exporter_logs,
)
from metrics_module._otlp_settings import (
    COMPRESSIONS,
    PROTOCOLS,
    build_resource,
    check_settings,
    default_endpoint,
    parse_attributes,
    parse_headers,
    resolve,
    resolve_blrp,
    resolve_interval,
    resolve_temporality,
)
from metrics_module.exposition import Family
from retina_core.telemetry import CONTROL_PLANE_PREFIX
from retina_core.version import __version__
from retina_core.worker import Worker

if TYPE_CHECKING:
    from metrics_module.otlpconfig import OtlpConfig

__all__ = [
    "COMPRESSIONS",
    "EXPORTS_COUNTER",
    "FAILURES_COUNTER",
    "HistogramValue",
    "OtlpExporter",
    "OtlpLogPipeline",
    "PROTOCOLS",
    "REASONS",
    "check_settings",
    "default_endpoint",
    "parse_attributes",
    "parse_headers",
]

log = logging.getLogger(__name__)

EXPORTS_COUNTER = CONTROL_PLANE_PREFIX + "otlp_exports_counter"
FAILURES_COUNTER = CONTROL_PLANE_PREFIX + "otlp_export_failures_counter"

SCOPE_NAME = "retina-exporter"
LOG_SCOPE_NAME = "retina-exporter.flowlogs"


class OtlpExporter(Worker):
    """Pushes ``families_source()`` over OTLP every interval from its own thread.

    Every connection argument left None is taken from the ``OTEL_*`` variables (``env``, default ``os.environ``),
    else the default (docs/otlp.md). Raises ValueError for a bad setting (endpoint, protocol, headers, unreadable
    TLS files) at construction. :meth:`start` starts the thread, :meth:`stop` stops it after a last export (when
    the collector was reachable), :meth:`families` yields the exporter's own control-plane counters.
    """

    def __init__(
        self,
        families_source: Callable[[], Iterable[Family]],
        *,
        endpoint: str | None = None,
        protocol: str | None = None,
        interval_s: float | None = None,
        headers: Mapping[str, str] | str | None = None,
        insecure: bool | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout_s: float | None = None,
        compression: str | None = None,
        service_name: str = "retina-exporter",
        service_version: str = __version__,
        host_name: str | None = None,
        node_name: str | None = None,
        cluster_name: str | None = None,
        resource_attributes: Mapping[str, str] | str | None = None,
        start_time_unix_nano: int | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        flush_on_stop: bool = True,
        logs: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.settings = resolve("metrics", endpoint=endpoint, protocol=protocol, headers=headers, insecure=insecure,
                                ca_file=ca_file, cert_file=cert_file, key_file=key_file, compression=compression,
                                timeout_s=timeout_s, env=env)
        self.interval_s, interval_source = resolve_interval(interval_s, env)
        self.settings.sources["interval"] = interval_source
        try:
            self.resource = build_resource(service_name=service_name, service_version=service_version,
                                           host_name=host_name, node_name=node_name, cluster_name=cluster_name,
                                           attributes=resource_attributes)
        except ValueError as exc:
            raise ValueError(f"otlp.resourceAttributes: {exc}") from None
        self.endpoint = self.settings.endpoint
        self.protocol = self.settings.protocol
        self.timeout_s = self.settings.timeout_s
        self.flush_on_stop = flush_on_stop
        self.start_time_unix_nano = start_time_unix_nano if start_time_unix_nano is not None else time.time_ns()

        quiet_sdk_exporter_logs()
        self.attempts = AttemptLog()
        preference, self.settings.sources["temporality"] = resolve_temporality(env)
        self.exporter = make_exporter(self.settings, self.attempts, user_agent=f"retina-exporter/{__version__}",
                                      temporality=preference)
        self.temporality = {cls.__name__: t.name for cls, t in self.exporter._preferred_temporality.items()}
        self.producer = FamiliesProducer(families_source, start_time_unix_nano=self.start_time_unix_nano,
                                         temporality=self.exporter._preferred_temporality)
        self.reader = FamiliesMetricReader(self.exporter, self.producer, resource=self.resource,
                                           scope=InstrumentationScope(SCOPE_NAME, service_version),
                                           max_request_bytes=max_request_bytes)
        # The SDK set-up: one Resource; the MeterProvider (with our reader), and for flow logs a LoggerProvider.
        self.meter_provider = MeterProvider(metric_readers=[self.reader], resource=self.resource,
                                            shutdown_on_exit=False)
        self.logs: OtlpLogPipeline | None = None
        if logs:
            log_settings = resolve("logs", endpoint=endpoint, protocol=protocol, headers=headers, insecure=insecure,
                                   ca_file=ca_file, cert_file=cert_file, key_file=key_file, compression=compression,
                                   timeout_s=timeout_s, env=env)
            self.logs = OtlpLogPipeline(log_settings, self.resource, scope_version=service_version, env=env)
        self.families_source = families_source

        # Counters (read by families(); written by the exporting thread under _export_lock).
        self.exports = 0
        self.failures: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.exported_points = 0
        self.last_success_unix: float | None = None
        self.last_error: str | None = None
        self.last_export_cpu_s: float | None = None
        self.consecutive_failures = 0
        self._outage_since: float | None = None
        self._outage_reasons: dict[str, int] = {}
        self._partial = False
        self._warned_types: set[tuple[str, str]] = set()
        self._shut = False
        self._export_lock = threading.Lock()
        super().__init__("otlp-exporter")

    @classmethod
    def from_config(cls, families_source: Callable[[], Iterable[Family]], config: "OtlpConfig", *,
                    node_name: str | None = None, **kwargs: Any) -> "OtlpExporter":
        """An exporter from the parsed ``otlp`` section (:class:`metrics_module.otlpconfig.OtlpConfig`): the keys
        that are set override the ``OTEL_*`` variables."""
        return cls(families_source, endpoint=config.endpoint or None, protocol=config.protocol,
                   interval_s=config.interval_ns / 1e9 if config.interval_ns is not None else None,
                   timeout_s=config.timeout_ns / 1e9 if config.timeout_ns is not None else None,
                   headers=dict(config.headers), insecure=config.insecure, ca_file=config.ca_file or None,
                   cert_file=config.cert_file or None, key_file=config.key_file or None,
                   compression=config.compression, node_name=node_name,
                   resource_attributes=dict(config.resource_attributes), logs=config.flow_logs_enabled, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the exporting thread (first export one interval from now). No-op when running."""
        if not self.alive() and not self._shut:
            super().start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the thread; it makes a last export first when ``flush_on_stop`` and the collector was not failing
        (in an outage the SDK exporter is shut down first, which ends its retries). Waits at most ``timeout_s``
        (default: twice the export timeout, plus a second); then shuts the SDK providers down."""
        ended = super().stop(timeout_s if timeout_s is not None else 2 * self.timeout_s + 1)
        if not ended:
            log.warning("OTLP exporter thread did not stop in time; abandoning its export")
        self._shutdown_sdk()
        return ended

    def _wake_thread(self) -> None:
        # Stopping while the collector fails (an earlier export, or an attempt of the one under way): shut the SDK
        # exporter down now, which ends its retry waits, rather than waiting for them.
        if self.consecutive_failures or self.attempts.reason is not None:
            self._shutdown_sdk()

    def _shutdown_sdk(self) -> None:
        if self._shut:
            return
        self._shut = True
        try:
            self.meter_provider.shutdown(timeout_millis=1000)
        except Exception:  # pragma: no cover - defensive: stopping must not raise
            log.debug("OTLP: shutting the SDK down failed", exc_info=True)
        if self.logs is not None:
            self.logs.shutdown()

    def _run(self) -> None:
        interval = self.interval_s
        next_tick = time.monotonic() + interval
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            self.export_once()
            now = time.monotonic()
            while next_tick <= now:
                next_tick += interval
        if self.flush_on_stop and self.consecutive_failures == 0 and not self._shut:
            self.export_once()

    # -- one export --------------------------------------------------------------------------------------------

    def export_once(self) -> bool:
        """Collect and export once (in the calling thread); True on success. Counts and logs like the thread
        does. Concurrent calls are serialised."""
        with self._export_lock:
            cpu0 = time.thread_time()
            self.attempts.begin()
            try:
                data = self.reader.collect_all()
            except Exception as exc:  # a bug in a source or in the bridge: keep the thread alive
                self._failed("internal", f"collecting the metric families failed: {exc!r}", exc_info=True)
                return False
            self._warn_skipped()
            try:
                ok, requests = self.reader.export(data, timeout_millis=self.timeout_s * 1000)
            except Exception as exc:
                self._failed("internal", f"exporting failed: {exc!r}", exc_info=True)
                return False
            finally:
                self.last_export_cpu_s = time.thread_time() - cpu0
            if ok:
                self._succeeded(requests)
            else:
                self._failed(self.attempts.reason or "internal",
                             self.attempts.message or "the SDK exporter reported a failure (see DEBUG logs)")
            return ok

    def _succeeded(self, requests: int) -> None:
        self.exports += 1
        points = self.producer.last_points
        self.exported_points += points
        self.last_success_unix = time.time()
        if self._outage_since is not None:
            took = time.monotonic() - self._outage_since
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self._outage_reasons.items()))
            log.info("OTLP export to %s resumed after %d failed exports over %.1fs (%s)",
                     self.endpoint, self.consecutive_failures, took, reasons)
        elif self.exports == 1:
            log.info("OTLP export to %s: first export sent (%d data points, %d requests)",
                     self.endpoint, points, requests)
        self._outage_since = None
        self._outage_reasons = {}
        self.consecutive_failures = 0
        self.last_error = None
        rejected = self.attempts.rejected
        if rejected and not self._partial:
            log.warning("OTLP receiver %s rejected %d of %d data points: %s (logged again when this changes)",
                        self.endpoint, rejected, points, self.attempts.rejected_message)
        elif not rejected and self._partial:
            log.info("OTLP receiver %s accepts all data points again", self.endpoint)
        self._partial = bool(rejected)

    def _failed(self, reason: str, message: str, exc_info: bool = False) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.consecutive_failures += 1
        self.last_error = f"{reason}: {message}"
        self._outage_reasons[reason] = self._outage_reasons.get(reason, 0) + 1
        if self._stop.is_set():  # an export cut short by stop() (the SDK exporter was shut down): not an outage
            log.debug("OTLP export to %s ended by stop (%s): %s", self.endpoint, reason, message)
        elif self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("OTLP export to %s failed (%s): %s; exporting again every %gs, logging again when exports "
                        "resume", self.endpoint, reason, message, self.interval_s, exc_info=exc_info)
        else:
            log.debug("OTLP export to %s failed again (%s, export %d of the outage): %s", self.endpoint, reason,
                      self.consecutive_failures, message, exc_info=exc_info)

    def _warn_skipped(self) -> None:
        new = self.producer.skipped - self._warned_types
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
            (FAILURES_COUNTER, "counter", "Number of failed OTLP metric exports, by reason",
             [((("reason", r),), n) for r, n in list(self.failures.items())]),
        ]

    def status(self) -> dict[str, Any]:
        """A JSON-able summary (for a debug endpoint)."""
        return {
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "interval_s": self.interval_s,
            "running": self.alive(),
            "exports": self.exports,
            "failures": {r: n for r, n in self.failures.items() if n},
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_success_unix": self.last_success_unix,
            "exported_points": self.exported_points,
            "last_export_points": self.producer.last_points,
            "last_export_requests": self.reader.last_requests,
            "last_export_cpu_s": self.last_export_cpu_s,
            "series_tracked": self.producer.last_series,
            "bytes_sent": self.attempts.bytes_sent if self.protocol != "grpc" else None,  # HTTP: after compression
            "temporality": self.temporality,
            "settings": self.settings.summary(),
            "resource": {k: v for k, v in self.resource.attributes.items()},
        }


# -- flow logs -----------------------------------------------------------------------------------------------------


class _CountingLogExporter:
    """The ``LogRecordExporter`` the batch processor calls: delegates to the SDK's ``OTLPLogExporter`` and counts
    what each batch ended with (records sent or failed, the reason of the last attempt); logs an outage once and
    its end once, like the metric exports."""

    def __init__(self, inner: Any, pipeline: "OtlpLogPipeline") -> None:
        self.inner = inner
        self.pipeline = pipeline
        self._shut = False

    def export(self, batch: Any) -> Any:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        p = self.pipeline
        attempts = p.attempts
        attempts.begin()
        try:
            result = self.inner.export(batch)
        except Exception as exc:  # the processor would log it; count it here instead
            attempts.failed("internal", f"exporting failed: {exc!r}")
            result = LogRecordExportResult.FAILURE
        p._exported(len(batch), result is LogRecordExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._shut:
            return
        self._shut = True
        try:
            if self.pipeline.settings.protocol == "grpc":
                self.inner.shutdown(timeout_millis=timeout_millis)
            else:
                self.inner.shutdown()
        except Exception:  # pragma: no cover - defensive: stopping must not raise
            log.debug("OTLP logs: shutting the exporter down failed", exc_info=True)


class OtlpLogPipeline:
    """The SDK's logs pipeline for the flow logs: a ``LoggerProvider`` on ``resource`` with one
    ``BatchLogRecordProcessor`` (``OTEL_BLRP_*``: :func:`~metrics_module._otlp_settings.resolve_blrp`) over the SDK's
    ``OTLPLogExporter`` (gRPC or HTTP/protobuf, from resolved ``logs`` settings).

    :meth:`emit` hands one record to the SDK (never blocks: the processor's queue is a bounded deque its own thread
    drains). :meth:`room` is how many more records the queue takes now: the SDK drops the *oldest* record of a full
    queue without telling its caller, so the flow-log worker checks first and counts what does not fit as
    ``queue_full`` (it is the only producer, so a positive answer stays true). ``sent``/``failed``: records in
    batches the collector accepted / that failed after the exporter's retries (``failures`` by reason, the same
    reasons as the metric exports).
    """

    def __init__(self, settings: Any, resource: Any, *, scope_version: str = __version__,
                 env: Mapping[str, str] | None = None) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        self.settings = settings
        self.endpoint = settings.endpoint
        self.batch, batch_sources = resolve_blrp(env)
        settings.sources.update({f"blrp.{k}": v for k, v in batch_sources.items()})
        quiet_sdk_exporter_logs()
        self.attempts = AttemptLog(ExportLogsServiceResponse, "rejected_log_records")
        self.exporter = make_log_exporter(settings, self.attempts, user_agent=f"retina-exporter/{__version__}")
        self._counting = _CountingLogExporter(self.exporter, self)
        self.processor = BatchLogRecordProcessor(self._counting, **self.batch)
        self.provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_log_record_processor(self.processor)
        self.logger = self.provider.get_logger(LOG_SCOPE_NAME, scope_version)
        self.queue_capacity = self.batch["max_queue_size"]
        batcher = getattr(self.processor, "_batch_processor", None)
        queue = getattr(batcher, "_queue", None)
        #: The processor's queue when this SDK version lets us see it (a deque); else None: ``room`` cannot know.
        self.queue = queue if hasattr(queue, "__len__") else None
        self.sent = 0
        self.failed = 0
        self.rejected = 0
        self.exports = 0
        self.failures: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._outage_since: float | None = None
        self._lock = threading.Lock()
        self._shut = False

    @property
    def queue_observable(self) -> bool:
        return self.queue is not None

    def room(self) -> int:
        """Records the processor's queue takes now without dropping one (a large number when it cannot be seen)."""
        q = self.queue
        if q is None:
            return 1 << 30
        return self.queue_capacity - len(q)

    def queued(self) -> int | None:
        q = self.queue
        return len(q) if q is not None else None

    def emit(self, timestamp_ns: int, observed_ns: int, severity: Any, severity_text: str, body: str,
             attributes: Mapping[str, Any], event_name: str | None = None) -> None:
        """One log record to the SDK (``Logger.emit``; the processor queues it)."""
        self.logger.emit(timestamp=timestamp_ns, observed_timestamp=observed_ns, severity_number=severity,
                         severity_text=severity_text, body=body, attributes=attributes, event_name=event_name)

    def _exported(self, n: int, ok: bool) -> None:
        with self._lock:
            self.exports += 1
            if ok:
                self.sent += n
                self.rejected += self.attempts.rejected
                if self._outage_since is not None:
                    log.info("OTLP flow logs to %s resumed after %d failed exports over %.1fs", self.endpoint,
                             self.consecutive_failures, time.monotonic() - self._outage_since)
                elif self.sent == n:
                    log.info("OTLP flow logs to %s: first batch sent (%d records)", self.endpoint, n)
                self._outage_since = None
                self.consecutive_failures = 0
                self.last_error = None
                return
            reason = self.attempts.reason or "internal"
            message = self.attempts.message or "the SDK exporter reported a failure (see DEBUG logs)"
            self.failed += n
            self.failures[reason] = self.failures.get(reason, 0) + 1
            self.consecutive_failures += 1
            self.last_error = f"{reason}: {message}"
            if self._shut:
                log.debug("OTLP flow logs to %s: export ended by stop (%s): %s", self.endpoint, reason, message)
            elif self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("OTLP flow logs to %s failed (%s): %s; %d records lost, logging again when exports "
                            "resume", self.endpoint, reason, message, n)
            else:
                log.debug("OTLP flow logs to %s failed again (%s): %s", self.endpoint, reason, message)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Flush what is queued (within ``timeout_s``, default the export timeout plus a second) and shut the
        pipeline down. In an outage the exporter is shut down first, which ends its retries: the rest fails fast
        (counted as failed). Idempotent."""
        if self._shut:
            return
        self._shut = True
        timeout_s = self.settings.timeout_s + 1 if timeout_s is None else timeout_s
        try:
            if self.consecutive_failures:
                self._counting.shutdown()
            batcher = getattr(self.processor, "_batch_processor", None)
            if batcher is not None and hasattr(batcher, "shutdown"):
                batcher.shutdown(timeout_millis=timeout_s * 1000)  # the processor's own shutdown waits 30 s
            self.provider.shutdown()
        except Exception:  # pragma: no cover - defensive: stopping must not raise
            log.debug("OTLP logs: shutting the SDK down failed", exc_info=True)

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "protocol": self.settings.protocol,
            "sent": self.sent,
            "failed": self.failed,
            "rejected_by_receiver": self.rejected,
            "exports": self.exports,
            "failures": {r: n for r, n in self.failures.items() if n},
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "queued": self.queued(),
            "queue_capacity": self.queue_capacity,
            "batch": dict(self.batch),
            "bytes_sent": self.attempts.bytes_sent if self.settings.protocol != "grpc" else None,
            "settings": self.settings.summary(),
        }
