"""Hubble's ``observer.Observer`` service on the agent's output ring.

The ring (:class:`retina_core.ring.Ring`) holds compact flow records; a request's filters are compiled once
(:mod:`retina_exporter.hubble.filters`) and applied to those records, and only the records that match are converted
to ``flow.Flow`` protobuf (:func:`retina_core.convert.to_proto`, a few µs each).

``GetFlows`` (semantics of Cilium's ``container/ring_reader.go`` and ``observer/local_observer.go``, see
hubble-api.md §5):

* ``first`` and ``follow`` together: ``INVALID_ARGUMENT``; a malformed filter value, field mask or time range:
  ``INVALID_ARGUMENT`` naming the field and the value (Cilium answers some of these with ``UNKNOWN``).
* ``since`` (with ``until``): from the first record at or after ``since``; with ``number``, the first N of those.
* ``first``: from the oldest record, the first ``number`` matches.
* ``number`` N (no ``since``, no ``first``): the newest N matches, oldest first (the history is found by walking
  back from the newest record); ``number`` 2^64-1 (``--all``) or 0 without ``follow``: every match.
* ``follow``: after the history, new records as they are written, until the client cancels; ``follow`` with
  ``number`` 0 starts at "now".
* Without ``follow`` the stream ends (a clean EOF) at the newest record that existed when the request arrived.
* Every ``GetFlowsResponse`` carries ``time`` and ``node_name`` equal to the flow's (Relay merges streams by
  ``time``). A reader the writer overtook gets a ``LostEvent`` (``HUBBLE_RING_BUFFER``, the exact count) and goes
  on; records the enricher's input ring lost (forwarded markers) are reported as ``OBSERVER_EVENTS_QUEUE``.
* ``field_mask`` is honoured: only the listed ``Flow`` fields are sent (paths as in ``flow.proto``, e.g.
  ``source.pod_name``; an unknown path is ``INVALID_ARGUMENT``).

``ServerStatus`` reports the ring (``num_flows``, ``max_flows``), ``seen_flows`` (records written since start),
uptime, version and ``flows_rate`` (records/s over the last minute). ``GetNodes`` answers this node, ``GetNamespaces``
the namespaces seen on flows in the last hour. This agent has no agent or debug event stream yet: ``GetAgentEvents``
and ``GetDebugEvents`` end at once, cleanly, with no event.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from retina_core.convert import to_proto
from retina_core.proto import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from retina_core.record import FlowRecord
from retina_core.ring import LostMarker, Ring
from retina_core.worker import Worker
from retina_exporter.hubble.filters import FilterError, FlowMatcher

__all__ = ["ALL_FLOWS", "NodeInfo", "ObserverService", "RingStats", "flow_response"]

log = logging.getLogger(__name__)

ALL_FLOWS = 2**64 - 1  # `hubble observe --all`
NAMESPACE_WINDOW_S = 3600.0  # GetNamespaces: namespaces seen in the last hour
RATE_WINDOW_S = 60.0  # ServerStatus.flows_rate: over the last minute
_WALK_CHUNK = 1024  # records read per step when walking back from the newest record
_FOLLOW_WAIT_S = 0.5  # how often a waiting follower checks that its client is still there
_BATCH = 256


@dataclass(frozen=True)
class NodeInfo:
    """This node as Hubble clients see it: name, the advertised Observer address, TLS, and when it started."""

    name: str
    address: str
    version: str
    started_monotonic: float
    tls_enabled: bool = False
    tls_server_name: str = ""


def _ts_ns(ts: Any) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


class RingStats(Worker):
    """Follows the ring in batches and keeps what ``ServerStatus`` and ``GetNamespaces`` report: the namespaces
    seen on flows (with when they were last seen) and write-counter samples for the rate. Costs one attribute read
    per endpoint per record, in its own thread; it may lose records under overload (then namespaces are only
    sampled), never the pipeline's."""

    def __init__(self, ring: Ring, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("hubble-ring-stats")
        self.ring = ring
        self.clock = clock
        self._reader = ring.reader("now")
        self._namespaces: dict[str, float] = {}
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=int(RATE_WINDOW_S) + 2)
        self._samples.append((clock(), ring.total_written))

    def _run(self) -> None:
        next_sample = self.clock() + 1.0
        while not self._stop.is_set():
            batch = self._reader.next_batch(4096, timeout_s=0.5)
            if batch:
                self.observe(batch)
            now = self.clock()
            if now >= next_sample:
                self._samples.append((now, self.ring.total_written))
                next_sample = now + 1.0

    def _wake_thread(self) -> None:
        self.ring.notify_all()

    def observe(self, batch: list) -> None:
        """Note the namespaces of a batch of records (tests call this directly)."""
        seen = set()
        for rec in batch:
            if rec.__class__ is FlowRecord:
                s = rec.source
                if s is not None and s.namespace:
                    seen.add(s.namespace)
                d = rec.destination
                if d is not None and d.namespace:
                    seen.add(d.namespace)
        if seen:
            now = self.clock()
            with self._lock:
                for ns in seen:
                    self._namespaces[ns] = now

    def namespaces(self, window_s: float = NAMESPACE_WINDOW_S) -> list[str]:
        """Namespaces seen within the last ``window_s`` seconds, sorted."""
        cutoff = self.clock() - window_s
        with self._lock:
            for ns in [n for n, t in self._namespaces.items() if t < cutoff]:
                del self._namespaces[ns]
            return sorted(self._namespaces)

    def flows_rate(self) -> float:
        """Records written per second over the last minute (0 before the first second)."""
        now, w = self.clock(), self.ring.total_written
        past = [s for s in self._samples if now - s[0] <= RATE_WINDOW_S]
        if not past:
            return 0.0
        t0, w0 = past[0]
        return (w - w0) / (now - t0) if now > t0 else 0.0


