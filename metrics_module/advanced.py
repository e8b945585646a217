"""Advanced (pod-level) metrics: ``networkobservability_adv_*`` series built from enriched flow records.

Which metrics exist, and their labels, come from the MetricsConfiguration (:mod:`retina_core.metricsconfig`).

Label order (as Retina): the metric's fixed labels (``direction``; ``flag``; ``reason``, ``direction`` …), then
the context labels in the fixed order ``ip``, ``namespace``, ``podname``, ``workload_kind``, ``workload_name``,
``service``, ``port``, ``zone``, then our ``podLabelKeys`` labels (``label_<sanitised key>``), for the source side
then the destination side; ``is_reply`` comes last (forward metrics). ``workload`` is the pod's *top* owner (a
Deployment rather than its ReplicaSet). A missing endpoint, or a value the endpoint does not have, is
``"unknown"``; a pod that lacks one of the ``podLabelKeys`` gets ``""`` for it.

Counting rule (where each packet is counted; ``obs_point`` of the record)
-------------------------------------------------------------------------
Forwarded-packet metrics (adv_forward_count/bytes, adv_tcpflags_count) see each packet up to twice on a node
(at the sender's veth and at the receiver's veth or a host interface), so they count it at one chosen point:

* **Local context** (``remoteContext: false``; labels unprefixed, one pod per series): a packet counts
  ``direction="egress"`` for its source pod only at FROM_ENDPOINT (the source pod's own veth), and
  ``direction="ingress"`` for its destination pod only at TO_ENDPOINT (the destination pod's own veth). Records at
  FROM_NETWORK / TO_NETWORK add nothing. So each packet counts once per series, and a pod's egress / ingress equal
  its veth's rx / tx counters.
* **Remote context** (``source_``/``destination_`` labels, ``direction`` = INGRESS / EGRESS /
  TRAFFIC_DIRECTION_UNKNOWN, the connection initiator's direction): a packet counts once, at its first
  observation point on this node: FROM_ENDPOINT or FROM_NETWORK; TO_ENDPOINT only when the packet cannot have
  been seen earlier on this node, i.e. its source is not a pod on this node (``kind != "pod"`` or another
  ``node_name``) and no host interface is observed -- or its source is this node's host itself (``kind ==
  "host"``: locally generated packets never cross a host interface's ingress). TO_NETWORK never counts. A record
  counts only if at least one side is a pod in an admitted namespace.

Drops, retransmissions and DNS records are single observations: every record counts (local context: once for
the source pod as egress and once for the destination pod as ingress, as in Retina; DNS: one side, as Retina).

Values: forward/drop counts add ``rec.packets`` and bytes add ``rec.bytes`` (both already include the packets
the kernel accumulated before reporting). adv_tcpflags_count adds per-flag packet counts from
``rec.flag_counts``, classified as Retina's ``tcpflags.go`` classifies a packet's flags: a packet with SYN and ACK
counts only as ``SYNACK`` (not as ``SYN`` nor ``ACK``); ``SYN`` counts SYN packets without ACK and ``ACK`` ACK
packets without SYN. (Retina itself applies this only to the reported packet; its previously observed counts
count a SYN-ACK as SYN and ACK. We classify every packet the same way.)

Hot path
--------
Per record, one tuple key of small values (observation point, ``id()`` of the identity objects, and -- only when
some metric needs them -- addresses, ports, ``is_reply``, drop reason) is looked up in a per-verdict dict of
*plans*. A plan holds the series entries (``[value, last_update]`` lists) this kind of record
updates, so a hit costs one dict lookup and one ``+=`` per series; label tuples, string formatting, the
namespace filter and the counting rule run only on a miss. Plans keep their identity objects and are checked with
``is`` (``id()`` reuse safe). Plans are dropped when series are removed (TTL sweep, reload) and when the plan
cache outgrows :data:`PLAN_CACHE_MAX`.

Series lifetime: ``ttl`` per contextOption (series not updated within it are removed by :meth:`sweep`, counted
in ``controlplane_networkobservability_expired_metrics_counter{metric}``); at most ``maxSeriesPerMetric`` series
per metric (updates that would create more are dropped and counted in
``controlplane_networkobservability_metrics_series_overflow_counter{metric}``; existing series keep counting).
Series of a pod that left the IP cache go ``podDeletionGrace`` later (:meth:`pods_left`,
:mod:`metrics_module.departures`). Our own families: :mod:`metrics_module.dnslatency` (adv_dns_latency_seconds,
adv_dns_unanswered_queries) and :mod:`metrics_module.interzone` (adv_interzone_*).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from retina_core.metricsconfig import (
    KIND_DNS,
    KIND_DNS_LATENCY,
    KIND_DROP,
    KIND_FORWARD,
    KIND_INTERZONE,
    KIND_TCPFLAGS,
    KIND_TCPRETRANS,
    KIND_TCP_CONNECT,
    KIND_TCP_FAILED,
    KIND_TCP_RTT,
    ContextOption,
    MetricsConfiguration,
    family_names,
    sanitize_pod_label_key,
)
from metrics_module.departures import departed_series
from metrics_module.dnslatency import DnsLatencyMetrics
from metrics_module.exposition import escape_label_value
from metrics_module.interzone import InterzoneMetrics
from retina_core.dns.latency import DEFAULT_BUCKETS_S
from retina_core.addr import ip_text_cached
from retina_core.record import (
    DIR_EGRESS,
    DIR_INGRESS,
    OBS_FROM_ENDPOINT,
    OBS_FROM_NETWORK,
    OBS_TO_ENDPOINT,
    VERDICT_DNS,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
    VERDICT_TCP_RETRANSMISSION,
)
from retina_core.telemetry import CONTROL_PLANE_PREFIX, LATENCY_BUCKETS_S, METRIC_PREFIX
from metrics_module.tcpconn import TcpConnMetrics

__all__ = [
    "AdvancedMetrics",
    "FLAG_LABELS",
]

EXPIRED_METRICS_COUNTER = CONTROL_PLANE_PREFIX + "expired_metrics_counter"
SERIES_OVERFLOW_COUNTER = CONTROL_PLANE_PREFIX + "metrics_series_overflow_counter"

UNKNOWN = "unknown"
UNKNOWN_DROP_REASON = "UNKNOWN_DROP"  # a DROPPED record whose reader did not name the reason
API_SERVER_ENDPOINT = "kubernetes-apiserver"  # Retina's pseudo-pod kubernetes-apiserver/kubernetes-apiserver

#: Maximum cached plans per verdict before the cache is emptied (it refills on the next records).
PLAN_CACHE_MAX = 200_000

#: Maximum cached label fragments per side specification.
SIDE_CACHE_MAX = 65_536

#: adv_tcpflags_count ``flag`` values, in the order series are created for one record.
FLAG_LABELS = ("FIN", "SYN", "SYNACK", "ACK", "RST", "PSH", "URG", "ECE", "CWR", "NS")

DNS_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")

_TRAFFIC_DIRECTION = {DIR_INGRESS: "INGRESS", DIR_EGRESS: "EGRESS"}
_PORT_PROTOS = frozenset((6, 17, 132))  # TCP, UDP, SCTP: protocols whose ports are labels

_HELP = {
    "adv_forward_count": "Total number of forwarded packets",
    "adv_forward_bytes": "Total number of forwarded bytes",
    "adv_drop_count": "Total number of dropped packets",
    "adv_drop_bytes": "Total number of dropped bytes",
    "adv_tcpflags_count": "Total number of packets by TCP flag",
    "adv_tcpretrans_count": "Total number of TCP retransmitted packets",
    "adv_dns_request_count": "Total number of DNS query packets",
    "adv_dns_response_count": "Total number of DNS response packets",
    "adv_dns_latency_seconds": "DNS query to response time as seen on the node, in seconds",
    "adv_dns_unanswered_queries": "Total number of DNS queries without a response within the timeout",
    "adv_interzone_bytes": "Total number of bytes sent from a pod of this node to another zone",
    "adv_interzone_count": "Total number of packets sent from a pod of this node to another zone",
    "adv_tcp_connect_latency_seconds": "TCP connect latency (first SYN to the SYN-ACK answering it, as seen on the "
                                       "node), in seconds",
    "adv_tcp_failed_connections": "Total number of TCP connection attempts answered by an RST (reset) or not "
                                  "answered in time (timeout)",
    "adv_tcp_rtt_seconds": "TCP smoothed round-trip time samples (at most one per connection and sample interval), "
                           "in seconds",
}
_MTYPE = {"adv_dns_latency_seconds": "histogram", "adv_dns_unanswered_queries": "counter",
          "adv_interzone_bytes": "counter", "adv_interzone_count": "counter",
          "adv_tcp_connect_latency_seconds": "histogram", "adv_tcp_failed_connections": "counter",
          "adv_tcp_rtt_seconds": "histogram"}
_TCP_CONN_KINDS = (KIND_TCP_CONNECT, KIND_TCP_FAILED, KIND_TCP_RTT)


# ----------------------------------------------------------------------------------------------------------------
# Label values of one endpoint ("side")

def ip_label(packed: bytes) -> str:
    """Text of a packed address (IPv6 compressed, lower case), cached; ``unknown`` for a non-address."""
    return ip_text_cached(packed, UNKNOWN)


def _is_api_server(ident: Any) -> bool:
    return ident.namespace == API_SERVER_ENDPOINT and ident.pod_name == API_SERVER_ENDPOINT


class SideSpec:
    """The context labels of one endpoint: which options, with which prefix, plus the pod label keys."""

    __slots__ = ("prefix", "options", "pod_label_keys", "names", "uses_ip", "uses_port", "_cache")

    def __init__(self, prefix: str, options: tuple[str, ...], pod_label_keys: tuple[str, ...]) -> None:
        self.prefix = prefix
        self.options = options
        self.pod_label_keys = pod_label_keys
        names: list[str] = []
        for opt in options:
            if opt == "workload":
                names += [prefix + "workload_kind", prefix + "workload_name"]
            else:
                names.append(prefix + opt)
        names += [prefix + sanitize_pod_label_key(k) for k in pod_label_keys]
        self.names = tuple(names)
        self.uses_ip = "ip" in options
        self.uses_port = "port" in options
        self._cache: dict[tuple, tuple] = {}

    def cached_values(self, ident: Any, packed_ip: bytes, port: int, proto: int) -> tuple[str, ...]:
        """:meth:`values`, memoised per identity object (and address / port when they are labels)."""
        key = (id(ident), packed_ip if self.uses_ip else None, port if self.uses_port else None,
               proto if self.uses_port else None)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is ident:
            return hit[1]
        vals = self.values(ident, packed_ip, port, proto)
        if len(self._cache) >= SIDE_CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (ident, vals)
        return vals

    def values(self, ident: Any, packed_ip: bytes, port: int, proto: int) -> tuple[str, ...]:
        out: list[str] = []
        for opt in self.options:
            if opt == "ip":
                out.append(ip_label(packed_ip))
            elif opt == "namespace":
                out.append((ident.namespace if ident is not None else "") or UNKNOWN)
            elif opt == "podname":
                out.append((ident.pod_name if ident is not None else "") or UNKNOWN)
            elif opt == "workload":
                if ident is not None and ident.workloads:
                    kind, name = ident.workloads[0]
                    out += [kind or UNKNOWN, name or UNKNOWN]
                else:
                    out += [UNKNOWN, UNKNOWN]
            elif opt == "service":
                out.append((ident.service if ident is not None else "") or UNKNOWN)
            elif opt == "port":
                out.append(str(port) if proto in _PORT_PROTOS else UNKNOWN)
            elif opt == "zone":
                out.append((ident.zone if ident is not None else "") or UNKNOWN)
        if self.pod_label_keys:
            if ident is not None and ident.kind == "pod":
                labels = dict(item.partition("=")[::2] for item in ident.labels)
                out += [labels.get(k, "") for k in self.pod_label_keys]
            else:
                out += [UNKNOWN] * len(self.pod_label_keys)
        return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# One metric family


class AdvMetric:
    """One configured family and its series: ``series[label_values] = [value, last_update]``."""

    __slots__ = ("option", "name", "full_name", "help", "mtype", "kind", "is_bytes", "is_reply", "fixed_names",
                 "label_names", "label_template", "series", "ttl_s", "cap", "local", "side", "src", "dst", "next_sweep",
                 "owner", "departed")

    def __init__(self, option: ContextOption, name: str, local: bool, pod_label_keys: tuple[str, ...],
                 cap: int, owner: AdvancedMetrics,
                 side_spec: Callable[[str, tuple[str, ...], tuple[str, ...]], SideSpec] = SideSpec) -> None:
        self.option = option
        self.name = name
        self.full_name = METRIC_PREFIX + name
        self.help = _HELP[name]
        self.kind = option.kind
        self.mtype = _MTYPE.get(name) or ("counter" if self.kind == KIND_DNS else "gauge")  # as Retina
        self.is_bytes = name.endswith("_bytes")
        self.is_reply = option.is_reply
        self.ttl_s = option.ttl_ns / 1e9
        self.cap = cap
        self.local = local
        self.owner = owner
        self.next_sweep = 0.0
        if local:
            self.side = side_spec("", option.source_labels, pod_label_keys)
            self.src = self.dst = None
            ctx_names = self.side.names
        else:
            self.side = None
            self.src = side_spec("source_", option.source_labels, pod_label_keys) if option.source_labels else None
            self.dst = (side_spec("destination_", option.destination_labels, pod_label_keys)
                        if option.destination_labels else None)
            ctx_names = (self.src.names if self.src else ()) + (self.dst.names if self.dst else ())
        if self.kind == KIND_FORWARD or self.kind == KIND_TCPRETRANS:
            fixed: tuple[str, ...] = ("direction",)
        elif self.kind == KIND_TCPFLAGS:
            fixed = ("flag",)
        elif self.kind == KIND_DROP:
            fixed = ("reason", "direction")
        elif self.kind == KIND_INTERZONE:
            fixed = ("source_zone", "destination_zone")
        elif name == "adv_dns_latency_seconds":
            fixed = ("query_type", "return_code")
        elif name == "adv_dns_unanswered_queries":
            fixed = ("query_type",)
        elif self.kind == KIND_TCP_FAILED:
            fixed = ("reason",)
        elif self.kind in _TCP_CONN_KINDS:
            fixed = ()
        elif name == "adv_dns_request_count":
            fixed = ("query_type", "query")
        else:
            fixed = ("return_code", "query_type", "query", "response", "num_response")
        self.fixed_names = fixed
        self.label_names = fixed + ctx_names + (("is_reply",) if self.is_reply else ())
        self.label_template = "{" + ",".join(f'{n}="%s"' for n in self.label_names) + "}"
        self.series: dict[tuple[str, ...], list] = {}
        self.departed: dict[tuple[str, ...], tuple[float, tuple]] = {}
        """Series of pods that left the IP cache -> (when they are removed, the departed identity objects); see
        :mod:`metrics_module.departures`."""

    def sides(self) -> tuple[SideSpec, ...]:
        return tuple(s for s in (self.side, self.src, self.dst) if s is not None)

    def entry(self, labels: tuple[str, ...], now: float, owners: tuple = ()) -> list | None:
        """The series for ``labels``, created if the cap allows; None otherwise (the caller counts the overflow).

        ``owners``: the record's identity objects. A series of a departed pod keeps counting for records of that
        pod (still in flight); for any other record with its labels (a new pod reusing the address or name) it is
        replaced by a new series."""
        if self.departed:
            d = self.departed.get(labels)
            if d is not None and not any(o is g for o in owners for g in d[1]):
                del self.departed[labels]
                self.series.pop(labels, None)
        e = self.series.get(labels)
        if e is None:
            if len(self.series) >= self.cap:
                return None
            e = self.series[labels] = [0, now]
        return e

    def context_values(self, rec: Any, local_side: int) -> tuple[str, ...]:
        """Context label values for a record; local_side: 0 = source pod, 1 = destination pod (local context)."""
        if self.local:
            if local_side == 0:
                return self.side.cached_values(rec.source, rec.src_ip, rec.src_port, rec.proto)
            return self.side.cached_values(rec.destination, rec.dst_ip, rec.dst_port, rec.proto)
        out: tuple[str, ...] = ()
        if self.src is not None:
            out = self.src.cached_values(rec.source, rec.src_ip, rec.src_port, rec.proto)
        if self.dst is not None:
            out += self.dst.cached_values(rec.destination, rec.dst_ip, rec.dst_port, rec.proto)
        return out

    def rendered(self, key: tuple[str, ...]) -> str:
        """The exposition's label text of a series (``{name="value",…}``; ``""`` without labels)."""
        if not key:
            return ""
        joined = "".join(key)  # one C-level scan decides whether any value needs escaping (rarely)
        if '"' in joined or "\\" in joined or "\n" in joined:
            return self.label_template % tuple(map(escape_label_value, key))
        return self.label_template % key


