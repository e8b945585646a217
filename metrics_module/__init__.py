"""The metrics module: reads enriched flow records from the output ring and serves Retina's metrics.

* :mod:`metrics_module.advanced`: the ``adv_*`` (pod-level) series built from records under a
  MetricsConfiguration (the contract is :mod:`retina_core.metricsconfig`).
* :mod:`metrics_module.module`: :class:`MetricsModule`, the thread that follows the output ring.
* :mod:`metrics_module.registry`: :class:`FamilyRegistry`, node-level families published by plugins and the agent.
* :mod:`metrics_module.exposition`: Prometheus text and OpenMetrics rendering with Retina's counter names.
* :mod:`metrics_module.otlp` / :mod:`metrics_module.otlpconfig`: the OTLP push on the OpenTelemetry SDK and its
  ``otlp`` config section (the SDK bridge: ``_otlp_sdk``; ``otlp.*`` / ``OTEL_*`` resolution: ``_otlp_settings``);
  :class:`OtlpLogPipeline`, the SDK logs pipeline the assembler's flow logs go out through.

The names below are the package's public surface; import them from ``metrics_module``. The OTLP exporter is
imported on first use (it pulls in the OpenTelemetry SDK and gRPC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metrics_module.exposition import CONTENT_TYPE, Family, HistogramValue, negotiate, render, render_openmetrics
from metrics_module.module import MetricsModule
from metrics_module.otlpconfig import OTLP_SECTION, OtlpConfig, parse_flow_filters
from metrics_module.registry import FamilyRegistry

if TYPE_CHECKING:
    from metrics_module.otlp import OtlpExporter, OtlpLogPipeline

__all__ = ["CONTENT_TYPE", "OTLP_SECTION", "Family", "FamilyRegistry", "HistogramValue", "MetricsModule", "OtlpConfig", "OtlpExporter",
           "OtlpLogPipeline", "negotiate", "parse_flow_filters", "render", "render_openmetrics"]


def __getattr__(name: str) -> Any:
    if name in ("OtlpExporter", "OtlpLogPipeline"):
        from metrics_module import otlp

        return getattr(otlp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
