"""Turns the kernel's port-53 events into DNS messages: node-level counts, parse-error counts and (pod level)
flow records carrying a :class:`~retina_core.dns.record.DnsRecord` in ``l7``.

UDP: one datagram is one message (``msg_len`` from the UDP header is its wire length; the capture holds at most
512 bytes of it, and a first IP fragment only what the fragment carries: the parser then reads what is there).

TCP (RFC 1035 4.2.2, every message preceded by a 2-byte length): the kernel reports every port-53 segment with
payload, and SYNs, with their sequence numbers. Per connection direction (the 4-tuple) we remember the sequence
number at which the next message starts (an LRU of :data:`TCP_STATE_MAX` entries), starting from the SYN's
sequence number + 1. A segment

* that starts at that boundary, or with no state (a connection opened before we looked), is parsed as one or more
  length-prefixed messages; the first message may continue in later segments (it is parsed from the bytes
  present, ``complete=False``) and the boundary moves past it;
* that lies wholly before the boundary (the rest of a long message, or a retransmission of a segment already
  seen) is skipped, neither counted nor an error;
* that straddles the boundary is parsed from the boundary on.

Limits: a message whose 2-byte length prefix lies beyond the 512 captured bytes of a segment (several messages
in one large segment), or is split between two segments, loses the boundary: the direction's state is dropped
and the next segment is parsed as if it started a message (and counts a parse error if it does not). A
connection we join in the middle (opened before the agent started) is treated the same way: a segment that
continues a long message may count as a parse error, or -- when its bytes happen to look like a DNS header and
question -- as a message. Retransmitted UDP
queries are new messages and count again, as on the wire.

Latency (``latency``, a :class:`DnsLatencyConfig` with ``enabled``): every query and response goes through a
:class:`~retina_core.dns.latency.QueryTracker` (matching, the observation point used, timeouts and limits are
described there): ``networkobservability_dns_latency_seconds{query_type, return_code}`` (histogram) and
``networkobservability_dns_unanswered_queries{query_type}`` (counter). The reader calls :meth:`expire` after
every poll (at least every 100 ms), so an unanswered query is counted at most about 100 ms after its timeout.

NAT: a query to a Service VIP is reported (pre-DNAT) at the client's veth, its response (pre-reverse-DNAT, from
the server pod's address) at the server's veth or the uplink: their 5-tuples do not match; likewise with SNAT.
The kernel reports such a response once more where it leaves toward its client (``OBS_LATENCY_ONLY``, after the
reverse NAT), not counted: that report matches the query. The response's flow record waits for it (at most
:data:`HOLD_NS`, matched by identical DNS payload) to carry ``latency_ns``; without one it goes out as is.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from retina_core.dns.latency import QueryTracker, query_type_label, return_code_label
from retina_core.histogram import Histogram

from retina_core.dns.parser import ParseError, parse, split_tcp_stream
from retina_core.dns.record import VERDICT_DNS, DnsRecord
from retina_core.record import DIR_EGRESS, DIR_INGRESS, FlowRecord
from retina_exporter.bpf.dns import EVENT_HEADER, HEADER_SIZE, OBS_LATENCY_ONLY

__all__ = ["DnsProcessor", "TCP_STATE_MAX"]

TCP_STATE_MAX = 8192
HOLD_NS = 20_000_000  # how long a response's record waits for its latency-only report (a few µs behind it)
HOLD_MAX = 4096
_TCP_FIN_RST = 0x01 | 0x04
_TCP_SYN = 0x02
_IPPROTO_TCP = 6


def boot_to_wall_offset_ns() -> int:
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class DnsProcessor:
    """Single-threaded (the ring-buffer reader's thread); counters are read by scrapes without locks (ints)."""

    def __init__(self, node_name: str = "", ifnames: dict[int, str] | None = None, pod_level: bool = True,
                 emit: Callable[[FlowRecord], None] | None = None, latency: Any = None) -> None:
        self.node_name = node_name
        self.ifnames = ifnames if ifnames is not None else {}
        self.pod_level = pod_level
        self.emit = emit
        self.offset_ns = boot_to_wall_offset_ns()
        self.requests = 0
        self.responses = 0
        self.parse_errors: dict[str, int] = {}
        self.events = 0
        self.tcp_skipped = 0  # continuation / retransmitted segments
        self.incomplete = 0  # messages parsed from a cut-off capture
        self._tcp: OrderedDict[tuple, int] = OrderedDict()
        self._unpack = EVENT_HEADER.unpack_from
        self.latency_buckets: tuple[float, ...] = ()
        self.latency: dict[tuple[str, str], Histogram] = {}  # (query_type, return_code) -> histogram
        self.unanswered: dict[str, int] = {}  # query_type -> count
        self._latency_lock = threading.Lock()  # observe (reader thread) vs. scrape snapshots
        self.tracker: QueryTracker | None = None
        self.latency_only_events = 0
        # response records waiting (at most HOLD_NS) for the latency-only report that matches them to their query:
        # (proto, payload, message index) -> (kernel ns, record), oldest first
        self._held: OrderedDict[tuple, tuple[int, FlowRecord]] = OrderedDict()
        if latency is not None and latency.enabled:
            self.latency_buckets = latency.buckets
            self.tracker = QueryTracker(self._answered, self._unanswered, timeout_ns=latency.unanswered_timeout_ns,
                                        max_pending=latency.max_pending)

    @property
    def parse_errors_total(self) -> int:
        return sum(self.parse_errors.values())

    def _error(self, reason: str) -> None:
        self.parse_errors[reason] = self.parse_errors.get(reason, 0) + 1

    def process(self, buf: bytes) -> None:
        """Handle one raw ``struct dns_event``."""
        (ts, src, dst, ifindex, skb_len, seq, sport, dport, msg_len, cap_len, ipv, proto, obs, tcp_flags
         ) = self._unpack(buf, 0)
        self.events += 1
        if ipv == 4:
            src = src[:4]
            dst = dst[:4]
        payload = bytes(buf[HEADER_SIZE:HEADER_SIZE + cap_len])
        if obs & OBS_LATENCY_ONLY:
            self.latency_only_events += 1
            if self.tracker is not None:
                self._latency_only(ts, proto, src, dst, sport, dport, payload, msg_len)
            return
        if proto == _IPPROTO_TCP:
            messages = self._tcp_messages((src, dst, sport, dport), seq, payload, msg_len, tcp_flags)
        else:
            messages = [(payload, msg_len)]
        for index, (data, wire_len) in enumerate(messages):
            try:
                msg = parse(data, wire_len)
            except ParseError as exc:
                self._error(exc.reason)
                continue
            if msg.flags & 0x8000:
                self.responses += 1
            else:
                self.requests += 1
            if not msg.complete:
                self.incomplete += 1
            emit = self.pod_level and self.emit is not None
            if emit or self.tracker is not None:
                info = DnsRecord.from_message(msg)
                hold = False
                if self.tracker is not None:
                    if info.qr:
                        # not a query's 5-tuple here (a Service VIP's DNAT or an SNAT in between): its flow waits
                        # for the latency-only report of the same message (identical payload) toward the client
                        hold = not self.tracker.response((proto, dst, src, dport, sport, info.id), ts, info)
                    else:
                        self.tracker.query((proto, src, dst, sport, dport, info.id), ts, info)
                if emit:
                    rec = self._record(ts, ipv, src, dst, proto, sport, dport, obs, ifindex, skb_len, info)
                    if hold:
                        self._hold((proto, payload, index), ts, rec)
                    else:
                        self.emit(rec)

    def _latency_only(self, ts: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes,
                      msg_len: int) -> None:
        """A response again where it leaves toward its client: match it to its query (not counted). TCP: the
        segment's messages when it starts with one (no stream state: best effort)."""
        if proto == _IPPROTO_TCP:
            try:
                messages, _next = split_tcp_stream(payload, msg_len)
            except ParseError:
                return
        else:
            messages = [(payload, msg_len)]
        tracker = self.tracker
        for index, (data, wire_len) in enumerate(messages):
            try:
                msg = parse(data, wire_len)
            except ParseError:
                continue
            key = (proto, dst, src, dport, sport, msg.id)
            if not msg.flags & 0x8000 or key not in tracker.pending:
                continue
            info = DnsRecord.from_message(msg)
            tracker.response(key, ts, info)
            held = self._held.pop((proto, payload, index), None)
            if held is not None:
                held[1].l7.latency_ns = info.latency_ns
                self.emit(held[1])

    def _hold(self, key: tuple, ts: int, rec: FlowRecord) -> None:
        held = self._held
        if key in held or len(held) >= HOLD_MAX:
            self.emit(held.pop(key) if key in held else held.popitem(last=False)[1][1])
        held[key] = (ts, rec)

    def _release_held(self, now_boot_ns: int) -> None:
        """Emit held response records older than :data:`HOLD_NS` (no latency-only report matched them)."""
        held = self._held
        cutoff = now_boot_ns - HOLD_NS
        while held:
            key, (ts, rec) = next(iter(held.items()))
            if ts > cutoff:
                break
            del held[key]
            self.emit(rec)

    def _tcp_messages(self, key: tuple, seq: int, payload: bytes, seg_len: int, tcp_flags: int) -> list:
        if tcp_flags & _TCP_SYN:
            # The first data byte is seq + 1: the direction's first message starts there (a SYN may carry data
            # with TCP Fast Open; it is parsed from there).
            seq = (seq + 1) & 0xFFFFFFFF
            if not seg_len:
                self._remember(key, seq)
                return []
        state = self._tcp.get(key)
        if state is not None:
            d = ((seq - state + 0x80000000) & 0xFFFFFFFF) - 0x80000000  # segment start relative to the boundary
            if d < 0:
                if d + seg_len <= 0:
                    self.tcp_skipped += 1
                    return []
                skip = -d
                if skip >= len(payload):  # the boundary lies in bytes we did not capture
                    self._tcp.pop(key, None)
                    self.tcp_skipped += 1
                    return []
                payload = payload[skip:]
                seg_len -= skip
                seq = state
        try:
            messages, nxt = split_tcp_stream(payload, seg_len)
        except ParseError as exc:
            self._tcp.pop(key, None)
            self._error(exc.reason)
            return []
        if nxt is None or tcp_flags & _TCP_FIN_RST:
            self._tcp.pop(key, None)
        else:
            self._remember(key, (seq + nxt) & 0xFFFFFFFF)
        return messages

    def _remember(self, key: tuple, boundary: int) -> None:
        tcp = self._tcp
        tcp[key] = boundary
        tcp.move_to_end(key)
        if len(tcp) > TCP_STATE_MAX:
            tcp.popitem(last=False)

    # --- latency (reader thread) ---------------------------------------------------------------------------------
    def _answered(self, info: DnsRecord, latency_s: float) -> None:
        key = (query_type_label(info), return_code_label(info))
        with self._latency_lock:
            h = self.latency.get(key)
            if h is None:
                h = self.latency[key] = Histogram(self.latency_buckets)
            h.observe(latency_s)

    def _unanswered(self, info: DnsRecord) -> None:
        qtype = query_type_label(info)
        with self._latency_lock:
            self.unanswered[qtype] = self.unanswered.get(qtype, 0) + 1

    def expire(self, now_boot_ns: int | None = None) -> None:
        """Count queries past their timeout as unanswered and emit held response records older than
        :data:`HOLD_NS` (``now_boot_ns``: CLOCK_BOOTTIME, the kernel's clock)."""
        if self.tracker is None or not (self.tracker.pending or self._held):
            return
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_boot_ns is None else now_boot_ns
        self.tracker.expire(now)
        if self._held:
            self._release_held(now)

    def latency_samples(self) -> tuple[list, list]:
        """(latency histogram samples, unanswered counter samples) for the exposition, label-sorted."""
        with self._latency_lock:
            hist = [((("query_type", q), ("return_code", r)), h.value()) for (q, r), h in sorted(self.latency.items())]
            unanswered = [((("query_type", q),), n) for q, n in sorted(self.unanswered.items())]
        return hist, unanswered

    def _record(self, ts, ipv, src, dst, proto, sport, dport, obs, ifindex, skb_len, info: DnsRecord) -> FlowRecord:
        qr = info.qr
        rec = FlowRecord(
            ts + self.offset_ns, ipv, src, dst, proto, sport, dport,
            obs_point=obs, direction=DIR_INGRESS if qr else DIR_EGRESS, is_reply=qr, ifindex=ifindex,
            ifname=self.ifnames.get(ifindex, ""), packets=1, bytes=skb_len, packet_bytes=skb_len,
            node_name=self.node_name, verdict=VERDICT_DNS,
        )  # fmt: skip
        rec.l7 = info
        return rec

    def debug(self) -> dict:
        return {
            "events": self.events,
            "requests": self.requests,
            "responses": self.responses,
            "parse_errors": dict(self.parse_errors),
            "tcp_segments_skipped": self.tcp_skipped,
            "incomplete_messages": self.incomplete,
            "tcp_directions_tracked": len(self._tcp),
            **({"latency_pending": len(t.pending), "latency_overflow": t.overflow,
                "latency_only_events": self.latency_only_events, "latency_held_records": len(self._held),
                "latency_duplicates": t.duplicates, "latency_unmatched_responses": t.unmatched_responses}
               if (t := self.tracker) is not None else {}),
        }