class ObserverService(observer_pb2_grpc.ObserverServicer):
    """The Observer API over ``ring`` for node ``node`` (see the module docstring)."""

    def __init__(self, ring: Ring, node: NodeInfo, stats: RingStats | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.ring = ring
        self.node = node
        self.stats = stats
        self.stopping = stopping or threading.Event()
        self.streams = 0  # GetFlows streams open now
        self.streams_total = 0
        self._streams_lock = threading.Lock()

    # -- GetFlows ---------------------------------------------------------------------------------------------

    def GetFlows(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802 - gRPC name
        plan = self._plan(request, context)
        with self._streams_lock:
            self.streams += 1
            self.streams_total += 1
        try:
            yield from self._stream(plan, context)
        finally:
            with self._streams_lock:
                self.streams -= 1

    def _invalid(self, context: grpc.ServicerContext, message: str) -> None:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    def _plan(self, req: Any, context: grpc.ServicerContext) -> dict[str, Any]:
        if req.first and req.follow:
            self._invalid(context, "first and follow cannot be combined: first reads the oldest flows, follow waits "
                                   "for new ones")
        try:
            matcher = FlowMatcher(list(req.whitelist), list(req.blacklist))
        except FilterError as exc:
            self._invalid(context, f"invalid filter: {exc}")
        mask = None
        if req.HasField("field_mask") and req.field_mask.paths:
            mask = field_mask_pb2.FieldMask(paths=list(req.field_mask.paths))
            if not mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
                self._invalid(context, f"field_mask: {', '.join(req.field_mask.paths)!s} has a path that is not a "
                                       "field of flow.Flow (e.g. 'source.pod_name', 'IP', 'l4', 'Summary')")
        since = _ts_ns(req.since) if req.HasField("since") else None
        until = _ts_ns(req.until) if req.HasField("until") else None
        if since is not None and until is not None and until < since:
            self._invalid(context, "until is before since")
        ring = self.ring
        end = ring.total_written
        number = req.number
        limit: int | None = None
        if since is not None:
            start = self._start_since(since, end)
            limit = number if number and number != ALL_FLOWS else None
        elif req.first:
            start = ring.oldest_seq
            limit = number if number and number != ALL_FLOWS else None
        elif req.follow and number == 0:
            start = end
        elif number == 0 or number == ALL_FLOWS:
            start = ring.oldest_seq
        else:
            start = self._start_last(number, end, matcher)
        return {"start": start, "end": end, "follow": req.follow, "limit": limit, "since": since, "until": until,
                "matcher": matcher, "mask": mask}

    def _walk_back(self, end: int, stop: Callable[[FlowRecord], bool]) -> tuple[int | None, int]:
        """Walk the flow records before ``end`` from the newest to the oldest readable one, ``_WALK_CHUNK`` at a
        time, until ``stop(record)`` is true: ``(that record's sequence number, 0)``, or ``(None, s)`` where ``s``
        is the oldest sequence number still readable (overwritten records end the walk too)."""
        ring = self.ring
        chunk_end = end
        while True:
            oldest = ring.oldest_seq
            if chunk_end <= oldest:
                return None, oldest
            chunk_start = max(oldest, chunk_end - _WALK_CHUNK)
            records, lost = ring.read(chunk_start, chunk_end)
            first_seq = chunk_start + lost
            for i in range(len(records) - 1, -1, -1):
                rec = records[i]
                if rec.__class__ is FlowRecord and stop(rec):
                    return first_seq + i, 0
            if lost:
                return None, first_seq  # walked into overwritten records: start at what is left
            chunk_end = chunk_start

    def _start_last(self, number: int, end: int, matcher: FlowMatcher) -> int:
        """Sequence number of the ``number``-th newest matching record before ``end`` (or the oldest readable)."""
        found = 0

        def enough(rec: FlowRecord) -> bool:
            nonlocal found
            if matcher(rec):
                found += 1
            return found >= number

        seq, oldest = self._walk_back(end, enough)
        return oldest if seq is None else seq

    def _start_since(self, since_ns: int, end: int) -> int:
        """Sequence number of the oldest record at or after ``since_ns``: walking back from the newest one to the
        first record older than ``since_ns`` (records are in write order, which follows time closely)."""
        seq, oldest = self._walk_back(end, lambda rec: rec.time_ns < since_ns)
        return oldest if seq is None else seq + 1

    def _response(self, rec: FlowRecord, mask: Any) -> Any:
        return flow_response(rec, mask, self.node.name)

    def _lost(self, marker: LostMarker) -> Any:
        source = (flow_pb2.HUBBLE_RING_BUFFER if marker.__class__ is LostMarker
                  else flow_pb2.OBSERVER_EVENTS_QUEUE)
        now = time.time_ns()
        return observer_pb2.GetFlowsResponse(
            lost_events=flow_pb2.LostEvent(source=source, num_events_lost=marker.count),
            node_name=self.node.name, time=_timestamp(now))

    def _stream(self, plan: dict[str, Any], context: grpc.ServicerContext) -> Iterator[Any]:
        ring = self.ring
        reader = ring.reader(plan["start"])
        end, follow, limit = plan["end"], plan["follow"], plan["limit"]
        since, until, matcher, mask = plan["since"], plan["until"], plan["matcher"], plan["mask"]
        match_all = matcher.is_empty
        sent = 0
        while True:
            if self.stopping.is_set():
                if follow:  # a follower must not take the end for "no more flows": it should reconnect
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the agent is stopping")
                return
            if follow:
                batch = reader.next_batch(_BATCH, timeout_s=_FOLLOW_WAIT_S)
                if not batch:
                    if not context.is_active():
                        return
                    continue
            else:
                room = end - reader.position
                if room <= 0:
                    return
                batch = reader.next_batch(min(_BATCH, room), timeout_s=0)
                if not batch:
                    return
            for rec in batch:
                if rec.__class__ is not FlowRecord:
                    if isinstance(rec, LostMarker):
                        yield self._lost(rec)
                    continue
                t = rec.time_ns
                if until is not None and t > until:
                    return
                if since is not None and t < since:
                    continue
                if not match_all and not matcher(rec):
                    continue
                yield self._response(rec, mask)
                sent += 1
                if limit is not None and sent >= limit and not follow:
                    return

    # -- unary calls -----------------------------------------------------------------------------------------

    def ServerStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        ring = self.ring
        return observer_pb2.ServerStatusResponse(
            num_flows=len(ring), max_flows=ring.capacity, seen_flows=ring.total_written,
            uptime_ns=self._uptime_ns(), version=self.node.version,
            flows_rate=self.stats.flows_rate() if self.stats is not None else 0.0)

    def _uptime_ns(self) -> int:
        return int((time.monotonic() - self.node.started_monotonic) * 1e9)

    def GetNodes(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        ring = self.ring
        node = observer_pb2.Node(
            name=self.node.name, version=self.node.version, address=self.node.address,
            state=relay_pb2.NODE_CONNECTED, uptime_ns=self._uptime_ns(), num_flows=len(ring),
            max_flows=ring.capacity, seen_flows=ring.total_written)
        if self.node.tls_enabled:
            node.tls.enabled = True
            node.tls.server_name = self.node.tls_server_name
        return observer_pb2.GetNodesResponse(nodes=[node])

    def GetNamespaces(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        names = self.stats.namespaces() if self.stats is not None else []
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(namespace=ns) for ns in names])

    def GetAgentEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        if request.first and request.follow:
            self._invalid(context, "first and follow cannot be combined")
        return iter(())  # no agent events: a clean, empty stream

    def GetDebugEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        if request.first and request.follow:
            self._invalid(context, "first and follow cannot be combined")
        return iter(())  # no datapath debug events: a clean, empty stream


def flow_response(rec: FlowRecord, mask: Any = None, node_name: str = "") -> Any:
    """The ``GetFlowsResponse`` of one record: the converted flow (only the ``mask`` paths when given), with the
    flow's time and node name on the response (Relay merges by ``time``)."""
    flow = to_proto(rec)
    stamp = flow.time  # the response's time is the flow's, whatever the mask keeps
    if mask is not None:
        masked = flow_pb2.Flow()
        mask.MergeMessage(flow, masked)
        flow = masked
    return observer_pb2.GetFlowsResponse(flow=flow, node_name=rec.node_name or node_name, time=stamp)


def _timestamp(ns: int) -> Any:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)