# ----------------------------------------------------------------------------------------------------------------
# Per-verdict pipelines


def _prerendered_samples(m: AdvMetric, series: dict) -> Iterator[tuple[str, Any]]:
    """Samples with their label text rendered now: series keep no rendered text (80k series would hold ~20 MiB of
    it), and rendering a series' labels costs about as much as looking a cached text up (~0.3 us)."""
    rendered = m.rendered
    for k, e in series.items():
        yield rendered(k), e[0]


class _Pipeline:
    """The metrics fed by one verdict, with their plan cache."""

    __slots__ = ("owner", "metrics", "gated", "local", "plans", "use_ip", "use_port", "use_reply", "use_reason")

    def __init__(self, owner: AdvancedMetrics, metrics: list[AdvMetric], gated: bool) -> None:
        self.owner = owner
        self.metrics = metrics
        self.gated = gated  # obs-point counting rule applies (forwarded packets)
        self.local = owner.local
        self.plans: dict[tuple, tuple] = {}
        sides = [s for m in metrics for s in m.sides()]
        self.use_ip = any(s.uses_ip for s in sides)
        self.use_port = any(s.uses_port for s in sides)
        self.use_reply = any(m.is_reply for m in metrics)
        self.use_reason = any(m.kind == KIND_DROP for m in metrics)

    # Plans: (source_identity, destination_identity, packet_entries, byte_entries, flag_groups, overflow_names)
    # flag_groups: [metric, context_values, slots (one per FLAG_LABELS, None until created)]

    def add(self, rec: Any, now: float) -> None:
        """The per-record path."""
        if self.local and self.gated:
            obs = rec.obs_point
            if obs == OBS_FROM_ENDPOINT:
                s = rec.source
                if s is None:
                    return
                key = (obs, id(s), rec.src_ip if self.use_ip else None, rec.src_port if self.use_port else None,
                       rec.proto, rec.is_reply if self.use_reply else None)
                plan = self.plans.get(key)
                if plan is None or plan[0] is not s:
                    plan = self._build(rec, key, now)
            elif obs == OBS_TO_ENDPOINT:
                d = rec.destination
                if d is None:
                    return
                key = (obs, id(d), rec.dst_ip if self.use_ip else None, rec.dst_port if self.use_port else None,
                       rec.proto, rec.is_reply if self.use_reply else None)
                plan = self.plans.get(key)
                if plan is None or plan[1] is not d:
                    plan = self._build(rec, key, now)
            else:
                return
        else:
            s = rec.source
            d = rec.destination
            if self.use_ip:
                key = (rec.obs_point, id(s), id(d), rec.src_ip, rec.dst_ip,
                       rec.src_port if self.use_port else None, rec.dst_port if self.use_port else None,
                       rec.proto, rec.direction, rec.is_reply if self.use_reply else None,
                       rec.drop_reason if self.use_reason else None)
            else:
                key = (rec.obs_point, id(s), id(d),
                       rec.src_port if self.use_port else None, rec.dst_port if self.use_port else None,
                       rec.proto, rec.direction, rec.is_reply if self.use_reply else None,
                       rec.drop_reason if self.use_reason else None)
            plan = self.plans.get(key)
            if plan is None or plan[0] is not s or plan[1] is not d:
                plan = self._build(rec, key, now)
        n = rec.packets
        for e in plan[2]:
            e[0] += n
            e[1] = now
        if plan[3]:
            n = rec.bytes
            for e in plan[3]:
                e[0] += n
                e[1] = now
        if plan[4]:
            fc = rec.flag_counts
            if fc is not None:
                self._add_flags(plan[4], fc, now, (plan[0], plan[1]))
        if plan[5]:
            overflow = self.owner.overflow
            for name in plan[5]:
                overflow[name] = overflow.get(name, 0) + 1

    def _add_flags(self, groups: list, fc: tuple[int, ...], now: float, owners: tuple) -> None:
        nonzero = _FLAG_CACHE.get(fc)
        if nonzero is None:
            nonzero = _nonzero_flags(fc)
        for group in groups:
            slots = group[2]
            for i, c in nonzero:
                e = slots[i]
                if e is None:
                    m = group[0]
                    e = m.entry((FLAG_LABELS[i],) + group[1], now, owners)
                    if e is None:
                        overflow = self.owner.overflow
                        overflow[m.name] = overflow.get(m.name, 0) + 1
                        continue
                    slots[i] = e
                e[0] += c
                e[1] = now

    # -- miss path --------------------------------------------------------------------------------------------

    def _emissions(self, rec: Any) -> list[tuple[str, int]]:
        """(direction label value, local side) pairs this record counts for; local side 0/1 = source/destination
        pod (local context), -1 = both sides (remote context)."""
        owner = self.owner
        cfg_allowed = owner.pod_allowed
        src = rec.source
        dst = rec.destination
        if self.local:
            out = []
            obs = rec.obs_point
            if (not self.gated or obs == OBS_FROM_ENDPOINT) and _local_pod(src, cfg_allowed):
                out.append(("egress", 0))
            if (not self.gated or obs == OBS_TO_ENDPOINT) and _local_pod(dst, cfg_allowed):
                out.append(("ingress", 1))
            return out
        if self.gated and not owner.remote_counted(rec.obs_point, src):
            return []
        if not (_pod_in(src, cfg_allowed) or _pod_in(dst, cfg_allowed)):
            return []
        return [(_TRAFFIC_DIRECTION.get(rec.direction, "TRAFFIC_DIRECTION_UNKNOWN"), -1)]

    def _build(self, rec: Any, key: tuple, now: float) -> tuple:
        plan: list = [rec.source, rec.destination, [], [], [], []]
        emissions = self._emissions(rec)
        if emissions:
            reason = (rec.drop_reason_name or UNKNOWN_DROP_REASON) if self.use_reason else ""
            reply = "true" if rec.is_reply else "false"
            for m in self.metrics:
                for direction, side in emissions:
                    ctx = m.context_values(rec, side)
                    if m.kind == KIND_TCPFLAGS:
                        plan[4].append([m, ctx, [None] * len(FLAG_LABELS)])
                        continue
                    if m.kind == KIND_DROP:
                        labels = (reason, direction) + ctx
                    elif m.is_reply:
                        labels = (direction,) + ctx + (reply,)
                    else:
                        labels = (direction,) + ctx
                    e = m.entry(labels, now, plan[:2])
                    if e is None:
                        plan[5].append(m.name)
                    elif m.is_bytes:
                        plan[3].append(e)
                    else:
                        plan[2].append(e)
        # frozen: a 6-tuple with shared empty tuples takes ~200 bytes less than the lists (one plan per connection
        # when ports are labels: 40k plans at 80k series)
        plan = (plan[0], plan[1], tuple(plan[2]), tuple(plan[3]), tuple(plan[4]), tuple(plan[5]))
        if len(self.plans) >= PLAN_CACHE_MAX:
            self.plans.clear()
        self.plans[key] = plan
        return plan


