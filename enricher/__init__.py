"""Enrichment: an IP -> identity cache, the sources that feed it, and the enricher that stamps flow records with
identities.

* :mod:`retina_core.identity`: :class:`~retina_core.identity.Identity`, what an address is.
* :mod:`enricher.ipcache`: :class:`~enricher.ipcache.IPCache`, lock-free lookups, atomic copy-on-write updates.
* :mod:`enricher.base`: the :class:`~enricher.base.Source` interface and :class:`~enricher.base.PollingSource`.
* :mod:`enricher.config`: the ``enrichment`` config section (:class:`~enricher.config.EnrichmentConfig`).
* :mod:`enricher.source`: :func:`~enricher.source.make_source`, the factory over that section.
* :mod:`enricher.inventory`: the ``inventory`` source (a YAML file, re-read on change).
* :mod:`enricher.netns`: the ``netns`` source (pods from network namespaces on the host).
* :mod:`enricher.kubernetes`: the ``kubernetes`` source (the API server directly; derivation in
  :mod:`retina_core.kube.objects`).
* :mod:`enricher.operator_source`: the ``operator`` source (the operator's IpCache gRPC stream).
* :mod:`enricher.enricher`: :class:`~enricher.enricher.Enricher`, the ring-to-ring thread.

The names below are the package's public surface; import them from ``enricher``.
"""

from enricher.base import PollingSource, Source
from enricher.enricher import Enricher, EnricherLost
from enricher.inventory import InventoryError, InventorySource, parse_inventory, parse_inventory_text
from enricher.ipcache import IPCache
from enricher.kubernetes import KubeConfigError, KubernetesSource
from enricher.netns import NetnsSource
from enricher.config import ENRICHMENT_SECTION, KNOWN_SOURCES, EnrichmentConfig, parse_enrichment
from enricher.operator_source import OperatorSource, source_from_config
from enricher.source import make_source

__all__ = [
    "ENRICHMENT_SECTION",
    "KNOWN_SOURCES",
    "EnrichmentConfig",
    "Enricher",
    "EnricherLost",
    "IPCache",
    "InventoryError",
    "InventorySource",
    "KubeConfigError",
    "KubernetesSource",
    "NetnsSource",
    "OperatorSource",
    "PollingSource",
    "Source",
    "make_source",
    "parse_inventory",
    "parse_inventory_text",
    "parse_enrichment",
    "source_from_config",
]
