"""Where node-level metric families come from at scrape time.

Plugins that report node-level totals (packetforward, dropreason, linuxutil, dns …) register a callable that
yields families ``(name, type, help, samples)`` (see ``metrics_module.exposition``); ``/metrics`` renders every
registered source. Work happens at scrape time, proportional to the series a source has, never per event.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Iterator

from metrics_module.exposition import Family

log = logging.getLogger(__name__)

FamilySource = Callable[[], Iterable[Family]]


class FamilyRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[FamilySource] = []

    def register(self, source: FamilySource) -> None:
        with self._lock:
            if source not in self._sources:
                self._sources.append(source)

    def unregister(self, source: FamilySource) -> None:
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)

    def families(self) -> Iterator[Family]:
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            try:
                yield from source()
            except Exception:  # one broken source must not break the scrape
                log.exception("metric source %r failed", source)
