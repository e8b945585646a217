"""Flow logs over OTLP (``otlp.flowLogs.*``, docs/otlp.md "Flow logs"): enriched flow records from the output ring
go out as OTLP log records through the SDK's logs pipeline (:class:`metrics_module.OtlpLogPipeline`:
``LoggerProvider`` → ``BatchLogRecordProcessor`` → ``OTLPLogExporter``).

:class:`FlowLogExporter` is a worker with its own reader on the output ring (from *now*), so it never slows the
ring's writer or the other readers. Per record, in this order:

1. a :class:`~retina_core.ring.LostMarker` (this reader was overtaken): its records are counted as dropped
   ``ring_overrun``;
2. ``otlp.flowLogs.allowList`` / ``denyList``: Hubble ``FlowFilter`` lists evaluated on the record by the Hubble
   layer's own filter code (:class:`~retina_exporter.hubble.filters.FlowMatcher`); a record they exclude is only
   counted (``filtered``, in ``/debug/otlp``);
3. ``otlp.flowLogs.maxPerSecond``: a token bucket (one second of burst; 0 = unlimited); over the limit → dropped
   ``rate_limited``;
4. the SDK processor's bounded queue (``OTEL_BLRP_MAX_QUEUE_SIZE``): when it is full (a slow or absent collector)
   the record is dropped ``queue_full`` before it is converted (the SDK would drop its oldest record silently);
5. conversion (:func:`flow_log`: body = Hubble's ``Summary``, attributes below) and ``Logger.emit``, which only
   appends to that queue: the SDK's thread batches and exports.

Records in batches the exporter could not deliver (after its retries) are counted as dropped ``export_failed``;
delivered ones as sent. Counters: ``controlplane_networkobservability_otlp_flow_logs_sent_counter`` and
``controlplane_networkobservability_otlp_flow_logs_dropped_counter{reason}``.

Attributes: OpenTelemetry semantic-convention names where they exist, ``retina.*`` for the rest. The source and
destination endpoints' Kubernetes names are the semantic-convention names prefixed with ``source.`` /
``destination.`` (``source.k8s.pod.name``); the unprefixed ``k8s.namespace.name`` / ``k8s.pod.name`` /
``k8s.<workload>.name`` name the pod on this node's side of the observation point (the source at FROM_ENDPOINT and
TO_NETWORK, the destination at TO_ENDPOINT and FROM_NETWORK), when that endpoint is a pod.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from retina_core.addr import ip_text_cached
from retina_core.convert import dns_summary, flow_verdict, icmp_type_code_name, tcp_flags_summary
from retina_core.dns.names import rcode_name
from retina_core.record import (
    DIRECTION_LABELS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    OBS_FROM_ENDPOINT,
    OBS_FROM_NETWORK,
    OBS_NAMES,
    OBS_TO_ENDPOINT,
    OBS_TO_NETWORK,
    REPORT_REASONS,
    VERDICT_DROPPED,
    FlowRecord,
)
from retina_core.ring import LostMarker, Ring
from retina_core.telemetry import CONTROL_PLANE_PREFIX
from retina_core.worker import Worker

__all__ = [
    "DROP_REASONS", "DROPPED_COUNTER", "EVENT_NAME", "FlowLogExporter", "SENT_COUNTER", "TokenBucket",
    "compile_matcher", "flow_log",
]

log = logging.getLogger(__name__)

SENT_COUNTER = CONTROL_PLANE_PREFIX + "otlp_flow_logs_sent_counter"
DROPPED_COUNTER = CONTROL_PLANE_PREFIX + "otlp_flow_logs_dropped_counter"
#: Label values of the dropped counter, all present from the start.
DROP_REASONS = ("ring_overrun", "rate_limited", "queue_full", "export_failed")
EVENT_NAME = "retina.flow"

# -- record -> (body, attributes) -----------------------------------------------------------------------------------

_TRANSPORT = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp", IPPROTO_ICMPV6: "icmp"}
_VERDICT_NAMES = {0: "VERDICT_UNKNOWN", 1: "FORWARDED", 2: "DROPPED", 3: "ERROR", 4: "AUDIT", 5: "REDIRECTED",
                  6: "TRACED", 7: "TRANSLATED", 15: "RETRANSMISSION"}
# Workload kinds with a semantic-convention attribute (k8s.<kind>.name).
_SEMCONV_WORKLOADS = {"Deployment": "deployment", "StatefulSet": "statefulset", "DaemonSet": "daemonset",
                      "ReplicaSet": "replicaset", "Job": "job", "CronJob": "cronjob"}
# Observation point -> which endpoint is on this node's side of it ("source" / "destination").
_LOCAL_SIDE = {OBS_FROM_ENDPOINT: 0, OBS_TO_NETWORK: 0, OBS_TO_ENDPOINT: 1, OBS_FROM_NETWORK: 1}

try:  # the SDK's enum (severity_number); plain numbers would be encoded as None by the SDK's encoder
    from opentelemetry._logs import SeverityNumber

    SEVERITY_INFO, SEVERITY_WARN = SeverityNumber.INFO, SeverityNumber.WARN
except ImportError:  # pragma: no cover - the SDK is a dependency
    SEVERITY_INFO, SEVERITY_WARN = 9, 13


def _endpoint_items(ident: Any, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(prefixed, local)`` attributes of an identity: ``source.k8s.pod.name`` … and, for a pod, the unprefixed
    ``k8s.*`` ones used when it is the local endpoint."""
    out: dict[str, Any] = {}
    local: dict[str, Any] = {}
    kind = getattr(ident, "kind", "") or ""
    if kind:
        out[f"retina.{prefix}.kind"] = kind
    identity = getattr(ident, "identity", 0)
    if identity:
        out[f"retina.{prefix}.identity"] = identity
    namespace = getattr(ident, "namespace", "") or ""
    if namespace:
        out[f"{prefix}.k8s.namespace.name"] = namespace
    pod = getattr(ident, "pod_name", "") or ""
    if pod:
        out[f"{prefix}.k8s.pod.name"] = pod
    workloads = getattr(ident, "workloads", None) or ()
    if workloads:
        wkind, wname = workloads[0]
        out[f"{prefix}.k8s.workload.kind"] = wkind
        out[f"{prefix}.k8s.workload.name"] = wname
        semconv = _SEMCONV_WORKLOADS.get(wkind)
        if semconv:
            out[f"{prefix}.k8s.{semconv}.name"] = wname
            if kind == "pod":
                local[f"k8s.{semconv}.name"] = wname
    service = getattr(ident, "service", "") or ""
    if service:
        out[f"{prefix}.k8s.service.name"] = service
    node = getattr(ident, "node_name", "") or ""
    if node:
        out[f"{prefix}.k8s.node.name"] = node
    if kind == "pod":
        if namespace:
            local["k8s.namespace.name"] = namespace
        if pod:
            local["k8s.pod.name"] = pod
    return out, local


