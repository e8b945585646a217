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
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from retina_core.dns.parser import ParseError, parse, split_tcp_stream
from retina_core.dns.record import VERDICT_DNS, DnsRecord
from retina_core.record import DIR_EGRESS, DIR_INGRESS, FlowRecord
from retina_exporter.bpf.dns import EVENT_HEADER, HEADER_SIZE

__all__ = ["DnsProcessor", "TCP_STATE_MAX"]

TCP_STATE_MAX = 8192
_TCP_FIN_RST = 0x01 | 0x04
_TCP_SYN = 0x02
_IPPROTO_TCP = 6


def boot_to_wall_offset_ns() -> int:
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class DnsProcessor:
    """Single-threaded (the ring-buffer reader's thread); counters are read by scrapes without locks (ints)."""

    def __init__(self, node_name: str = "", ifnames: dict[int, str] | None = None, pod_level: bool = True,
                 emit: Callable[[FlowRecord], None] | None = None) -> None:
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
        if proto == _IPPROTO_TCP:
            messages = self._tcp_messages((src, dst, sport, dport), seq, payload, msg_len, tcp_flags)
        else:
            messages = [(payload, msg_len)]
        for data, wire_len in messages:
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
            if self.pod_level and self.emit is not None:
                self.emit(self._record(ts, ipv, src, dst, proto, sport, dport, obs, ifindex, skb_len, msg))

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

    def _record(self, ts, ipv, src, dst, proto, sport, dport, obs, ifindex, skb_len, msg) -> FlowRecord:
        info = DnsRecord.from_message(msg)
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
        }

