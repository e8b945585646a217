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

__all__ = ["BYTES", "COUNT", "InterzoneMetrics", "PLAN_CACHE_MAX"]

#: Cached (source, destination) pairs before the cache is emptied (it refills on the next records).
PLAN_CACHE_MAX = 200_000

BYTES = "adv_interzone_bytes"
COUNT = "adv_interzone_count"


class InterzoneMetrics:
    """The configured families among :data:`BYTES` and :data:`COUNT` (``AdvMetric`` objects of ``owner``).
    Called under the owner's lock, with every forwarded record."""

    def __init__(self, owner: Any, metrics: list) -> None:
        self.owner = owner
        self.bytes = next((m for m in metrics if m.name == BYTES), None)
        self.count = next((m for m in metrics if m.name == COUNT), None)
        # (id(source), id(destination)) -> [source, destination, bytes entry, count entry]; entries None when the
        # pair does not count. Identity objects are kept and checked with ``is`` (id() reuse safe).
        self._plans: dict[tuple[int, int], list] = {}

    def add(self, rec: Any, now: float) -> None:
        if rec.obs_point != OBS_FROM_ENDPOINT:
            return
        src, dst = rec.source, rec.destination
        if src is None or dst is None:
            return
        a, b = src.zone, dst.zone
        if a == b or not a or not b:  # the common case, decided without the plan cache
            return
        plan = self._plans.get((id(src), id(dst)))
        if plan is None or plan[0] is not src or plan[1] is not dst:
            plan = self._plan(src, dst, now)
        eb = plan[2]
        if eb is not None:
            eb[0] += rec.bytes
            eb[1] = now
        ec = plan[3]
        if ec is not None:
            ec[0] += rec.packets
            ec[1] = now

    def _plan(self, src: Any, dst: Any, now: float) -> list:
        plan = [src, dst, None, None]
        if (src.kind == "pod" and src.node_name == self.owner.node_name
                and self.owner.pod_allowed(src.namespace, src.pod_name)):
            plan[2] = self._entry(self.bytes, src.zone, dst.zone, now)
            plan[3] = self._entry(self.count, src.zone, dst.zone, now)
            if (plan[2] is None) != (self.bytes is None) or (plan[3] is None) != (self.count is None):
                return plan  # at the series cap: not cached, retried (and counted) on the next record
        if len(self._plans) >= PLAN_CACHE_MAX:
            self._plans.clear()
        self._plans[(id(src), id(dst))] = plan
        return plan

    def _entry(self, m: Any, a: str, b: str, now: float) -> list | None:
        if m is None:
            return None
        e = m.entry((a, b), now)
        if e is None:
            self.owner.count_overflow(m.name)
        return e

    def forget(self) -> None:
        """Drop the cached plans (after series were removed, or the configuration changed)."""
        self._plans.clear()
