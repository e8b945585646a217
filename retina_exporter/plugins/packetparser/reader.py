"""Drain the packetparser ring buffer in a dedicated thread: decode -> FlowRecord -> batches for a sink.

bcc's ``ring_buffer_poll`` returns only once the ring is empty, so under sustained load it never returns: the
callback itself hands on a batch every ``batch_size`` records, and the thread does nothing else. Per event the
work is one ``struct.unpack_from`` and one slotted-object construction (measured in ``bench/``).
"""

from __future__ import annotations

import ctypes as ct
import struct
import time
from typing import Callable, Protocol

from retina_exporter.datapath.ringreader import BpfRingReader
from retina_core.record import EventRecord, FlowRecord
from retina_exporter.bpf.packetparser import EVENT_SIZE, EVENT_STRUCT


class BatchSink(Protocol):
    def write_batch(self, items: list) -> None: ...


def boot_to_wall_offset_ns() -> int:
    """Nanoseconds to add to a CLOCK_BOOTTIME timestamp to get Unix wall-clock time."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class EventDecoder:
    """Turns raw ``struct packet_event`` bytes into :class:`FlowRecord` objects."""

    __slots__ = ("node_name", "ifnames", "offset_ns", "_unpack")

    def __init__(self, node_name: str, ifnames: dict[int, str] | None = None) -> None:
        self.node_name = node_name
        self.ifnames = ifnames if ifnames is not None else {}
        self.offset_ns = boot_to_wall_offset_ns()
        self._unpack = EVENT_STRUCT.unpack_from

    def decode(self, buf, offset: int = 0) -> FlowRecord:
        (ts, nbytes, src, dst, packets, ifindex, packet_bytes, sport, dport, tcp_flags, proto, ipv, obs, direction,
         is_reply, reason, icmp_type, icmp_code, conn_event, _pad, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, _pad2,
         latency) = self._unpack(buf, offset)
        if ipv == 4:
            src = src[:4]
            dst = dst[:4]
        # packets == 0: an attempt's timeout found by the sweep, an event but not a flow
        return (FlowRecord if packets else EventRecord)(
            ts + self.offset_ns, ipv, src, dst, proto, sport, dport, tcp_flags, icmp_type, icmp_code, obs, direction,
            bool(is_reply), ifindex, self.ifnames.get(ifindex, ""), packets, nbytes, packet_bytes,
            (f0, f1, f2, f3, f4, f5, f6, f7, f8, f9) if proto == 6 else None, reason, self.node_name,
            conn_event=conn_event, connect_latency_ns=latency,
        )


#: Where a ``struct packet_event`` stops varying between two reports of the same packets: ``ts_ns`` (0..8) and
#: ``bytes`` (8..16) come first; everything after them (addresses, packets, ifindex, the last packet's size,
#: ports, flags, protocol, observation point, direction, reason, ICMP, per-flag counts) is the merge key.
MERGE_KEY_OFFSET = 16
#: Events a merging reader collects before it hands the merged records on (when the ring holds that many):
#: a wider window merges more of interleaved flows (measured in ``bench/bench_pipeline.py``: with 400 flows
#: interleaved event by event, 256 gains nothing, 4096 halves the cost per event).
MERGE_WINDOW = 4096
BATCH_SIZE = 256
_BYTES = struct.Struct("=Q")


class RingBufferReader(BpfRingReader):
    """Owns the thread that polls one bcc ring buffer and feeds decoded records to ``sink.write_batch``
    (see :class:`~retina_exporter.datapath.ringreader.BpfRingReader`); ``on_batch(n)`` after each batch, ``n``
    the events it holds. ``batch_size``: events per batch at most (default :data:`BATCH_SIZE`, or
    :data:`MERGE_WINDOW` when merging).

    ``merge``: events that are byte-for-byte equal except for their time and byte count (the same connection,
    observation point, flags and packet size: in ``low`` aggregation, a flow's back-to-back full-size segments)
    and that wait in the ring together are merged into one record whose ``packets``, ``bytes`` and
    ``flag_counts`` are their sums and whose time is the newest one's. Counts stay exact; the flow consumers
    (Hubble, flow logs) see one flow for them. This only happens when the reader is behind (a batch holds what
    was queued), and ``events_merged`` counts the events folded into another.
    """

    def __init__(
        self,
        bpf,
        map_name: str,
        decoder: EventDecoder,
        sink: BatchSink,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        *,
        merge: bool = False,
    ) -> None:
        if batch_size is None:
            batch_size = MERGE_WINDOW if merge else BATCH_SIZE
        super().__init__(bpf, sink.write_batch, name="packetparser", batch_size=batch_size, on_batch=on_batch,
                         decode=decoder.decode, event_size=EVENT_SIZE)
        self._decoder = decoder
        self._sink = sink
        self._pending: dict[bytes, list] = {}  # merge key -> [newest raw event, events, bytes]
        self._pending_events = 0
        self.events_merged = 0
        bpf[map_name.encode()].open_ring_buffer(self._merge_callback if merge else self._callback)

    def _merge_callback(self, _ctx, data, size) -> int:
        if size < EVENT_SIZE:
            self.decode_errors += 1
            return 0
        raw = ct.string_at(data, EVENT_SIZE)
        key = raw[MERGE_KEY_OFFSET:]
        m = self._pending.get(key)
        if m is None:
            self._pending[key] = [raw, 1, _BYTES.unpack_from(raw, 8)[0]]
        else:
            m[0] = raw
            m[1] += 1
            m[2] += _BYTES.unpack_from(raw, 8)[0]
        self._pending_events += 1
        if self._pending_events >= self._batch_size:
            self._flush()
            return -1 if self._stop.is_set() else 0
        return 0

    def _flush(self) -> None:
        pending = self._pending
        if pending:
            decode = self._decoder.decode
            batch = self._batch
            merged = 0
            for raw, n, nbytes in pending.values():
                rec = decode(raw)
                if n > 1:
                    merged += n - 1
                    rec.packets *= n
                    rec.bytes = nbytes
                    if rec.flag_counts is not None:
                        rec.flag_counts = tuple(f * n for f in rec.flag_counts)
                batch.append(rec)
            self.events_merged += merged
            self._pending = {}
            self._pending_events = 0
            self._on_merged(merged)
        super()._flush()

    def _on_merged(self, merged: int) -> None:
        """``on_batch`` counts events, not records: add the events folded into another record."""
        if merged and self._on_batch is not None:
            self._on_batch(merged)