def _local_pod(ident: Any, allowed: Callable[[str, str], bool]) -> bool:
    return (ident is not None and ident.kind == "pod" and not _is_api_server(ident)
            and allowed(ident.namespace, ident.pod_name))


def _pod_in(ident: Any, allowed: Callable[[str, str], bool]) -> bool:
    return ident is not None and ident.kind == "pod" and allowed(ident.namespace, ident.pod_name)


_FLAG_CACHE: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}


def _nonzero_flags(fc: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Record flag counts (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS, SYNACK; SYN and ACK include SYN-ACKs) ->
    nonzero (FLAG_LABELS index, count) pairs with Retina's classification (a SYN-ACK is only SYNACK)."""
    synack = fc[9]
    syn = fc[1] - synack
    ack = fc[4] - synack
    counts = (fc[0], syn if syn > 0 else 0, synack, ack if ack > 0 else 0, fc[2], fc[3], fc[5], fc[6], fc[7], fc[8])
    out = tuple((i, c) for i, c in enumerate(counts) if c > 0)
    if len(_FLAG_CACHE) >= 4096:
        _FLAG_CACHE.clear()
    _FLAG_CACHE[fc] = out
    return out


# ----------------------------------------------------------------------------------------------------------------


class AdvancedMetrics:
    """The configured adv_* families, fed with flow records.

    Thread safety: :meth:`process`, :meth:`sweep`, :meth:`apply` and :meth:`families` take :attr:`lock`; call
    them from any thread.
    """

    def __init__(
        self,
        config: MetricsConfiguration | None,
        *,
        node_name: str,
        host_interfaces_observed: bool,
        remote_context: bool = False,
        clock: Callable[[], float] = time.monotonic,
        latency_buckets: tuple[float, ...] = LATENCY_BUCKETS_S,
    ) -> None:
        self.node_name = node_name
        self.latency_buckets = tuple(latency_buckets)  # histogram upper bounds, seconds
        self.host_interfaces_observed = host_interfaces_observed
        self.local = not remote_context
        self.clock = clock
        self.lock = threading.Lock()
        self.expired: dict[str, int] = {}
        """Series removed by TTL, by family name without prefix (``adv_forward_count``)."""
        self.overflow: dict[str, int] = {}
        """Updates dropped because the family was at its series cap."""
        self.departed_removed: dict[str, int] = {}
        """Series removed because their pod left the IP cache (``podDeletionGrace``), by family name."""
        self.pod_deletion_grace_s = 0.0
        self.config: MetricsConfiguration | None = None
        self.metrics: list[AdvMetric] = []
        self._pipelines: dict[int, _Pipeline] = {}
        self._dns: list[AdvMetric] = []
        self._dnslat: DnsLatencyMetrics | None = None
        self._interzone: InterzoneMetrics | None = None
        self.dns_latency_buckets: tuple[float, ...] = DEFAULT_BUCKETS_S
        """Bucket bounds of adv_dns_latency_seconds (seconds; the agent sets dnsLatency.buckets)."""
        self._tcp: TcpConnMetrics | None = None
        self.pod_allowed: Callable[[str, str], bool] = lambda ns, pod: True
        self.apply(config)

    # -- configuration ----------------------------------------------------------------------------------------

    def apply(self, config: MetricsConfiguration | None) -> None:
        """Switch to a new configuration. A series whose family and label names are unchanged keeps its value (its
        family's series carry over); families that are gone, or whose labels changed, start afresh."""
        metrics: list[AdvMetric] = []
        specs: dict[tuple, SideSpec] = {}

        def side_spec(prefix: str, options: tuple[str, ...], pod_label_keys: tuple[str, ...]) -> SideSpec:
            # metrics with the same side specification share it, and so its label-fragment cache
            key = (prefix, options, pod_label_keys)
            spec = specs.get(key)
            if spec is None:
                spec = specs[key] = SideSpec(prefix, options, pod_label_keys)
            return spec

        if config is not None:
            for option in config.context_options:
                for name in family_names(option.metric_name):
                    metrics.append(AdvMetric(option, name, self.local, config.pod_label_keys,
                                             config.max_series_per_metric, self, side_spec))
        with self.lock:
            old = {m.name: m for m in self.metrics}
            for m in metrics:
                prev = old.get(m.name)
                if prev is not None and prev.label_names == m.label_names:
                    m.series = prev.series
                    m.departed = prev.departed
                    m.next_sweep = prev.next_sweep
                self.overflow.setdefault(m.name, 0)
                if m.ttl_s > 0:
                    self.expired.setdefault(m.name, 0)
            by_verdict: dict[int, list[AdvMetric]] = {}
            dns: list[AdvMetric] = []
            for m in metrics:
                if m.kind in (KIND_FORWARD, KIND_TCPFLAGS):
                    by_verdict.setdefault(VERDICT_FORWARDED, []).append(m)
                elif m.kind == KIND_DROP:
                    by_verdict.setdefault(VERDICT_DROPPED, []).append(m)
                elif m.kind == KIND_TCPRETRANS:
                    by_verdict.setdefault(VERDICT_TCP_RETRANSMISSION, []).append(m)
                elif m.kind == KIND_DNS:
                    dns.append(m)
            dnslat = [m for m in metrics if m.kind == KIND_DNS_LATENCY]
            interzone = [m for m in metrics if m.kind == KIND_INTERZONE]
            if self._dnslat is not None and dnslat:  # queries awaiting their outcome carry over
                waiting = self._dnslat.waiting
                self._dnslat = DnsLatencyMetrics(self, dnslat)
                self._dnslat.waiting = waiting
            else:
                self._dnslat = DnsLatencyMetrics(self, dnslat) if dnslat else None
            self._interzone = InterzoneMetrics(self, interzone) if interzone else None
            tcp = [m for m in metrics if m.kind in _TCP_CONN_KINDS]
            self.config = config
            self.pod_deletion_grace_s = config.pod_deletion_grace_ns / 1e9 if config is not None else 0.0
            self.pod_allowed = config.pod_allowed if config is not None else (lambda ns, pod: True)
            self.metrics = metrics
            self._dns = dns
            self._tcp = (TcpConnMetrics(tcp, self.latency_buckets, self.local, _local_pod, _pod_in) if tcp else None)
            self._pipelines = {v: _Pipeline(self, ms, gated=(v == VERDICT_FORWARDED)) for v, ms in by_verdict.items()}

    def remote_counted(self, obs: int, src: Any) -> bool:
        """Remote context: does this node count a forwarded packet at this observation point (see module doc)?"""
        if obs == OBS_FROM_ENDPOINT or obs == OBS_FROM_NETWORK:
            return True
        if obs != OBS_TO_ENDPOINT:
            return False
        if src is not None and src.kind == "host":
            return True
        if self.host_interfaces_observed:
            return False
        return not (src is not None and src.kind == "pod" and src.node_name == self.node_name)

    # -- records ----------------------------------------------------------------------------------------------

    def process(self, records: Iterable[Any], now: float | None = None) -> None:
        """Feed flow records (objects with FlowRecord's attributes; anything else is skipped)."""
        if now is None:
            now = self.clock()
        with self.lock:
            pipelines = self._pipelines
            fwd = pipelines.get(VERDICT_FORWARDED)
            dns = self._dns
            dnslat = self._dnslat
            interzone = self._interzone
            tcp = self._tcp
            for rec in records:
                try:
                    v = rec.verdict
                except AttributeError:
                    continue
                if v == VERDICT_FORWARDED:
                    if fwd is not None and rec.packets:
                        fwd.add(rec, now)
                    if interzone is not None and rec.obs_point == OBS_FROM_ENDPOINT:  # its only point
                        interzone.add(rec, now)
                    if rec.conn_event and tcp is not None:
                        tcp.add(rec, now, self.pod_allowed, self.overflow)
                elif v == VERDICT_DNS:
                    if dns:
                        self._add_dns(rec, now)
                    if dnslat is not None:
                        dnslat.add(rec, now)
                else:
                    p = pipelines.get(v)
                    if p is not None:
                        p.add(rec, now)

    def dns_side(self, rec: Any) -> int | None:
        """Which side a DNS record counts for (local context: 0 = source pod, 1 = destination pod; remote: -1), or
        None when it does not count (no admitted pod)."""
        allowed = self.pod_allowed
        src, dst = rec.source, rec.destination
        if self.local:
            src_ok = _local_pod(src, allowed)
            dst_ok = _local_pod(dst, allowed)
            if src_ok and dst_ok:  # Retina: the destination for INGRESS flows, else the source
                return 1 if rec.direction == DIR_INGRESS else 0
            if src_ok:
                return 0
            return 1 if dst_ok else None
        return -1 if _pod_in(src, allowed) or _pod_in(dst, allowed) else None

    def count_overflow(self, name: str) -> None:
        """One update of family ``name`` dropped at its series cap."""
        self.overflow[name] = self.overflow.get(name, 0) + 1

    def _add_dns(self, rec: Any, now: float) -> None:
        info = rec.l7
        if info is None:
            return
        side = self.dns_side(rec)
        if side is None:
            return
        src, dst = rec.source, rec.destination
        for m in self._dns:
            if m.name == "adv_dns_request_count":
                if info.is_response:
                    continue
                fixed: tuple[str, ...] = (",".join(info.qtypes), info.query)
            else:
                if not info.is_response:
                    continue
                rcode = DNS_RCODES[info.rcode] if 0 <= info.rcode < len(DNS_RCODES) else str(info.rcode)
                fixed = (rcode, ",".join(info.qtypes), info.query, ",".join(info.ips), str(info.num_answers))
            e = m.entry(fixed + m.context_values(rec, side), now, (src, dst))
            if e is None:
                self.overflow[m.name] = self.overflow.get(m.name, 0) + 1
            else:
                e[0] += 1
                e[1] = now

    # -- lifetime ---------------------------------------------------------------------------------------------

    def pods_left(self, gone: dict, now: float | None = None) -> int:
        """Pods left the IP cache (``{(namespace, pod name, ip): their identity object}``): their series are removed
        by the first :meth:`sweep` ``podDeletionGrace`` later (nothing with a grace of 0: they wait for their ttl).
        Returns how many series were marked."""
        if now is None:
            now = self.clock()
        marked = 0
        with self.lock:
            grace = self.pod_deletion_grace_s
            if grace <= 0 or not gone:
                return 0
            idents = tuple(gone.values())
            for m in self.metrics:
                for labels in departed_series(m.label_names, list(m.series), set(gone)):
                    if labels not in m.departed:
                        m.departed[labels] = (now + grace, idents)
                        marked += 1
            if marked:  # plans hold entries: rebuilt on the next records, through entry()
                for p in self._pipelines.values():
                    p.plans.clear()
        return marked

    def sweep(self, now: float | None = None, *, due_only: bool = False) -> int:
        """Remove series not updated within their metric's ttl; return how many were removed.

        ``due_only``: only metrics whose periodic sweep is due (every ttl/4, at least 1 s, at most 60 s).
        """
        if now is None:
            now = self.clock()
        removed = 0
        with self.lock:
            if self._dnslat is not None:
                self._dnslat.poll(now)
            for m in self.metrics:
                if m.departed:
                    due = [k for k, (t, _owners) in m.departed.items() if t <= now]
                    for k in due:
                        del m.departed[k]
                        if m.series.pop(k, None) is not None:
                            self.departed_removed[m.name] = self.departed_removed.get(m.name, 0) + 1
                            removed += 1
                if m.ttl_s <= 0 or (due_only and now < m.next_sweep):
                    continue
                m.next_sweep = now + min(max(m.ttl_s / 4, 1.0), 60.0)
                cutoff = now - m.ttl_s
                dead = [k for k, e in m.series.items() if e[1] <= cutoff]
                if dead:
                    series = m.series
                    for k in dead:
                        del series[k]
                        m.departed.pop(k, None)
                    self.expired[m.name] = self.expired.get(m.name, 0) + len(dead)
                    removed += len(dead)
            if removed:
                for p in self._pipelines.values():
                    p.plans.clear()
                if self._interzone is not None:
                    self._interzone.forget()
        return removed

    # -- export -----------------------------------------------------------------------------------------------

    def series_count(self) -> int:
        return sum(len(m.series) for m in self.metrics)

    def families(self, *, prerendered: bool = False) -> list[tuple]:
        """The adv_* families. Samples are ``(labels, value)`` with labels as ``((name, value), …)``, or with
        ``prerendered=True`` as the exposition's pre-rendered ``{name="value",…}`` text (fast path for render)."""
        with self.lock:  # a dict copy is one C-level operation: cheap, and no per-series objects
            snap = [(m, m.series.copy() if m.mtype != "histogram" else
                     {k: [e[0].value(), e[1]] for k, e in m.series.items()}) for m in self.metrics]
        out = []
        for m, series in snap:
            if prerendered:
                samples: Any = _prerendered_samples(m, series)  # lazily: short-lived tuples
            else:
                names = m.label_names
                samples = [(tuple(zip(names, k)), e[0]) for k, e in series.items()]
            out.append((m.full_name, m.mtype, m.help, samples))
        return out

    def control_plane_families(self) -> list[tuple]:
        """``expired_metrics_counter{metric}`` and ``metrics_series_overflow_counter{metric}``."""
        with self.lock:
            expired = sorted(self.expired.items())
            overflow = sorted(self.overflow.items())
        return [
            (EXPIRED_METRICS_COUNTER, "counter", "Number of advanced-metric series removed because their ttl passed",
             [((("metric", k),), v) for k, v in expired]),
            (SERIES_OVERFLOW_COUNTER, "counter",
             "Number of advanced-metric updates dropped because the metric had maxSeriesPerMetric series",
             [((("metric", k),), v) for k, v in overflow]),
        ]

    def iter_series(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(family name, labels dict, value) for every series: a debugging and testing aid."""
        for name, _t, _h, samples in self.families():
            for labels, value in samples:
                yield name, dict(labels), value
