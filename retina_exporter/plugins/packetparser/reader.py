"""Drain the packetparser ring buffer in a dedicated thread: decode -> FlowRecord -> batches for a sink.

bcc's ``ring_buffer_poll`` returns only once the ring is empty, so under sustained load it never returns: the
callback itself hands on a batch every ``batch_size`` records, and the thread does nothing else. Per event the
work is one ``struct.unpack_from`` and one slotted-object construction (measured in ``bench/``).
"""

from __future__ import annotations

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


class RingBufferReader(BpfRingReader):
    """Owns the thread that polls one bcc ring buffer and feeds decoded records to ``sink.write_batch``
    (see :class:`~retina_exporter.datapath.ringreader.BpfRingReader`); ``on_batch(n)`` after each batch of ``n``."""

    def __init__(
        self,
        bpf,
        map_name: str,
        decoder: EventDecoder,
        sink: BatchSink,
        batch_size: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(bpf, sink.write_batch, name="packetparser", batch_size=batch_size, on_batch=on_batch,
                         decode=decoder.decode, event_size=EVENT_SIZE)
        self._decoder = decoder
        self._sink = sink
        bpf[map_name.encode()].open_ring_buffer(self._callback)
