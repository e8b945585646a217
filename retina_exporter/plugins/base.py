"""The plugin interface: init (load programs, create maps) -> start (attach, read) -> stop (detach, release),
plus reconcile (called periodically to repair or re-check) and a health report for /readyz."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass
class PluginContext:
    """What the agent hands every plugin: the effective config, the sink for flow records, telemetry."""

    config: object  # retina_exporter.config.Config
    flow_sink: object  # has write_batch(list[FlowRecord]); the enricher's input when pod level is on
    telemetry: object  # retina_core.telemetry.ControlPlane (control-plane counters)
    metrics: object = None  # metrics_module.registry.FamilyRegistry: register(callable yielding families)
    extra: dict = field(default_factory=dict)


class Plugin(abc.ABC):
    name: str = "plugin"
    #: The Linux capabilities this plugin needs (names as in ``retina_exporter.datapath.capabilities``); the agent
    #: checks their union at start (exit status 2 naming what is missing). docs/deploy.md has the table.
    capabilities: tuple[str, ...] = ()

    @abc.abstractmethod
    def init(self, ctx: PluginContext) -> None:
        """Load programs and create maps. Raise to report failure (the manager isolates it)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Attach and start reading."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Detach everything this plugin attached and release its resources. Must be idempotent."""

    def reconcile(self) -> None:
        """Periodic check; raise to report a failure."""

    def health(self) -> list[str]:
        """Reasons this plugin is not healthy (empty when it is)."""
        return []

    def readers_alive(self) -> bool:
        """True when the plugin's event readers are running (for /healthz); plugins without readers say True."""
        return True

    def debug(self) -> dict:
        return {}
