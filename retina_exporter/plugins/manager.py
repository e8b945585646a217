"""Starts the enabled plugins, isolates failures, reconciles periodically and stops everything on shutdown.

A plugin that fails to init or start is stopped (to release whatever it got half-way) and recorded: the others
keep running, ``/readyz`` lists the failure and ``controlplane_networkobservability_plugin_manager_failed_to_reconcile``
counts it with ``reason=<plugin>``.

How long each plugin took to start is kept in :attr:`PluginManager.start_durations` (``{plugin: {"init_s",
"start_s"}}``, seconds; ``init`` compiles and loads the programs, ``start`` attaches them and starts the readers),
shown on ``/debug/plugins`` and exported as ``controlplane_networkobservability_plugin_start_seconds{plugin,
stage}``.
"""

from __future__ import annotations

import logging
import threading
import time

from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_core.telemetry import CONTROL_PLANE_PREFIX
from retina_core.worker import Worker

log = logging.getLogger(__name__)


class PluginManager(Worker):
    """Starts the plugins in order (isolating failures), reconciles them every ``reconcile_period_s`` seconds in its
    thread, stops them in reverse order."""

    def __init__(self, plugins: list[Plugin], ctx: PluginContext, reconcile_period_s: float = 10.0) -> None:
        self.plugins = plugins
        self.ctx = ctx
        self.failures: dict[str, str] = {}
        self.started: list[Plugin] = []
        self.start_durations: dict[str, dict[str, float]] = {}
        self._period = reconcile_period_s
        super().__init__("plugin-reconcile")
        self._lock = threading.Lock()

    def _fail(self, plugin: Plugin, stage: str, exc: BaseException) -> None:
        msg = f"{stage}: {exc}"
        self.failures[plugin.name] = msg
        self.ctx.telemetry.failed_to_reconcile(plugin.name)
        log.error("plugin %s failed to %s", plugin.name, msg)

    def start(self) -> None:
        for plugin in self.plugins:
            try:
                t0 = time.monotonic()
                plugin.init(self.ctx)
                t1 = time.monotonic()
                plugin.start()
                self.start_durations[plugin.name] = {"init_s": t1 - t0, "start_s": time.monotonic() - t1}
            except StartupError:
                # Something the user must fix (config key, interface, capability, headers): not a plugin
                # failure to ride out. Release what was started and let the agent exit with status 2.
                for p in [plugin] + list(reversed(self.started)):
                    try:
                        p.stop()
                    except Exception:
                        log.exception("plugin %s failed to stop", p.name)
                self.started.clear()
                raise
            except Exception as exc:  # isolate: the others keep running
                self._fail(plugin, "start", exc)
                try:
                    plugin.stop()
                except Exception:
                    log.exception("plugin %s failed to stop after a failed start", plugin.name)
                continue
            self.started.append(plugin)
            log.info("plugin %s started", plugin.name)
        super().start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.reconcile_once()

    def reconcile_once(self) -> None:
        with self._lock:
            for plugin in list(self.started):
                try:
                    plugin.reconcile()
                    self.failures.pop(plugin.name, None)
                except Exception as exc:
                    self._fail(plugin, "reconcile", exc)

    def stop(self, timeout_s: float = 5.0) -> bool:
        ended = super().stop(timeout_s)
        with self._lock:
            for plugin in reversed(self.started):
                try:
                    plugin.stop()
                except Exception:
                    log.exception("plugin %s failed to stop", plugin.name)
            self.started.clear()
        return ended

    def not_ready_reasons(self) -> list[str]:
        reasons = [f"plugin {name} failed: {why}" for name, why in sorted(self.failures.items())]
        started = {p.name for p in self.started}
        for plugin in self.plugins:
            if plugin.name not in started and plugin.name not in self.failures:
                reasons.append(f"plugin {plugin.name} not started")
        for plugin in self.started:
            reasons.extend(f"plugin {plugin.name}: {r}" for r in plugin.health())
        return reasons

    def families(self):
        """``controlplane_networkobservability_plugin_start_seconds{plugin, stage}``: seconds each started plugin
        took to init (compile, load) and to start (attach, readers)."""
        samples = [((("plugin", name), ("stage", stage[:-2])), seconds)
                   for name, d in sorted(self.start_durations.items()) for stage, seconds in d.items()]
        return [(CONTROL_PLANE_PREFIX + "plugin_start_seconds", "gauge",
                 "Seconds each plugin took to start: stage init (compile and load) and start (attach, readers)",
                 samples)]

    def readers_alive(self) -> bool:
        return bool(self.started) and all(p.readers_alive() for p in self.started)
