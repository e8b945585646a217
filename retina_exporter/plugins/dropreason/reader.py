"""Pod level: ``struct drop_event`` records from the ring buffer -> DROPPED :class:`FlowRecord` batches."""

from __future__ import annotations

import os
import socket

from retina_exporter.datapath.ringreader import BpfRingReader
from retina_core.record import VERDICT_DROPPED, FlowRecord
from retina_exporter.bpf.dropreason import EVENT_SIZE, EVENT_STRUCT
from retina_exporter.plugins.dropreason.reasons import ReasonTable
from retina_exporter.plugins.packetparser.reader import boot_to_wall_offset_ns

#: ``obs_point`` of a drop record: none of the packetparser's four points (the proto field stays unset).
OBS_DROP = 255



class DropDecoder:
    """``struct drop_event`` bytes -> FlowRecord (verdict DROPPED, ``drop_reason`` = the kernel's code)."""

    def __init__(self, node_name: str, reasons: ReasonTable, own_netns: int | None = None) -> None:
        self.node_name = node_name
        self.reasons = reasons
        self.offset_ns = boot_to_wall_offset_ns()
        self.own_netns = own_netns if own_netns is not None else os.stat("/proc/self/ns/net").st_ino
        self._ifnames: dict[int, str] = {}
        self._unpack = EVENT_STRUCT.unpack_from
        self.last_locations: list[tuple[int, int]] = []  # (reason, kernel address) of recent drops, for debugging

    def ifname(self, netns: int, ifindex: int) -> str:
        """Interface name when the drop happened in the agent's own namespace (indexes elsewhere mean nothing here)."""
        if netns != self.own_netns or not ifindex:
            return ""
        name = self._ifnames.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                name = ""
            if len(self._ifnames) < 4096:
                self._ifnames[ifindex] = name
        return name

    def decode(self, buf, offset: int = 0) -> FlowRecord:
        (ts, location, src, dst, reason, nbytes, packets, ifindex, netns, sport, dport, proto, ipv, hint,
         tcp_flags, icmp_type, icmp_code) = self._unpack(buf, offset)
        if ipv == 4:
            src = src[:4]
            dst = dst[:4]
        locs = self.last_locations
        locs.append((reason, location))
        if len(locs) > 32:
            del locs[:16]
        reasons = self.reasons
        return FlowRecord(
            ts + self.offset_ns, ipv, src, dst, proto, sport, dport, tcp_flags, icmp_type, icmp_code, OBS_DROP,
            reasons.direction(reason, hint), None, ifindex, self.ifname(netns, ifindex), packets, nbytes, nbytes, None, 0,
            self.node_name, VERDICT_DROPPED, reason, reasons.name(reason),
        )


class DropEventReader(BpfRingReader):
    """Owns the thread that polls the program's ``events`` ring buffer and hands DROPPED records to
    ``sink.write_batch`` in batches (see :class:`~retina_exporter.datapath.ringreader.BpfRingReader`).

    The ring buffer is opened once per program (:meth:`DropReasonProgram.set_event_handler`), so a program
    shared by several plugin instances in tests keeps one consumer; :meth:`stop` unhooks this reader from it.
    """

    def __init__(self, program, decoder: DropDecoder, sink, batch_size: int = 256) -> None:
        super().__init__(program.bpf, sink.write_batch, name="dropreason", batch_size=batch_size,
                         decode=decoder.decode, event_size=EVENT_SIZE)
        self._program = program
        self._decoder = decoder
        self._sink = sink
        program.set_event_handler(self._callback)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._program.set_event_handler(None)
