"""Inter-zone traffic, for cloud cost: ``networkobservability_adv_interzone_bytes`` / ``_count`` (counters;
labels ``source_zone``, ``destination_zone`` only -- a contextOption's source/destination labels are not used).

A forwarded packet counts when its source is a pod of this node (in an admitted namespace) and both endpoints'
zones are known (``Identity.zone``: the ``topology.kubernetes.io/zone`` of their node, or the inventory's) and
differ. It counts once, at the source pod's own veth (``FROM_ENDPOINT``), on the sending node only: so the sum
over nodes counts each packet once, and a pod's inter-zone bytes are part of its veth's rx counter. Traffic from
host-network processes, and packets whose zones are unknown, are not counted.
"""

from __future__ import annotations

from typing import Any

from retina_core.record import OBS_FROM_ENDPOINT

__all__ = ["BYTES", "COUNT", "InterzoneMetrics"]

BYTES = "adv_interzone_bytes"
COUNT = "adv_interzone_count"


class InterzoneMetrics:
    """The configured families among :data:`BYTES` and :data:`COUNT` (``AdvMetric`` objects of ``owner``).
    Called under the owner's lock, with every forwarded record."""

    def __init__(self, owner: Any, metrics: list) -> None:
        self.owner = owner
        self.bytes = next((m for m in metrics if m.name == BYTES), None)
        self.count = next((m for m in metrics if m.name == COUNT), None)
        self._entries: dict[tuple[str, str], tuple[list | None, list | None]] = {}

    def add(self, rec: Any, now: float) -> None:
        if rec.obs_point != OBS_FROM_ENDPOINT:
            return
        src, dst = rec.source, rec.destination
        if src is None or dst is None or src.kind != "pod" or src.node_name != self.owner.node_name:
            return
        a, b = src.zone, dst.zone
        if not a or not b or a == b or not self.owner.pod_allowed(src.namespace, src.pod_name):
            return
        entries = self._entries.get((a, b))
        if entries is None:
            entries = (self._entry(self.bytes, a, b, now), self._entry(self.count, a, b, now))
            if (entries[0] is None) == (self.bytes is None) and (entries[1] is None) == (self.count is None):
                self._entries[(a, b)] = entries  # cached only when every configured series exists
        eb, ec = entries
        if eb is not None:
            eb[0] += rec.bytes
            eb[1] = now
        if ec is not None:
            ec[0] += rec.packets
            ec[1] = now

    def _entry(self, m: Any, a: str, b: str, now: float) -> list | None:
        if m is None:
            return None
        e = m.entry((a, b), now)
        if e is None:
            self.owner.count_overflow(m.name)
        return e

    def forget(self) -> None:
        """Drop cached series entries (after series were removed)."""
        self._entries.clear()