class _EndpointCache:
    """Identity objects are shared and immutable (one per address in the enricher's cache): their attributes are
    built once per object. Keyed by ``id()``, holding the object so the id cannot be reused; cleared past
    ``max_entries``."""

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int = 8192) -> None:
        self._entries: dict[tuple[int, int], tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        self.max_entries = max_entries

    def get(self, ident: Any, side: int) -> tuple[dict[str, Any], dict[str, Any]]:
        key = (id(ident), side)
        e = self._entries.get(key)
        if e is None or e[0] is not ident:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            prefixed, local = _endpoint_items(ident, "source" if side == 0 else "destination")
            e = self._entries[key] = (ident, prefixed, local)
        return e[1], e[2]


_DEFAULT_CACHE = _EndpointCache()


def summary(rec: FlowRecord) -> str:
    """Hubble's ``Flow.Summary`` of the record (what :func:`retina_core.convert.to_proto` writes)."""
    if rec.l7 is not None:
        return dns_summary(rec.l7)
    proto = rec.proto
    if proto == IPPROTO_TCP:
        return tcp_flags_summary(rec.tcp_flags)
    if proto == IPPROTO_UDP:
        return "UDP"
    if proto == IPPROTO_ICMP:
        return "ICMPv4 " + icmp_type_code_name(rec.icmp_type, rec.icmp_code, v6=False)
    if proto == IPPROTO_ICMPV6:
        return "ICMPv6 " + icmp_type_code_name(rec.icmp_type, rec.icmp_code, v6=True)
    return "IPv6" if rec.ip_version == 6 or len(rec.src_ip) == 16 else "IPv4"


def flow_log(rec: FlowRecord, node_name: str = "", cache: _EndpointCache = _DEFAULT_CACHE
             ) -> tuple[str, dict[str, Any], Any, str]:
    """``(body, attributes, severity_number, severity_text)`` of one flow record (table in docs/otlp.md)."""
    v6 = rec.ip_version == 6 or len(rec.src_ip) == 16
    proto = rec.proto
    verdict = flow_verdict(rec)
    attrs: dict[str, Any] = {
        "source.address": ip_text_cached(rec.src_ip),
        "destination.address": ip_text_cached(rec.dst_ip),
        "network.type": "ipv6" if v6 else "ipv4",
        "network.transport": _TRANSPORT.get(proto) or str(proto),
    }
    if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
        attrs["source.port"] = rec.src_port
        attrs["destination.port"] = rec.dst_port
    elif proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6:
        attrs["retina.icmp.type"] = rec.icmp_type
        attrs["retina.icmp.code"] = rec.icmp_code
    node = rec.node_name or node_name
    if node:
        attrs["k8s.node.name"] = node
    attrs["retina.verdict"] = _VERDICT_NAMES.get(verdict) or str(verdict)
    dropped = rec.verdict == VERDICT_DROPPED
    if dropped:
        attrs["retina.drop_reason"] = rec.drop_reason_name or "UNKNOWN"
    attrs["retina.direction"] = DIRECTION_LABELS[rec.direction] if 0 <= rec.direction < 3 else "unknown"
    obs = rec.obs_point
    attrs["retina.observation_point"] = OBS_NAMES[obs] if 0 <= obs < 4 else str(obs)
    attrs["retina.packets"] = rec.packets
    attrs["retina.bytes"] = rec.bytes
    if rec.is_reply is not None:
        attrs["retina.is_reply"] = bool(rec.is_reply)
    if rec.ifname:
        attrs["retina.interface.name"] = rec.ifname
    reason = rec.report_reason
    attrs["retina.report_reason"] = REPORT_REASONS[reason] if 0 <= reason < len(REPORT_REASONS) else str(reason)
    local_side = _LOCAL_SIDE.get(obs)
    src, dst = rec.source, rec.destination
    if src is not None:
        prefixed, local = cache.get(src, 0)
        attrs.update(prefixed)
        if local_side == 0 and local:
            attrs.update(local)
    if dst is not None:
        prefixed, local = cache.get(dst, 1)
        attrs.update(prefixed)
        if local_side == 1 and local:
            attrs.update(local)
    dns = rec.l7
    if dns is not None:
        attrs["network.protocol.name"] = "dns"
        attrs["dns.question.name"] = dns.query
        attrs["retina.dns.type"] = "response" if dns.qr else "query"
        if dns.qtypes:
            attrs["retina.dns.qtypes"] = list(dns.qtypes)
        if dns.qr:
            attrs["retina.dns.rcode"] = rcode_name(dns.rcode)
            if dns.ips:
                attrs["retina.dns.answers"] = list(dns.ips)
    if dropped:
        return summary(rec), attrs, SEVERITY_WARN, "WARN"
    return summary(rec), attrs, SEVERITY_INFO, "INFO"


# -- filters and the rate limit -------------------------------------------------------------------------------------


def compile_matcher(allow_list: tuple[str, ...] | list[str], deny_list: tuple[str, ...] | list[str],
                    key_prefix: str = "otlp.flowLogs") -> Any:
    """A :class:`~retina_exporter.hubble.filters.FlowMatcher` from the config's protojson FlowFilter texts; raises
    ValueError naming the key and item (``otlp.flowLogs.allowList: item 0: source_ip: …``)."""
    from retina_core.settings import flow_filters
    from retina_exporter.hubble.filters import FilterError, FlowMatcher, compile_filter

    lists = []
    for name, texts in (("allowList", allow_list), ("denyList", deny_list)):
        filters = flow_filters(texts)
        for i, ff in enumerate(filters):
            try:
                compile_filter(ff)
            except FilterError as exc:
                raise ValueError(f"{key_prefix}.{name}: item {i}: {exc}") from None
        lists.append(filters)
    return FlowMatcher(lists[0], lists[1])


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` (default ``rate``: one second) saved up; ``clock`` in seconds
    (injectable for tests). ``rate`` 0: unlimited."""

    __slots__ = ("rate", "burst", "tokens", "last", "clock")

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1))
        self.tokens = self.burst
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        if not self.rate:
            return True
        now = self.clock()
        tokens = self.tokens + (now - self.last) * self.rate
        self.last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


# -- the worker ------------------------------------------------------------------------------------------------------


class FlowLogExporter(Worker):
    """Follows ``ring`` from now on and hands the records that pass the lists and the rate limit to ``pipeline``
    (a :class:`metrics_module.OtlpLogPipeline`, or anything with its ``emit``/``room``/``sent``/``failed``).

    ``matcher``: a FlowMatcher (default: from ``allow_list``/``deny_list``, protojson texts); ``max_per_second`` 0 =
    unlimited; ``clock`` (seconds) for the token bucket and ``time_ns`` for the observed timestamp are injectable.
    """

    def __init__(self, ring: Ring, pipeline: Any, *, node_name: str = "", allow_list: tuple[str, ...] = (),
                 deny_list: tuple[str, ...] = (), max_per_second: int = 0, matcher: Any = None,
                 batch_size: int = 512, clock: Callable[[], float] = time.monotonic,
                 time_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__("otlp-flow-logs")
        self.ring = ring
        self.pipeline = pipeline
        self.node_name = node_name
        self.matcher = matcher if matcher is not None else compile_matcher(allow_list, deny_list)
        self.max_per_second = max_per_second
        self.bucket = TokenBucket(max_per_second, clock=clock) if max_per_second else None
        self.batch_size = batch_size
        self.time_ns = time_ns
        self.cache = _EndpointCache()
        self._reader = ring.reader("now")
        self.seen = 0  # flow records read
        self.filtered = 0  # excluded by the allow/deny lists
        self.emitted = 0  # handed to the SDK
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.busy_s = 0.0  # thread CPU time spent in process()

    @classmethod
    def from_config(cls, cfg: Any, ring: Ring, pipeline: Any, node_name: str = "", **kwargs: Any
                    ) -> "FlowLogExporter":
        """From the ``otlp`` section (:class:`metrics_module.OtlpConfig`). Raises ValueError naming the key for a
        filter the Hubble filter code refuses."""
        return cls(ring, pipeline, node_name=node_name, allow_list=cfg.flow_logs_allow_list,
                   deny_list=cfg.flow_logs_deny_list, max_per_second=cfg.flow_logs_max_per_second, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.process(self._reader.next_batch(self.batch_size, timeout_s=0.5))
        self.process(self._reader.next_batch(1 << 20, timeout_s=0))  # what was written before stop

    def _wake_thread(self) -> None:
        self.ring.notify_all()

    # -- one batch ------------------------------------------------------------------------------------------------

    def process(self, batch: list) -> None:
        """Filter, rate-limit and emit the records of ``batch`` (in the calling thread; tests call it directly)."""
        if not batch:
            return
        cpu0 = time.thread_time()
        match = self.matcher.match
        bucket = self.bucket
        pipeline = self.pipeline
        emit = pipeline.emit
        node = self.node_name
        cache = self.cache
        dropped = self.dropped
        room = pipeline.room()
        now_ns = self.time_ns()
        seen = filtered = emitted = limited = full = 0
        for rec in batch:
            if rec.__class__ is not FlowRecord:
                if rec.__class__ is LostMarker:
                    dropped["ring_overrun"] += rec.count
                continue
            seen += 1
            if not match(rec):
                filtered += 1
                continue
            if bucket is not None and not bucket.take():
                limited += 1
                continue
            if room <= 0:
                room = pipeline.room()  # the SDK's thread may have drained it meanwhile
                if room <= 0:
                    full += 1
                    continue
            body, attrs, severity, severity_text = flow_log(rec, node, cache)
            emit(rec.time_ns, now_ns, severity, severity_text, body, attrs, EVENT_NAME)
            room -= 1
            emitted += 1
        self.seen += seen
        self.filtered += filtered
        self.emitted += emitted
        dropped["rate_limited"] += limited
        dropped["queue_full"] += full
        self.busy_s += time.thread_time() - cpu0

    # -- introspection --------------------------------------------------------------------------------------------

    def families(self) -> list[tuple]:
        """The flow logs' control-plane counters, for the agent's registry."""
        dropped = dict(self.dropped)
        dropped["export_failed"] = getattr(self.pipeline, "failed", 0)
        return [
            (SENT_COUNTER, "counter", "Flow records sent as OTLP log records (in batches the receiver accepted)",
             [((), getattr(self.pipeline, "sent", 0))]),
            (DROPPED_COUNTER, "counter", "Flow records not sent as OTLP log records, by reason",
             [((("reason", r),), dropped[r]) for r in DROP_REASONS]),
        ]

    def status(self) -> dict[str, Any]:
        pipeline_status = self.pipeline.status() if hasattr(self.pipeline, "status") else {}
        return {
            "enabled": True,
            "running": self.alive(),
            "max_per_second": self.max_per_second,
            "filters": not self.matcher.is_empty,
            "seen": self.seen,
            "filtered": self.filtered,
            "emitted": self.emitted,
            "sent": getattr(self.pipeline, "sent", 0),
            "dropped": {**self.dropped, "export_failed": getattr(self.pipeline, "failed", 0)},
            "lag": self._reader.lag,
            "cpu_s": round(self.busy_s, 3),
            "pipeline": pipeline_status,
        }
