"""The operator's own ``/metrics``: a prometheus-client collector over :meth:`Operator.stats`.

Every counter of the operator is named ``..._total`` (prometheus-client's convention: the family is registered
without the suffix and its sample carries it), so the exposition is the same as the operator's former hand-written
one: ``# TYPE retina_operator_updates_sent_total counter`` with the sample ``retina_operator_updates_sent_total``.
Values are rendered by prometheus-client (``16.0`` where the former renderer wrote ``16``).

The body is the Prometheus text format 0.0.4 (no UTF-8 metric names here), served with that content type
(:data:`CONTENT_TYPE`; prometheus-client >= 0.22 names its 0.0.4 and 1.0.0 types separately).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CONTENT_TYPE", "PREFIX", "OperatorCollector", "make_registry", "render"]

PREFIX = "retina_operator_"

try:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
except ImportError:  # prometheus-client < 0.22: the latest *is* 0.0.4
    CONTENT_TYPE = CONTENT_TYPE_LATEST


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, help_text, value=value)


def _per_label(family: GaugeMetricFamily | CounterMetricFamily, values: Mapping[str, float]) -> Metric:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class OperatorCollector(Collector):
    """Collects the operator's metrics from ``stats()`` (an :meth:`Operator.stats`-shaped dict) and
    ``extra_informers()`` (health of informers outside the address map, by name: the MetricsConfiguration one)."""

    def __init__(self, stats: Callable[[], dict[str, Any]],
                 extra_informers: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self._stats = stats
        self._extra_informers = extra_informers

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        infs = dict(s["informers"])
        if self._extra_informers is not None:
            infs.update(self._extra_informers())

        def per_informer(family: GaugeMetricFamily | CounterMetricFamily, key: str) -> Metric:
            return _per_label(family, {n: int(h[key]) for n, h in infs.items()})

        yield _gauge("ready", "1 once every informer has listed and agents are served", int(s["ready"]))
        yield _gauge("connected_agents", "Agents with an open IpCache stream", s["connected_agents"])
        yield _gauge("agent_queue_depth_max", "Updates waiting for the most lagging agent",
                     max((a["queue_depth"] for a in s["agents"]), default=0))
        yield _gauge("agent_queue_capacity", "Updates an agent may fall behind before it is disconnected",
                     s["log"]["capacity"])
        yield _per_label(GaugeMetricFamily(PREFIX + "ipcache_entries", "Addresses in the map, by owner kind",
                                           labels=["kind"]), s["entries_by_kind"])
        yield _counter("ipcache_upserts_total", "Upserts produced by changes", s["upserts_total"])
        yield _counter("ipcache_deletes_total", "Deletes produced by changes", s["deletes_total"])
        yield _counter("ipcache_skipped_upserts_total", "Changes that resolved to an identical entry (not sent)",
                       s["skipped_identical_upserts_total"])
        yield _counter("updates_sent_total", "IpCacheUpdates sent to agents (snapshots, markers, deltas)",
                       s["updates_sent_total"])
        yield _counter("snapshots_sent_total", "Complete snapshots sent to agents", s["snapshots_sent_total"])
        yield _counter("lagging_disconnects_total", "Agents disconnected for falling too far behind",
                       s["lagging_disconnects_total"])
        yield per_informer(GaugeMetricFamily(PREFIX + "informer_synced", "1 once the informer has listed",
                                             labels=["informer"]), "synced")
        yield per_informer(CounterMetricFamily(PREFIX + "informer_errors_total", "Failed list/watch attempts",
                                               labels=["informer"]), "failures")
        yield per_informer(CounterMetricFamily(PREFIX + "informer_relists_total",
                                               "Relists after 410 Gone (history compacted)", labels=["informer"]),
                           "relists_gone")
        yield per_informer(CounterMetricFamily(PREFIX + "informer_resyncs_total", "Periodic full relists",
                                               labels=["informer"]), "resyncs")
        yield per_informer(CounterMetricFamily(PREFIX + "informer_events_total", "Watch events received",
                                               labels=["informer"]), "events")
        mc = s["metrics_configurations"]
        if mc is not None:
            yield _counter("metricsconfiguration_status_writes_total", "MetricsConfiguration status updates written",
                           mc["status_writes"])
            yield _counter("metricsconfiguration_status_write_failures_total",
                           "MetricsConfiguration status updates that failed", mc["status_write_failures"])


def make_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding only ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry)
