"""Control-plane self-metrics (``controlplane_networkobservability_*``, Retina's names, counters without
``_total``). Updates are dict increments under the GIL; rendering happens at scrape time."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

#: Prefix of every data metric (Retina's names).
METRIC_PREFIX = "networkobservability_"
#: Prefix of the agent's and operator's own metrics.
CONTROL_PLANE_PREFIX = "controlplane_" + METRIC_PREFIX

#: Default upper bounds (seconds) of latency histograms (TCP RTT, TCP connect latency): 50 µs to 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LOST_KERNEL = "kernel"
LOST_BUFFERED_CHANNEL = "buffered_channel"
LOST_ENRICHER_RING = "enricher_ring"


class ControlPlane:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failed_reconcile: dict[str, int] = {}
        self.lost_events: dict[tuple[str, str], int] = {}
        self.parsed_packets = 0
        # Sources of cumulative values read at scrape time (e.g. kernel counters): key -> callable.
        self._lost_sources: dict[tuple[str, str], Callable[[], int]] = {}

    def failed_to_reconcile(self, plugin: str) -> None:
        with self._lock:
            self.failed_reconcile[plugin] = self.failed_reconcile.get(plugin, 0) + 1

    def add_lost(self, type_: str, reason: str, n: int) -> None:
        key = (type_, reason)
        with self._lock:
            self.lost_events[key] = self.lost_events.get(key, 0) + n

    def lost_source(self, type_: str, reason: str, read: Callable[[], int]) -> None:
        """Register a cumulative counter read at scrape time (kernel per-CPU counters)."""
        self._lost_sources[(type_, reason)] = read

    def add_parsed(self, n: int) -> None:
        self.parsed_packets += n  # single writer (the packetparser reader thread)

    def lost_total(self, type_: str, reason: str) -> int:
        value = self.lost_events.get((type_, reason), 0)
        read = self._lost_sources.get((type_, reason))
        if read is not None:
            try:
                value += read()
            except Exception:
                pass
        return value

    def families(self) -> Iterator[tuple]:
        yield (
            CONTROL_PLANE_PREFIX + "plugin_manager_failed_to_reconcile",
            "counter",
            "Number of times a plugin failed to start or reconcile",
            [((("reason", k),), v) for k, v in sorted(self.failed_reconcile.items())],
        )
        keys = sorted(set(self.lost_events) | set(self._lost_sources))
        yield (
            CONTROL_PLANE_PREFIX + "lost_events_counter",
            "counter",
            "Number of events lost, by where they were lost (type) and who lost them (reason)",
            [((("type", t), ("reason", r)), self.lost_total(t, r)) for t, r in keys],
        )
        yield (CONTROL_PLANE_PREFIX + "parsed_packets_counter", "counter", "Number of packetparser events parsed",
               [((), self.parsed_packets)])
