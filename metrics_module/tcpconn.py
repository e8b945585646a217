"""Pod-level TCP connection metrics: ``adv_tcp_connect_latency_seconds`` (histogram),
``adv_tcp_failed_connections{reason}`` (counter) and ``adv_tcp_rtt_seconds`` (histogram).

Their records are rare (one per connection attempt, or one RTT sample per socket and sample interval), so they
take no plan cache: each one computes its label values (memoised per identity by the side specifications).

Which records: a forwarded record whose ``conn_event`` is set (packetparser reports each attempt's outcome once
per node, at the interface that saw its first SYN), and an RTT sample record (an
:class:`~retina_core.record.EventRecord` with ``conn_event == CONN_RTT`` and ``rtt_ns``, from the tcp:tcp_probe
program). Sides: the connection's *initiator* (the attempt's SYN sender; for an RTT sample the
socket's own address) is the source, the other end the destination, whatever the direction of the packet that
carried the outcome. Local context (one pod per series): the initiator if it is a pod in an admitted namespace,
else the other end if it is; remote context: ``source_``/``destination_`` labels, counted when either side is
such a pod.

Histogram series hold a :class:`~retina_core.histogram.Histogram` (``tcpMetrics.buckets``), snapshotted at export.
"""

from __future__ import annotations

from typing import Any

from retina_core.histogram import Histogram
from retina_core.record import CONN_ESTABLISHED, CONN_EVENTS, CONN_RTT

FAILED = "adv_tcp_failed_connections"
CONNECT_LATENCY = "adv_tcp_connect_latency_seconds"
RTT = "adv_tcp_rtt_seconds"
NAMES = (CONNECT_LATENCY, FAILED, RTT)


def sides(rec: Any) -> tuple:
    """((identity, packed ip, port) of the initiator, the same of the other end). Both sides carry the *service*
    port, whatever their own: for an attempt's outcome the port the initiator connected to, for an RTT sample the
    lower of the socket's two ports. A client's ephemeral port as a label would make one series per connection
    (unbounded cardinality, and a counter that never rises within its series, so ``rate()`` shows nothing)."""
    if rec.conn_event == CONN_RTT:
        port = min(rec.src_port, rec.dst_port)
        return (rec.source, rec.src_ip, port), (rec.destination, rec.dst_ip, port)
    port = rec.src_port if rec.is_reply else rec.dst_port
    src = (rec.source, rec.src_ip, port)
    dst = (rec.destination, rec.dst_ip, port)
    return (dst, src) if rec.is_reply else (src, dst)


class TcpConnMetrics:
    """The configured TCP connection families of one :class:`~metrics_module.advanced.AdvancedMetrics`."""

    def __init__(self, metrics: list, bounds: tuple[float, ...], local: bool, local_pod, pod_in) -> None:
        self.by_name = {m.name: m for m in metrics}
        self.bounds = bounds
        self.local = local
        self._local_pod = local_pod  # (identity, allowed) -> bool: advanced's counting predicates
        self._pod_in = pod_in

    def add(self, rec: Any, now: float, allowed, overflow: dict) -> None:
        """One record carrying a connection outcome (``conn_event``) or an RTT sample (``rtt_ns``)."""
        ev = rec.conn_event
        if ev == CONN_ESTABLISHED:
            m = self.by_name.get(CONNECT_LATENCY)
            fixed: tuple[str, ...] = ()
            seconds = rec.connect_latency_ns / 1e9
        elif ev == CONN_RTT:
            m = self.by_name.get(RTT)
            fixed = ()
            seconds = rec.rtt_ns / 1e9
        else:
            m = self.by_name.get(FAILED)
            fixed = (CONN_EVENTS[ev],)
            seconds = None
        if m is None:
            return
        ctx = self._context(m, rec, allowed)
        if ctx is None:
            return
        e = m.entry(fixed + ctx, now)
        if e is None:
            overflow[m.name] = overflow.get(m.name, 0) + 1
            return
        e[1] = now
        if seconds is None:
            e[0] += 1
            return
        if e[0].__class__ is int:
            e[0] = Histogram(self.bounds)
        e[0].observe(seconds)

    def _context(self, m: Any, rec: Any, allowed) -> tuple[str, ...] | None:
        ini, other = sides(rec)
        proto = rec.proto
        if self.local:
            for ident, ip, port in (ini, other):
                if self._local_pod(ident, allowed):
                    return m.side.cached_values(ident, ip, port, proto)
            return None
        if not (self._pod_in(ini[0], allowed) or self._pod_in(other[0], allowed)):
            return None
        out: tuple[str, ...] = ()
        if m.src is not None:
            out = m.src.cached_values(ini[0], ini[1], ini[2], proto)
        if m.dst is not None:
            out += m.dst.cached_values(other[0], other[1], other[2], proto)
        return out
