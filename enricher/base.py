"""The interface every feed of the IP cache implements (:class:`Source`) and a base class for sources that poll
(:class:`PollingSource`). The sources import this module; :mod:`enricher.source` (the factory) imports the sources.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, runtime_checkable

from enricher.ipcache import IPCache
from retina_core.worker import Worker

__all__ = ["PollingSource", "Source"]

log = logging.getLogger(__name__)


@runtime_checkable
class Source(Protocol):
    """A feed of the IP cache.

    ``start(cache)`` registers with the cache, does the first load synchronously (so the cache is filled before
    flows arrive, when it can be) and then keeps the cache current from a background thread; it does not raise
    because of bad *data* (that is reported by ``status()``). ``stop()`` ends the thread (idempotent).
    ``status()`` returns ``{"loaded": bool, "error": str | None, "entries": int, "updated_at": float | None}``
    (``updated_at`` in Unix seconds of the last successful publish) and may add source-specific keys.
    """

    name: str

    def start(self, cache: IPCache) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class PollingSource(Worker):
    """Base for sources that re-check something every ``interval_s`` seconds from a daemon thread.

    Subclasses implement :meth:`poll` (called once synchronously by :meth:`start`, then on every tick) and use
    :meth:`_published` / :meth:`_failed` to maintain the status fields.
    """

    name = "polling"

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"{self.name}: poll interval must be positive, not {interval_s}")
        self.interval_s = interval_s
        self.cache: IPCache | None = None
        self.loaded = False
        self.error: str | None = None
        self.entries = 0
        self.updated_at: float | None = None
        self.telemetry: Any = None  # a ControlPlane, set by make_source; unused by the sources so far
        Worker.__init__(self, f"enricher-{self.name}")

    def start(self, cache: IPCache) -> None:  # type: ignore[override]
        """Register with ``cache``, poll once now, then every ``interval_s`` seconds in a daemon thread (the cache
        keeps the last snapshot after :meth:`stop`)."""
        if self.alive():
            raise RuntimeError(f"source {self.name!r} already started")
        self.cache = cache
        cache.register(self)
        self._safe_poll()
        Worker.start(self)

    def status(self) -> dict[str, Any]:
        """See :class:`Source`."""
        return {"loaded": self.loaded, "error": self.error, "entries": self.entries, "updated_at": self.updated_at}

    def poll(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._safe_poll()

    def _safe_poll(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # a bug or an unexpected OS error must not kill the thread
            log.exception("enrichment source %s: poll failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"

    def _published(self, entries: int) -> None:
        self.loaded = True
        self.error = None
        self.entries = entries
        self.updated_at = time.time()
