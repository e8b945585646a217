"""The IP cache: packed address bytes -> :class:`~retina_core.identity.Identity`, IPv4 and IPv6.

Readers never lock. The cache holds one *merged* dict in ``_map``; a lookup is a single ``dict.get`` on whatever
dict ``_map`` refers to at that moment. Writers never modify a dict a reader can see: every update builds a new
dict (a whole new snapshot, or a copy of the current one with a batch applied) and publishes it with one
attribute store, which is atomic under the GIL. A reader therefore sees either the whole update or none of it.
A reader that needs several lookups from *one* snapshot (the enricher does, per batch) takes :meth:`IPCache.view`
once and calls ``.get`` on it.

Keys are the packed network-order bytes the flow records carry (4 bytes for IPv4, 16 for IPv6). An IPv4 address
and its IPv4-mapped IPv6 form are different keys.

Several sources may feed one cache. Each source owns three per-kind maps (``pod``, ``service``, ``node``); the
merged map is rebuilt from them on every publish with the precedence **pod, then service, then node** (Retina's
lookup order): an address claimed by a pod and a node resolves to the pod. Between sources of the same kind, the
source registered (or first published) later wins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from retina_core.addr import ip_text
from retina_core.identity import KIND_NODE, KIND_POD, KIND_SERVICE, WORLD, Identity

if TYPE_CHECKING:
    from enricher.base import Source

__all__ = ["IPCache", "MAP_KINDS"]

#: The per-kind maps a source fills, lowest precedence first (a later kind overrides an earlier one).
MAP_KINDS: tuple[str, ...] = (KIND_NODE, KIND_SERVICE, KIND_POD)
_PRECEDENCE: tuple[str, ...] = tuple(reversed(MAP_KINDS))  # pod, service, node


def _empty_maps() -> dict[str, dict[bytes, Identity]]:
    return {kind: {} for kind in MAP_KINDS}


class IPCache:
    """Address -> identity cache with lock-free O(1) lookups and atomic, copy-on-write updates.

    Attributes read by others:

    * ``version``: incremented on every publish (snapshot or batch), starting at 0.
    * ``loaded``: True once any source has published successfully.
    * ``updated_at``: wall-clock Unix seconds of the last publish (``None`` before the first).
    """

    def __init__(self) -> None:
        self._map: dict[bytes, Identity] = {}
        self._write_lock = threading.Lock()  # serialises writers only; readers never take it
        self._by_source: dict[str, dict[str, dict[bytes, Identity]]] = {}
        self._sources: dict[str, Source] = {}
        self.version = 0
        self.loaded = False
        self.updated_at: float | None = None

    # -- reading (any thread, lock-free) ------------------------------------------------------------------------

    def get(self, ip: bytes) -> Identity | None:
        """The identity of packed address ``ip`` (4 or 16 bytes), or ``None`` when the cache does not know it."""
        return self._map.get(ip)

    def lookup(self, ip: bytes) -> Identity:
        """The identity of packed address ``ip``; :data:`retina_core.identity.WORLD` when the cache does not know it."""
        return self._map.get(ip, WORLD)

    def view(self) -> Mapping[bytes, Identity]:
        """The current merged snapshot. It never changes after publication (treat it as read-only): every lookup
        on it answers from the same snapshot, however many updates happen meanwhile."""
        return self._map

    def __len__(self) -> int:
        """Addresses in the current merged snapshot."""
        return len(self._map)

    def __contains__(self, ip: object) -> bool:
        return ip in self._map

    # -- writing (sources) --------------------------------------------------------------------------------------

    def register(self, source: Source) -> None:
        """Make ``source`` known, so its :meth:`~enricher.source.Source.status` shows in :meth:`snapshot_json`.
        Called by each source's ``start``. A later-registered source wins over an earlier one for the same kind."""
        with self._write_lock:
            self._sources[source.name] = source
            self._by_source.setdefault(source.name, _empty_maps())

    def publish(
        self,
        source: str,
        pods: Mapping[bytes, Identity] | None = None,
        services: Mapping[bytes, Identity] | None = None,
        nodes: Mapping[bytes, Identity] | None = None,
    ) -> None:
        """Replace everything ``source`` contributed with a whole new snapshot (``None`` = empty for that kind).

        The caller hands the mappings over: they are copied into new dicts, so it may reuse or mutate them after.
        """
        fresh = {
            KIND_POD: dict(pods or {}),
            KIND_SERVICE: dict(services or {}),
            KIND_NODE: dict(nodes or {}),
        }
        with self._write_lock:
            self._by_source[source] = fresh
            self._swap(self._merge_all(), published=True)

    def apply(
        self,
        source: str,
        upserts: Iterable[tuple[str, bytes, Identity]] = (),
        deletes: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """Apply a batch to ``source``'s maps: ``upserts`` of ``(kind, ip, identity)`` and ``deletes`` of
        ``(kind, ip)``, kind one of ``pod``/``service``/``node``. Deletes of unknown addresses are ignored;
        deletes are applied before upserts. Readers see the whole batch or none of it (the affected maps are
        copied, changed, and published with one reference swap)."""
        upserts = list(upserts)
        deletes = list(deletes)
        for kind, ip, *_ in (*deletes, *upserts):
            if kind not in MAP_KINDS:
                raise ValueError(f"unknown map kind {kind!r}: expected one of {', '.join(_PRECEDENCE)}")
            if len(ip) not in (4, 16):
                raise ValueError(f"packed address must be 4 or 16 bytes, not {len(ip)}")
        with self._write_lock:
            old = self._by_source.get(source) or _empty_maps()
            new = dict(old)  # per-kind dicts shared until copied below
            copied: set[str] = set()

            def writable(kind: str) -> dict[bytes, Identity]:
                if kind not in copied:
                    new[kind] = dict(new[kind])
                    copied.add(kind)
                return new[kind]

            touched: set[bytes] = set()
            for kind, ip in deletes:
                if ip in new[kind]:
                    del writable(kind)[ip]
                    touched.add(ip)
            for kind, ip, ident in upserts:
                writable(kind)[ip] = ident
                touched.add(ip)
            self._by_source[source] = new
            merged = dict(self._map)
            for ip in touched:
                winner = self._resolve(ip)
                if winner is None:
                    merged.pop(ip, None)
                else:
                    merged[ip] = winner
            self._swap(merged, published=True)

    def remove_source(self, source: str) -> None:
        """Drop everything ``source`` contributed and forget the source."""
        with self._write_lock:
            self._by_source.pop(source, None)
            self._sources.pop(source, None)
            self._swap(self._merge_all(), published=False)

    def _merge_all(self) -> dict[bytes, Identity]:
        merged: dict[bytes, Identity] = {}
        for kind in MAP_KINDS:  # node, service, pod: later updates override earlier ones
            for maps in self._by_source.values():
                merged.update(maps[kind])
        return merged

    def _resolve(self, ip: bytes) -> Identity | None:
        sources = list(self._by_source.values())
        for kind in _PRECEDENCE:
            for maps in reversed(sources):
                ident = maps[kind].get(ip)
                if ident is not None:
                    return ident
        return None

    def _swap(self, merged: dict[bytes, Identity], published: bool) -> None:
        self._map = merged  # the one atomic publication step
        self.version += 1
        if published:
            self.loaded = True
        self.updated_at = time.time()

    # -- debugging ----------------------------------------------------------------------------------------------

    def kind_sizes(self) -> dict[str, int]:
        """Entries per kind map summed over sources (before precedence), e.g. ``{"pod": 3, ...}``."""
        sizes = dict.fromkeys(_PRECEDENCE, 0)
        for maps in list(self._by_source.values()):
            for kind in MAP_KINDS:
                sizes[kind] += len(maps[kind])
        return sizes

    def snapshot_json(self) -> dict[str, Any]:
        """A JSON-ready picture for ``/debug/ipcache``.

        ``{"version", "loaded", "updated_at" (Unix seconds or null), "entries" (addresses after precedence),
        "kinds" (entries per kind map, before precedence), "sources": {name: status dict},
        "ips": {text address: identity dict}}``; addresses sorted IPv4 first, then numerically.
        """
        m = self._map
        ips = {ip_text(ip): ident.to_dict() for ip, ident in sorted(m.items(), key=lambda kv: (len(kv[0]), kv[0]))}
        sources: dict[str, Any] = {}
        for name, src in list(self._sources.items()):
            try:
                sources[name] = src.status()
            except Exception as exc:  # a debugging page must not fail because one source does
                sources[name] = {"loaded": False, "error": f"status() failed: {exc}", "entries": 0,
                                 "updated_at": None}
        return {
            "version": self.version,
            "loaded": self.loaded,
            "updated_at": self.updated_at,
            "entries": len(m),
            "kinds": self.kind_sizes(),
            "sources": sources,
            "ips": ips,
        }
