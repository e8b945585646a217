"""Assembles the agent: plugins -> output ring -> HTTP endpoints, and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time

from metrics_module import FamilyRegistry, negotiate
from retina_core.version import __version__
from retina_exporter.config import Config, ConfigError, load_config
from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_exporter.plugins.manager import PluginManager
from retina_core.ring import Ring
from retina_exporter.pipeline import FlowPipeline
from retina_exporter.server.http import (AgentHTTPServer, check_params, json_response, parse_ip, parse_last,
                                         parse_since)
from retina_exporter.datapath.capabilities import missing_for
from retina_exporter.datapath.sysfs import ensure_bpffs
from retina_core.telemetry import CONTROL_PLANE_PREFIX, ControlPlane

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
    """The assembled agent.

    Pipeline: each plugin reader thread enriches, counts and publishes its batches itself
    (:class:`~retina_exporter.pipeline.FlowPipeline`: enricher -> metrics module -> output ring); the output ring
    feeds Hubble, flow logs and /debug/flows. Enrichment runs when ``enablePodLevel`` is on or
    ``enrichment.source`` is set.
    """

    def __init__(self, cfg: Config, plugins: list[Plugin] | None = None, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.started_at = time.time()
        self.telemetry = ControlPlane()
        self.ring = Ring(cfg.output_ring_capacity)
        self.plugins = plugins if plugins is not None else build_plugins(cfg)
        self.metrics = FamilyRegistry()
        self.metrics.register(self.telemetry.families)
        self.metrics.register(self._pipeline_families)

        # Enrichment.
        self.enrichment_on = cfg.enable_pod_level or cfg.enrichment.source != "none"
        self.cache = None
        self.source = None
        self.enricher = None
        if self.enrichment_on:
            from enricher import Enricher, IPCache, make_source

            self.cache = IPCache()
            if cfg.enrichment.source != "none":
                try:
                    self.source = make_source(cfg.enrichment, cfg.node_name, self.telemetry)
                except ConfigError as exc:
                    raise StartupError(str(exc)) from exc
            self.enricher = Enricher(self.cache, None, self.ring, self.telemetry)  # no thread: FlowPipeline calls it

        # Advanced (pod-level) metrics.
        self.metrics_module = None
        if cfg.enable_pod_level:
            from metrics_module import MetricsModule

            mcfg = cfg.metrics_configuration
            for warning in mcfg.warnings if mcfg is not None else ():
                log.warning("metricsConfiguration: %s", warning)
            self.metrics_module = MetricsModule(  # no ring: FlowPipeline counts; its thread only sweeps
                None, self.telemetry, mcfg, cfg.node_name, bool(cfg.host_interfaces),
                remote_context=cfg.remote_context, registry=self.metrics,
                ipcache=lambda cache=self.cache: (cache.version, cache.view()),
                latency_buckets=cfg.tcp_metrics.buckets,
            )
            self.metrics_module.advanced.dns_latency_buckets = cfg.dns_latency.buckets
        self.config_reloads = 0
        self.config_reload_errors = 0
        self.pipeline = FlowPipeline(self.ring, self.enricher, self.metrics_module)
        self.ctx = PluginContext(config=cfg, flow_sink=self.pipeline, telemetry=self.telemetry,
                                 metrics=self.metrics)
        self.manager = PluginManager(self.plugins, self.ctx)
        self.metrics.register(self.manager.families)
        # Kubernetes control loop (MetricsConfiguration resources, or annotation opt-in): needs API access, i.e.
        # enrichment.source kubernetes or operator; None otherwise.
        from retina_exporter.k8s_control import build_for_agent

        self.kube_control = build_for_agent(self)
        if self.kube_control is not None:
            self.metrics.register(self.kube_control.families)
        self.otlp = None
        if cfg.otlp.enabled:
            from metrics_module import OtlpExporter

            if self.metrics_module is not None:
                module = self.metrics_module

                def families():  # the same fast path as /metrics
                    return module.families(prerendered=True)
            else:
                families = self.metrics.families
            try:
                self.otlp = OtlpExporter.from_config(families, cfg.otlp, node_name=cfg.node_name,
                                                     start_time_unix_nano=int(self.started_at * 1e9))
            except ValueError as exc:
                raise StartupError(f"otlp: {exc}") from exc
            self.metrics.register(self.otlp.families)
        self.flow_logs = None
        if self.otlp is not None and self.otlp.logs is not None:  # otlp.flowLogs.enabled: retina_exporter/flowlogs.py
            from retina_exporter.flowlogs import FlowLogExporter

            try:
                self.flow_logs = FlowLogExporter.from_config(cfg.otlp, self.ring, self.otlp.logs, cfg.node_name)
            except ValueError as exc:
                self.otlp.stop(timeout_s=0)
                raise StartupError(str(exc)) from exc
            self.metrics.register(self.flow_logs.families)
        self.http = AgentHTTPServer(cfg.api_server.host, cfg.api_server.port)
        self.debug_http: AgentHTTPServer | None = None  # /debug/* on its own address (debugServer.port)
        if cfg.debug_server.enabled and cfg.debug_server.port is not None:
            try:
                self.debug_http = AgentHTTPServer(cfg.debug_server.host, cfg.debug_server.port, section="debugServer")
            except StartupError:
                self.http.stop()
                raise
        self.hubble = None
        self.flow_export = None
        if cfg.hubble.enabled:
            from retina_exporter.hubble.server import HubbleServer, HubbleServerError

            try:
                self.hubble = HubbleServer(cfg.hubble, self.ring, cfg.node_name, __version__,
                                           ready=lambda: not self.not_ready_reasons(), peers=self._hubble_peers,
                                           advertise_address=self._hubble_address())
            except HubbleServerError as exc:
                self._stop_http()
                raise StartupError(str(exc)) from exc
        if cfg.hubble.export_file_path:
            from retina_exporter.hubble.export import FlowFileExporter

            try:
                self.flow_export = FlowFileExporter(cfg.hubble, self.ring, cfg.node_name, self.telemetry)
            except OSError as exc:
                self._stop_http()
                raise StartupError(f"hubble.export.filePath: cannot write {cfg.hubble.export_file_path}: "
                                   f"{exc.strerror}") from exc
        self._stopped = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._register_routes()

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        """``/metrics``, ``/healthz``, ``/readyz`` on the apiServer address (their query parameters are ignored, as
        a scrape config's ``params`` may add some); ``/debug/*`` there too, or on the debugServer address when its
        port is set, or nowhere with ``debugServer.enabled: false``. A ``/debug/*`` endpoint answers 400 naming an
        unknown or repeated query parameter."""
        r = self.http.route
        r("/healthz", self._healthz)
        r("/readyz", self._readyz)
        r("/metrics", self._metrics)

        def no_params(path, fn):
            def handler(q, h):
                check_params(q, path)
                return fn(q, h)
            return handler

        debug = {
            "/debug/config": no_params("/debug/config", lambda q, h: json_response(self.cfg.to_dict())),
            "/debug/flows": self._debug_flows,
            "/debug/plugins": no_params("/debug/plugins", lambda q, h: json_response(
                {p.name: {**p.debug(), "start_durations": self.manager.start_durations.get(p.name)}
                 for p in self.manager.started})),
            "/debug/ipcache": self._debug_ipcache,
            "/debug/otlp": no_params("/debug/otlp", lambda q, h: json_response(
                {**self.otlp.status(), "flow_logs": self.flow_logs.status() if self.flow_logs is not None else
                 {"enabled": False}} if self.otlp is not None else {"enabled": False})),
            "/debug/kubernetes": no_params("/debug/kubernetes", self._debug_kubernetes),
            "/debug/hubble": no_params("/debug/hubble", lambda q, h: json_response(
                {**(self.hubble.status() if self.hubble is not None else {"enabled": False}),
                 "export": ({"file": self.flow_export.path, "written": self.flow_export.written,
                             "lost": self.flow_export.lost} if self.flow_export is not None else None)})),
        }
        ds = self.cfg.debug_server
        if self.debug_http is not None:
            for path, fn in debug.items():
                self.debug_http.route(path, fn)
            self.http.not_found_hint = f"; /debug/* is served on {ds.host}:{ds.port} (debugServer)"
        elif ds.enabled:
            for path, fn in debug.items():
                r(path, fn)
        else:
            self.http.not_found_hint = "; /debug/* is switched off (debugServer.enabled: false)"

    def _start_http(self) -> None:
        self.http.start()
        if self.debug_http is not None:
            self.debug_http.start()

    def _stop_http(self) -> None:
        self.http.stop()
        if self.debug_http is not None:
            self.debug_http.stop()

    def _healthz(self, _q, _h):
        alive = self.manager.readers_alive()
        if alive:
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", b"event readers not running\n"

    def not_ready_reasons(self) -> list[str]:
        reasons = self.manager.not_ready_reasons()
        if self.source is not None and not self.cache.loaded:
            err = self.source.status().get("error")
            reasons.append(f"enrichment source {self.cfg.enrichment.source} not loaded" + (f": {err}" if err else ""))
        if self.kube_control is not None:
            reasons += self.kube_control.not_ready_reasons()
        return reasons

    def _readyz(self, _q, _h):
        reasons = self.not_ready_reasons()
        if not reasons:
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", ("\n".join(reasons) + "\n").encode()

    def _metrics(self, _q, headers):
        content_type, renderer = negotiate(headers.get("Accept", "") if headers else "")
        # The metrics module's pre-rendered label text is the fast path (the same series, rendered once per series).
        families = (self.metrics_module.families(prerendered=True) if self.metrics_module is not None
                    else self.metrics.families())
        return 200, content_type, renderer(families, chunks=True)  # written piece by piece

    def _debug_flows(self, q, _h):
        """The newest ``last`` records that match the query's filters (the same filter code as Hubble's)."""
        from retina_core.convert import to_json_dict, to_proto
        from retina_core.record import FlowRecord
        from retina_exporter.hubble.filters import FilterError, FlowMatcher, filter_from_query

        n = parse_last(q, self.ring.capacity)
        since_ns = parse_since(q)
        try:
            whitelist, blacklist = filter_from_query({k: v for k, v in q.items() if k not in ("last", "since")},
                                                     strict=True)
            matcher = FlowMatcher(whitelist, blacklist)
        except FilterError as exc:
            raise ValueError(str(exc)) from None  # a 400 naming the parameter
        records = [rec for rec in self.ring.last(self.ring.capacity)
                   if rec.__class__ is FlowRecord and rec.time_ns >= since_ns and matcher(rec)]
        return json_response({"flows": [to_json_dict(to_proto(rec)) for rec in records[-n:]]})

    def _hubble_address(self) -> str:
        """The ``host:port`` Peer and GetNodes announce: the listen address's host when it is one, else this node's
        IP (``NODE_IP``/``nodeIP``), else empty (the server then uses the node name)."""
        from retina_exporter.hubble.config import parse_listen_address

        if not self.cfg.hubble.listen_address:
            return ""
        host, port = parse_listen_address(self.cfg.hubble.listen_address)
        if host in ("", "0.0.0.0", "::"):
            host = getattr(self.cfg, "node_ip", "") or ""
        if not host:
            return ""
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _hubble_peers(self) -> dict[str, str]:
        """Peers for Hubble Relay: this node, and with the operator or kubernetes source every node the IP cache
        knows (its InternalIP, at this agent's Hubble port)."""
        from retina_exporter.hubble.peer import peers_from_identities

        own = self.hubble.node if self.hubble is not None else None
        if own is None:
            return {}
        if self.cache is None or self.cfg.enrichment.source not in ("operator", "kubernetes") \
                or not self.hubble.tcp_port:
            return {own.name: own.address}
        return peers_from_identities(self.cache.view(), own.name, own.address, self.hubble.tcp_port)

    def _debug_ipcache(self, q, _h):
        """The IP cache; ``?ip=A``: only that address's entry in ``ips`` (empty when it has none)."""
        check_params(q, "/debug/ipcache", allowed=("ip",))
        ip = parse_ip(q)
        if self.cache is None:
            return json_response({"enabled": False, "reason": "enablePodLevel is off and enrichment.source is none"})
        snap = self.cache.snapshot_json()
        if ip is not None:
            snap["ips"] = {k: v for k, v in snap["ips"].items() if k == ip}
        return json_response(snap)

    def _debug_kubernetes(self, _q, _h):
        if self.kube_control is None:
            return json_response({"enabled": False, "reason": "enrichment.source is neither kubernetes nor operator"})
        return json_response(self.kube_control.status())

    def _pipeline_families(self):
        """Our own control-plane counters of the pipeline (not in Retina)."""
        out = []
        if self.source is not None:
            errors = getattr(self.source, "reload_errors", 0)
            out.append((CONTROL_PLANE_PREFIX + "enrichment_reload_errors_counter", "counter",
                        "Enrichment source reloads that failed (the last good cache was kept)",
                        [((("source", self.cfg.enrichment.source),), errors)]))
        out.append((CONTROL_PLANE_PREFIX + "config_reload_errors_counter", "counter",
                    "Run-time reloads of metricsConfiguration that were rejected (the old one was kept)",
                    [((), self.config_reload_errors)]))
        return out

    # --- run-time reload of metricsConfiguration -----------------------------------------------------------
    def reload_config(self) -> bool:
        """Re-read the config file; apply a changed ``metricsConfiguration``. Returns True when applied."""
        if self.config_path is None or self.metrics_module is None:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.config_reload_errors += 1
            log.error("config reload rejected, keeping the running metricsConfiguration: %s", exc)
            return False
        mcfg = new.metrics_configuration
        if mcfg == self.cfg.metrics_configuration:
            return False
        if self.kube_control is not None:
            self.kube_control.set_file_configuration(mcfg)  # applied unless a MetricsConfiguration is in force
        else:
            self.metrics_module.apply(mcfg)
        self.cfg = dataclasses.replace(self.cfg, metrics_configuration=new.metrics_configuration)
        self.config_reloads += 1
        log.info("metricsConfiguration reloaded")
        return True

    def _config_signature(self):
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _watch_config(self, last, period_s: float = 1.0) -> None:
        while not self._stopped.wait(period_s):
            sig = self._config_signature()
            if sig is None:
                continue
            if sig != last:
                try:
                    self.reload_config()
                except Exception:
                    log.exception("config reload failed")
            last = sig

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        missing = missing_for({p.name: p.capabilities for p in self.plugins})
        if missing:
            raise StartupError(
                f"missing capabilities {missing}: run the agent as root or add them to the container's "
                "securityContext (docs/deploy.md lists what each plugin needs)"
            )
        ensure_bpffs()
        import socket as _socket

        for name in self.cfg.host_interfaces:  # a typo here is the user's to fix, whichever plugins use it
            try:
                _socket.if_nametoindex(name)
            except OSError:
                raise StartupError(
                    f"hostInterfaces: interface {name!r} does not exist in this network namespace; fix the "
                    "hostInterfaces config key or create the interface"
                ) from None
        if self.source is not None:
            self.source.start(self.cache)
        if self.kube_control is not None:
            self.kube_control.start()  # before the metrics module reads: annotation mode starts observing nothing
        if self.metrics_module is not None:
            self.metrics_module.start()
        try:
            self.manager.start()
        except StartupError:
            self._stop_pipeline()
            self._stop_http()
            raise
        if self.kube_control is not None:
            self.kube_control.kick()  # packetparser's IP-of-interest map exists now: write the claims at once
        self._start_http()
        if self.hubble is not None:
            self.hubble.start()
        if self.flow_export is not None:
            self.flow_export.start()
        if self.otlp is not None:
            self.otlp.start()
        if self.flow_logs is not None:
            self.flow_logs.start()
        if self.config_path is not None and self.metrics_module is not None:
            self._watch_thread = threading.Thread(target=self._watch_config, args=(self._config_signature(),),
                                                  name="config-watch", daemon=True)
            self._watch_thread.start()
        log.info("retina-exporter %s listening on %s:%d", __version__, self.cfg.api_server.host, self.http.port)
        if self.debug_http is not None:
            log.info("/debug/* served on %s:%d", self.cfg.debug_server.host, self.debug_http.port)

    def _stop_pipeline(self) -> None:
        if self.kube_control is not None:
            self.kube_control.stop()
        if self.metrics_module is not None:
            self.metrics_module.stop()
        if self.source is not None:
            self.source.stop()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.manager.stop()
        if self.flow_logs is not None:
            self.flow_logs.stop()  # before the SDK's logs pipeline is flushed and shut down by otlp.stop()
        if self.otlp is not None:
            self.otlp.stop()  # a last export with the final values, unless the collector is failing
        self._stop_pipeline()
        if self.hubble is not None:
            self.hubble.stop()
        if self.flow_export is not None:
            self.flow_export.stop()
        self._stop_http()

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
