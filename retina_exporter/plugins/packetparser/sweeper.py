"""User-space conntrack sweep: harvest quiet connections' unreported counts and delete expired entries.

In ``high`` aggregation the kernel reports a connection direction only on flags, changes and every
``conntrackReportInterval`` *when a packet arrives*; counts of packets after the last report would wait forever
on a connection that went quiet. Every ``interval / 2`` the sweeper reads the conntrack map (batch lookup, kernel
>= 5.6) and, for each entry quiet for at least ``interval`` with unreported packets, or past its eviction time,
runs the ``ct_sweep`` program through ``BPF_PROG_TEST_RUN`` with that key. The harvest happens in the kernel with
atomic exchanges, so a packet arriving at the same moment is never lost or counted twice; the events it emits go
through the same ring buffer as packet events. After traffic stops, every packet is accounted for within
``1.5 x interval``.

Connection attempts (``tcpMetrics.connect``): an entry still waiting for the answer to its SYN
(``CONN_SYN_SENT``) ``connect_timeout_ns`` after that SYN is handed to ``ct_sweep`` with
``SWEEP_F_CONNECT_TIMEOUT``: the kernel settles it as failed (timeout) with a compare-and-swap, so an answer
arriving at the same moment and the sweep never both count it. The sweep then runs every
``min(interval / 2, connect timeout)`` (at least 0.5 s), so a timeout is counted at most one period late.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from retina_exporter.datapath.syscall import prog_test_run
from retina_exporter.bpf import packetparser as layout
from retina_core.worker import Worker

log = logging.getLogger(__name__)

_DUMMY_ETH = bytes(12) + b"\x88\xb5"  # local experimental EtherType: never a real packet


@dataclass
class SweepStats:
    entries: int = 0
    harvested: int = 0
    expired: int = 0
    ringbuf_full: int = 0
    seconds: float = 0.0
    # Cumulative per-direction totals over live entries (conntrack metrics): tx = initiator -> responder.
    packets_tx: int = 0
    packets_rx: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0


class ConntrackSweeper(Worker):
    def __init__(self, program, interval_ns: int, connect_timeout_ns: int = 0) -> None:
        self._program = program
        self._interval_ns = interval_ns
        self._connect_timeout_ns = connect_timeout_ns  # 0: connection attempts are not tracked
        super().__init__("conntrack-sweeper")
        self.last = SweepStats()
        self.sweeps = 0

    def sweep_once(self, force: bool = False) -> SweepStats:
        """One pass over the map. Safe to call from any thread (the kernel does the harvesting).

        ``force`` harvests every entry with unreported packets, quiet or not (shutdown, tests)."""
        started = time.monotonic()
        stats = SweepStats()
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        fd = self._program.prog_fd("retina_ct_sweep")
        table = self._program.conntrack
        todo: list[tuple[bytes, int]] = []
        timeout = self._connect_timeout_ns
        try:
            items = table.items_lookup_batch()
            for key, entry in items:
                stats.entries += 1
                stats.packets_tx += entry.total_packets[0]
                stats.packets_rx += entry.total_packets[1]
                stats.bytes_tx += entry.total_bytes[0]
                stats.bytes_rx += entry.total_bytes[1]
                pending = entry.unreported[0].packets or entry.unreported[1].packets
                flags = 0
                if timeout and entry.conn_state == layout.CONN_SYN_SENT and now - entry.syn_ns >= timeout:
                    flags = layout.SWEEP_F_CONNECT_TIMEOUT
                if now >= entry.eviction_ns:
                    todo.append((bytes(key), flags | layout.SWEEP_F_EXPIRE))
                elif flags or (pending and (force or now - entry.last_seen_ns >= self._interval_ns)):
                    todo.append((bytes(key), flags))
        except Exception as exc:  # an empty map makes bcc's batch lookup raise ENOENT
            if "No such file" not in str(exc) and "ENOENT" not in str(exc):
                raise
        for key, flags in todo:
            req = _DUMMY_ETH + key + flags.to_bytes(4, "little")
            ret = prog_test_run(fd, req).retval
            if ret == layout.SWEEP_RET_RINGBUF_FULL:
                stats.ringbuf_full += 1
            elif ret < layout.SWEEP_RET_NO_ENTRY:
                stats.harvested += ret
                if flags & layout.SWEEP_F_EXPIRE:
                    stats.expired += 1
        stats.seconds = time.monotonic() - started
        self.last = stats
        self.sweeps += 1
        return stats

    def _run(self) -> None:
        period = self._interval_ns / 2e9
        if self._connect_timeout_ns:
            period = min(period, self._connect_timeout_ns / 1e9)
        period = max(period, 0.5)
        while not self._stop.wait(period):
            try:
                self.sweep_once()
            except Exception:
                log.exception("conntrack sweep failed")

