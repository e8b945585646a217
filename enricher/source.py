"""The factory that builds an identity source from the parsed ``enrichment`` section
(:class:`~enricher.config.EnrichmentConfig`; keys and defaults in :mod:`enricher.config`). The interface every
source implements (:class:`~enricher.base.Source`) and the polling base class (:class:`~enricher.base.PollingSource`)
are in :mod:`enricher.base`.
"""

from __future__ import annotations

from typing import Any

from enricher.base import Source
from enricher.config import EnrichmentConfig
from retina_core.units import ConfigError

__all__ = ["make_source"]


def make_source(config: EnrichmentConfig, node_name: str, telemetry: Any = None) -> Source:
    """Build the source ``config.source`` names (``inventory``, ``netns``, ``kubernetes``, ``operator``).

    ``node_name`` is this agent's node: inventory nodes of that name get kind ``host``, netns pods get it as
    ``node_name``. ``telemetry`` (a :class:`retina_core.telemetry.ControlPlane` or None) is kept on the
    source as ``telemetry``. Raises :class:`~retina_core.units.ConfigError` with a one-line message when the source
    cannot be built from this configuration. The source is not started.
    """
    kind = config.source
    if kind == "inventory":
        from enricher.inventory import InventorySource

        src: Any = InventorySource(config.inventory_file, node_name=node_name,
                                   poll_interval_s=config.inventory_poll_interval_ns / 1e9)
    elif kind == "operator":
        from enricher.operator_source import source_from_config

        src = source_from_config(config, node_name)
    elif kind == "kubernetes":
        from enricher.kubernetes import KubeConfigError, KubernetesSource

        try:
            src = KubernetesSource(node_name, config.kubeconfig or None, context=config.kube_context or None,
                                   start_timeout_s=config.kube_start_timeout_ns / 1e9,
                                   resync_period_s=config.kube_resync_interval_ns / 1e9)
        except KubeConfigError as exc:
            raise ConfigError(f"enrichment.kubeconfig: {exc}") from None
    elif kind == "netns":
        from enricher.netns import NetnsSource

        src = NetnsSource(
            node_name=node_name,
            namespace=config.netns_namespace,
            patterns=config.netns_filter,
            include_processes=config.netns_processes,
            poll_interval_s=config.netns_poll_interval_ns / 1e9,
            rescan_interval_s=config.netns_rescan_interval_ns / 1e9,
            netns_dir=config.netns_dir,
            zone=config.zone,
        )
    else:
        raise ConfigError(f"enrichment.source: {kind!r} has no source to build (set one of inventory, netns, "
                          "kubernetes, operator)")
    src.telemetry = telemetry
    return src
