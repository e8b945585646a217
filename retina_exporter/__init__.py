"""retina-exporter: an eBPF network-observability agent (Hubble-compatible flows, Retina-compatible metrics)."""

__version__ = "0.1.0"
