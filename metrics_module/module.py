"""The metrics module: follows the output ring, feeds the advanced metrics, and serves every family for /metrics.

``MetricsModule`` either follows a ring with a reader thread of its own (:class:`~retina_core.ring.RingReader`,
as Retina's metrics module follows the enricher's output), or -- as the agent runs it, ``ring=None`` -- is fed by
the callers of :meth:`MetricsModule.count` (the plugin readers, through ``retina_exporter/pipeline.py``). Records
a ring reader lost because the writer overtook it are counted in
``controlplane_networkobservability_lost_events_counter{type="buffered_channel", reason="metricModule"}``. The
thread also runs the TTL sweeps and the pod-departure checks (with ``ring=None``, that is all it does).

:meth:`MetricsModule.families` yields, in order: node-level families published by plugins through
:meth:`MetricsModule.register` (a :class:`~metrics_module.registry.FamilyRegistry`: the agent's, shared with the
plugins, when given as ``registry``), the advanced (``adv_*``) families, then control-plane families: the
telemetry's (:class:`~retina_core.telemetry.ControlPlane`) -- unless a shared registry is given, whose owner
registers them (as the agent does) -- and ``expired_metrics_counter`` and ``metrics_series_overflow_counter``. Scrape cost is proportional to the number of series (label text rendered at
each scrape), not to the number of records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from metrics_module.advanced import AdvancedMetrics
from metrics_module.departures import PodDepartures
from retina_core.metricsconfig import MetricsConfiguration
from metrics_module.exposition import Family, render as render_text, render_openmetrics
from metrics_module.registry import FamilyRegistry
from retina_core.worker import Worker
from retina_core.ring import LostMarker, Ring

__all__ = ["MetricsModule"]

log = logging.getLogger(__name__)

LOST_TYPE = "buffered_channel"
LOST_REASON = "metricModule"
#: Seconds between checks for due TTL sweeps (and the longest a ring read waits).
SWEEP_POLL_S = 0.5


class MetricsModule(Worker):
    """``MetricsModule(ring, telemetry, config, node_name, host_interfaces_observed, remote_context)``.

    * ``ring``: the output ring of flow records (read from its oldest record when :meth:`start` is called).
    * ``telemetry``: the agent's ControlPlane (lost-event counts; its families are served too). May be None.
    * ``config``: a :class:`MetricsConfiguration`, or None for no advanced metrics.
    * ``node_name``, ``host_interfaces_observed``: for the remote-context counting rule.
    * ``remote_context``: Retina's ``remoteContext`` (False = local context).
    * ``registry``: a shared :class:`FamilyRegistry` of node-level sources (the agent's, which also holds the
      telemetry's families); None = a registry of the module's own, and the telemetry's families are added.
    * ``clock``: monotonic seconds (tests inject one); ``batch_size``: records per ring read.
    * ``ipcache``: ``() -> (version, {packed ip: identity})`` of the enricher's IP cache; with it, the series of
      pods that leave the cache are removed after ``podDeletionGrace`` (:mod:`metrics_module.departures`).
    * ``latency_buckets``: upper bounds (seconds) of the adv_* latency histograms (``tcpMetrics.buckets``).
    """

    def __init__(
        self,
        ring: Ring | None,
        telemetry: Any,
        config: MetricsConfiguration | None,
        node_name: str,
        host_interfaces_observed: bool,
        remote_context: bool = False,
        *,
        registry: FamilyRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_size: int = 512,
        ipcache: Callable[[], tuple[int, Mapping[bytes, Any]]] | None = None,
        latency_buckets: tuple[float, ...] | None = None,
    ) -> None:
        self.ring = ring
        self.telemetry = telemetry
        self.clock = clock
        self.batch_size = batch_size
        self.advanced = AdvancedMetrics(
            config,
            node_name=node_name,
            host_interfaces_observed=host_interfaces_observed,
            remote_context=remote_context,
            clock=clock,
            **({"latency_buckets": latency_buckets} if latency_buckets else {}),
        )
        self._own_registry = registry is None
        self.registry = registry if registry is not None else FamilyRegistry()
        super().__init__("metrics-module")
        self._reader = None
        self.records_processed = 0
        self.records_lost = 0
        self._departures = PodDepartures(ipcache) if ipcache is not None else None

    # -- configuration ----------------------------------------------------------------------------------------

    @property
    def config(self) -> MetricsConfiguration | None:
        return self.advanced.config

    def apply(self, config: MetricsConfiguration | None) -> None:
        """Reconfigure at run time; series whose family and label names are unchanged keep their values."""
        self.advanced.apply(config)

    def register(self, families_callable: Callable[[], Iterable[Family]]) -> None:
        """Publish more families (node-level metrics of a plugin) through this module's :meth:`families`."""
        self.registry.register(families_callable)

    def unregister(self, families_callable: Callable[[], Iterable[Family]]) -> None:
        self.registry.unregister(families_callable)

    # -- records ----------------------------------------------------------------------------------------------

    def process(self, items: Iterable[Any]) -> None:
        """Feed one batch as read from the ring: flow records, possibly with :class:`LostMarker` items."""
        records = []
        lost = 0
        for item in items:
            if isinstance(item, LostMarker):
                if item.__class__ is LostMarker:  # our own overrun; subclasses were counted upstream
                    lost += item.count
            else:
                records.append(item)
        if lost:
            self.records_lost += lost
            if self.telemetry is not None:
                self.telemetry.add_lost(LOST_TYPE, LOST_REASON, lost)
        if records:
            self.count(records)

    def count(self, records: list) -> None:
        """Feed one batch of flow records only (no :class:`LostMarker`: a plugin reader's batch)."""
        self.advanced.process(records, self.clock())
        self.records_processed += len(records)

    def start(self) -> None:
        """Start the thread (no-op when already running): it follows the ring, or -- without a ring, when the
        agent's reader threads call :meth:`count` themselves -- only runs the TTL sweeps."""
        if self.alive():
            return
        self._reader = self.ring.reader("oldest") if self.ring is not None else None
        super().start()

    def _wake_thread(self) -> None:
        if self.ring is not None:
            self.ring.notify_all()

    def _run(self) -> None:
        reader = self._reader
        stop = self._stop
        while not stop.is_set():
            try:
                if reader is None:
                    stop.wait(SWEEP_POLL_S)
                    self.check_departures()
                    self.advanced.sweep(self.clock(), due_only=True)
                    continue
                batch = reader.next_batch(self.batch_size, timeout_s=SWEEP_POLL_S)
                if batch:
                    self.process(batch)
                self.check_departures()
                self.advanced.sweep(self.clock(), due_only=True)
            except Exception:  # keep counting: a bad record must not stop the module
                log.exception("metrics module: error while processing records")

    def check_departures(self) -> int:
        """Mark the series of pods that left the IP cache since the last check; returns how many."""
        if self._departures is None:
            return 0
        gone = self._departures.check()
        return self.advanced.pods_left(gone, self.clock()) if gone else 0

    # -- export -----------------------------------------------------------------------------------------------

    def families(self, *, prerendered: bool = False) -> Iterator[Family]:
        """Every family for /metrics: registered node-level families, adv_*, control plane."""
        yield from self.registry.families()
        yield from self.advanced.families(prerendered=prerendered)
        if self.telemetry is not None and self._own_registry:
            yield from self.telemetry.families()
        yield from self.advanced.control_plane_families()

    def render(self, openmetrics: bool = False) -> str:
        """Text format 0.0.4, or OpenMetrics 1.0.0 when ``openmetrics``."""
        families = self.families(prerendered=True)
        return render_openmetrics(families) if openmetrics else render_text(families)
