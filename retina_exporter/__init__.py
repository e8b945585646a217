"""retina-exporter: an eBPF network-observability agent (Hubble-compatible flows, Retina-compatible metrics).

This package is the *assembler*: it builds the agent from the ground layer (:mod:`retina_core`), the enricher,
the metrics module and its own wings (``datapath/``, ``plugins/``, ``server/``, ``lab/``). Nothing imports it.
"""

from retina_core.version import __version__

__all__ = ["__version__"]
