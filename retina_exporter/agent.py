"""Assembles the agent: plugins -> output ring -> HTTP endpoints, and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time

from metrics_module.exposition import CONTENT_TYPE, render
from metrics_module.registry import FamilyRegistry
from retina_exporter import __version__
from retina_exporter.config import Config
from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_exporter.plugins.manager import PluginManager
from retina_exporter.ring import Ring
from retina_exporter.server.http import AgentHTTPServer, json_response, parse_last, parse_since
from retina_exporter.sysfs import ensure_bpffs, missing_capabilities
from retina_exporter.telemetry import ControlPlane

log = logging.getLogger(__name__)


class UnavailablePlugin(Plugin):
    """Stands in for a plugin name the config accepts but this build does not implement yet: it fails to start,
    which the manager isolates and reports."""

    def __init__(self, name: str, error: str = "") -> None:
        self.name = name
        self.error = error or f"plugin {name!r} is not implemented in retina-exporter {__version__}"

    def init(self, ctx: PluginContext) -> None:
        raise RuntimeError(self.error)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


# enabledPlugin name -> "module:Class" of its implementation (imported only when enabled).
PLUGINS = {
    "packetparser": "retina_exporter.plugins.packetparser.plugin:PacketParserPlugin",
    "packetforward": "retina_exporter.plugins.packetforward.plugin:PacketForwardPlugin",
    "linuxutil": "retina_exporter.plugins.linuxutil.plugin:LinuxUtilPlugin",
    "dropreason": "retina_exporter.plugins.dropreason.plugin:DropReasonPlugin",
    "dns": "retina_exporter.plugins.dns.plugin:DnsPlugin",
    "tcpretrans": "retina_exporter.plugins.tcpretrans.plugin:TcpRetransPlugin",
}


def build_plugins(cfg: Config) -> list[Plugin]:
    import importlib

    plugins: list[Plugin] = []
    for name in cfg.enabled_plugins:
        target = PLUGINS.get(name)
        if target is None:
            plugins.append(UnavailablePlugin(name))
            continue
        module_name, cls_name = target.split(":")
        try:
            plugin = getattr(importlib.import_module(module_name), cls_name)()
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                plugin = UnavailablePlugin(name)  # this build has no such plugin yet
            else:
                plugin = UnavailablePlugin(name, f"plugin {name!r} cannot be loaded: {exc}")
        except Exception as exc:
            plugin = UnavailablePlugin(name, f"plugin {name!r} cannot be loaded: {exc}")
        plugins.append(plugin)
    return plugins


class Agent:
    def __init__(self, cfg: Config, plugins: list[Plugin] | None = None) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.telemetry = ControlPlane()
        self.ring = Ring(cfg.output_ring_capacity)
        self.plugins = plugins if plugins is not None else build_plugins(cfg)
        self.metrics = FamilyRegistry()
        self.metrics.register(self.telemetry.families)
        self.ctx = PluginContext(config=cfg, flow_sink=self.ring, telemetry=self.telemetry, metrics=self.metrics)
        self.manager = PluginManager(self.plugins, self.ctx)
        self.http = AgentHTTPServer(cfg.api_server_host, cfg.api_server_port)
        self._stopped = threading.Event()
        self._register_routes()

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        r = self.http.route
        r("/healthz", self._healthz)
        r("/readyz", self._readyz)
        r("/metrics", self._metrics)
        r("/debug/config", lambda q: json_response(self.cfg.to_dict()))
        r("/debug/flows", self._debug_flows)
        r("/debug/plugins", lambda q: json_response({p.name: p.debug() for p in self.manager.started}))

    def _healthz(self, _q):
        if self.manager.readers_alive():
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", b"event readers not running\n"

    def not_ready_reasons(self) -> list[str]:
        return self.manager.not_ready_reasons()

    def _readyz(self, _q):
        reasons = self.not_ready_reasons()
        if not reasons:
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", ("\n".join(reasons) + "\n").encode()

    def _metrics(self, _q):
        return 200, CONTENT_TYPE, render(self.metrics.families()).encode()

    def _debug_flows(self, q):
        from retina_exporter.flow.convert import to_json_dict, to_proto

        n = parse_last(q, self.ring.capacity)
        since_ns = parse_since(q)
        flows = [to_json_dict(to_proto(rec)) for rec in self.ring.last(n)
                 if hasattr(rec, "time_ns") and rec.time_ns >= since_ns]
        return json_response({"flows": flows})

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        missing = missing_capabilities()
        if missing:
            raise StartupError(
                f"missing capabilities {', '.join(missing)}: run the agent as root or add them to the container's "
                "securityContext"
            )
        ensure_bpffs()
        try:
            self.manager.start()
        except StartupError:
            self.http.stop()
            raise
        self.http.start()
        log.info("retina-exporter %s listening on %s:%d", __version__, self.cfg.api_server_host, self.http.port)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.manager.stop()
        self.http.stop()

    def run_until_signal(self) -> None:
        done = threading.Event()

        def handler(signum, _frame):
            log.info("received %s, stopping", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
