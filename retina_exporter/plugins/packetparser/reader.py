"""Drain the packetparser ring buffer in a dedicated thread: decode -> FlowRecord -> batches for a sink.

bcc's ``ring_buffer_poll`` returns only once the ring is empty, so under sustained load it never returns: the
callback itself hands on a batch every ``batch_size`` records, and the thread does nothing else. Per event the
work is one ``struct.unpack_from`` and one slotted-object construction (measured in ``bench/``).
"""

from __future__ import annotations

import ctypes as ct
import logging
import threading
import time
from typing import Callable, Protocol

from retina_exporter.flow.record import FlowRecord
from retina_exporter.plugins.packetparser.layout import EVENT_SIZE, EVENT_STRUCT

log = logging.getLogger(__name__)


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
         is_reply, reason, icmp_type, icmp_code, _pad, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, _pad2
         ) = self._unpack(buf, offset)
        if ipv == 4:
            src = src[:4]
            dst = dst[:4]
        return FlowRecord(
            ts + self.offset_ns, ipv, src, dst, proto, sport, dport, tcp_flags, icmp_type, icmp_code, obs, direction,
            bool(is_reply), ifindex, self.ifnames.get(ifindex, ""), packets, nbytes, packet_bytes,
            (f0, f1, f2, f3, f4, f5, f6, f7, f8, f9) if proto == 6 else None, reason, self.node_name,
        )


class RingBufferReader:
    """Owns the thread that polls one bcc ring buffer and feeds decoded records to ``sink.write_batch``."""

    def __init__(
        self,
        bpf,
        map_name: str,
        decoder: EventDecoder,
        sink: BatchSink,
        batch_size: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._bpf = bpf
        self._decoder = decoder
        self._sink = sink
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._batch: list[FlowRecord] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events_read = 0
        self.decode_errors = 0
        self.last_poll_monotonic = 0.0
        bpf[map_name.encode()].open_ring_buffer(self._callback)

    def _callback(self, _ctx, data, size) -> int:
        if size < EVENT_SIZE:
            self.decode_errors += 1
            return 0
        rec = self._decoder.decode(ct.string_at(data, EVENT_SIZE))
        batch = self._batch
        batch.append(rec)
        if len(batch) >= self._batch_size:
            self._flush()
        return -1 if self._stop.is_set() else 0

    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self.events_read += len(batch)
        self._sink.write_batch(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))

    def _run(self) -> None:
        poll = self._bpf.ring_buffer_poll
        while not self._stop.is_set():
            self.last_poll_monotonic = time.monotonic()
            try:
                poll(100)
            except Exception:  # a callback error must not kill the reader
                log.exception("ring buffer poll failed")
            self._flush()
        self._flush()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="packetparser-reader", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, then hand on whatever is still in the ring."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._stop.clear()
        self.drain()

    def drain(self) -> None:
        """Consume what is in the ring now (for callers that poll themselves, e.g. benchmarks and tests)."""
        self._bpf.ring_buffer_consume()
        self._flush()
