"""Series that leave with their pod: which pods left the IP cache, and which adv_* series are theirs.

:class:`PodDepartures` follows the IP cache through a callable returning ``(version, {packed ip: identity})``: on
every new version it compares the set of pod keys ``(namespace, pod name, ip text)`` with the previous one and
returns the keys that are gone (a pod deleted, or one of its addresses given up). Cost: one pass over the cache per
cache change (checked at most every 0.5 s by the metrics module's thread).

:func:`departed_series` finds the series of a family that belong to departed pods, by label values: a series
belongs to a departed pod when, on one of its sides (unprefixed in local context, ``source_``/``destination_`` in
remote context), it has an ``ip`` or ``podname`` label and every one of ``ip``, ``podname``, ``namespace`` it has
equals that pod's. Series without those labels (per workload, per service, per zone …) are not a pod's and stay
until their ttl. :class:`~metrics_module.advanced.AdvancedMetrics` then keeps them for the grace period
(``podDeletionGrace``) so that one more scrape sees their last value, and removes them; an update for the same
labels in between from any other identity -- a new pod that reused the address, or the name of a StatefulSet pod --
starts a new series instead: a new pod never inherits old counts (Prometheus sees a counter reset). Records of the
departed pod itself that were still in flight (its identity object) keep counting for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from retina_core.addr import ip_text_cached

__all__ = ["PodDepartures", "PodKey", "departed_series"]

PodKey = tuple[str, str, str]  # (namespace, pod name, ip text)
_SIDE_PREFIXES = ("", "source_", "destination_")


class PodDepartures:
    def __init__(self, view: Callable[[], tuple[int, Mapping[bytes, Any]]]) -> None:
        self._view = view
        self._version: int | None = None
        self._pods: dict[PodKey, Any] | None = None

    def check(self) -> dict[PodKey, Any]:
        """``{pod key: its last identity object}`` of the pods that were in the IP cache at the previous check and
        are not now (empty at the first check)."""
        version, current = self._view()
        if version == self._version:
            return {}
        pods = {(i.namespace, i.pod_name, ip_text_cached(ip, "")): i for ip, i in list(current.items())
                if i.kind == "pod"}
        old = self._pods
        self._version, self._pods = version, pods
        return {k: i for k, i in old.items() if k not in pods} if old is not None else {}


def departed_series(label_names: tuple[str, ...], keys: Iterable[tuple[str, ...]],
                    gone: set[PodKey]) -> list[tuple[str, ...]]:
    """The label tuples among ``keys`` (series of a family with ``label_names``) that belong to a pod in ``gone``."""
    sides = []
    for prefix in _SIDE_PREFIXES:
        idx = [label_names.index(prefix + n) if prefix + n in label_names else -1 for n in ("namespace", "podname",
                                                                                            "ip")]
        if idx[1] >= 0 or idx[2] >= 0:
            sides.append(idx)
    if not sides or not gone:
        return []
    by_ip: dict[str, list[PodKey]] = {}
    by_name: dict[str, list[PodKey]] = {}
    for k in gone:
        by_ip.setdefault(k[2], []).append(k)
        by_name.setdefault(k[1], []).append(k)
    out = []
    for key in keys:
        for ns_i, name_i, ip_i in sides:
            candidates = by_ip.get(key[ip_i], ()) if ip_i >= 0 else by_name.get(key[name_i], ())
            if any((name_i < 0 or key[name_i] == name) and (ns_i < 0 or key[ns_i] == ns) for ns, name, _ip in candidates):
                out.append(key)
                break
    return out
