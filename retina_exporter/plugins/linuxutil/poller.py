"""A periodic reader thread for plugins that publish Retina's basic gauges every ``metricsInterval``.

Shared by linuxutil and packetforward (it has no dependency on either).
"""

from __future__ import annotations

import logging
import time
from typing import Callable
from retina_core.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_NS = 10 * 10**9  # Retina's metricsInterval default: 10 s


def metrics_interval_s(cfg) -> float:
    """The polling period in seconds: ``cfg.metrics_interval_ns`` (Retina's ``metricsInterval``), default 10 s."""
    ns = getattr(cfg, "metrics_interval_ns", None) or DEFAULT_INTERVAL_NS
    return max(int(ns), 1) / 1e9


class Poller(Worker):
    """Calls ``read()`` once synchronously in :meth:`start` (so the first values exist as soon as the plugin has
    started), then every ``interval_s`` seconds in a daemon thread until :meth:`stop`.

    An exception from ``read()`` is logged (once per distinct message, then at debug level) and kept in
    :attr:`last_error` until a read succeeds; the thread keeps going.
    """

    def __init__(self, name: str, read: Callable[[], None], interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.name = name
        self._read = read
        self.interval_s = interval_s
        super().__init__(f"{name}-poller")
        self.reads = 0  # successful reads
        self.failures = 0
        self.last_error: str | None = None
        self.last_read_monotonic: float | None = None  # time.monotonic() of the last successful read

    def read_now(self) -> bool:
        """One read in the calling thread; True when it succeeded."""
        try:
            self._read()
        except Exception as exc:  # keep polling: the next interval may work
            self.failures += 1
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self.last_error:
                log.warning("%s: read failed: %s", self.name, msg, exc_info=log.isEnabledFor(logging.DEBUG))
            else:
                log.debug("%s: read failed again: %s", self.name, msg)
            self.last_error = msg
            return False
        self.reads += 1
        self.last_error = None
        self.last_read_monotonic = time.monotonic()
        return True

    def start(self) -> None:
        if self.alive():
            return
        self.read_now()
        super().start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.read_now()
