"""The operator: informers -> address map -> IpCache gRPC stream, MetricsConfiguration status, debug HTTP.

::

    op = Operator(kube_config, grpc_port=9090, http_port=9091)
    op.start()            # binds both ports (BindError), starts the informers in the background
    ...
    op.stop()             # SHUTDOWN to every agent, then close (send_shutdown=False: cut them, as a crash would)

:meth:`Operator.run_until_signal` is what ``retina-operator`` runs: start, wait for SIGTERM/SIGINT, stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from retina_core.kube.client import describe_target, make_api_client

from retina_operator.cluster import ClusterState
from retina_core.httpserver import Response, RouteServer, json_response, text_response
from retina_operator.metrics import CONTENT_TYPE, OperatorCollector, make_registry, render
from retina_operator.metricsconfig import MetricsConfigController
from retina_operator.server import BindError, IpCacheServer, TlsError, TlsFiles

__all__ = ["BindError", "Operator", "TlsError", "TlsFiles"]

log = logging.getLogger(__name__)


class Operator:
    """See the module docstring.

    ``kube_config``: kubeconfig path, ``kubernetes.client.Configuration`` or ``ApiClient``, or None (in-cluster when
    ``KUBERNETES_SERVICE_HOST`` is set, else the default kubeconfig); ``context``: kubeconfig context.
    ``grpc_host``/``grpc_port``, ``http_host``/``http_port``: where to listen (port 0: any free port; the bound
    ports are :attr:`grpc_port`/:attr:`http_port` after :meth:`start`). ``tls``: :class:`TlsFiles` or None.
    ``queue_size``: how many updates an agent may fall behind before it is disconnected. ``metrics_configurations``:
    run the MetricsConfiguration controller. ``shutdown_grace_s``: how long :meth:`stop` waits for agents to take
    their SHUTDOWN. The rest tune the informers (a resync is a full cluster-wide relist of every resource, so it is
    rare by default: 30 min; watches already keep the picture current). Raises whatever :func:`make_api_client` raises for a bad
    configuration (``kubernetes.config.ConfigException``, ``OSError``).
    """

    def __init__(
        self,
        kube_config: Any = None,
        *,
        context: str | None = None,
        grpc_host: str = "0.0.0.0",
        grpc_port: int = 9090,
        http_host: str = "0.0.0.0",
        http_port: int = 9091,
        tls: TlsFiles | None = None,
        queue_size: int = 8192,
        metrics_configurations: bool = True,
        shutdown_grace_s: float = 2.0,
        resync_period_s: float = 1800.0,
        watch_timeout_s: float = 300.0,
        request_timeout_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.api_client = make_api_client(kube_config, context=context)
        self.api_server = describe_target(self.api_client)
        informer_options = dict(resync_period_s=resync_period_s, watch_timeout_s=watch_timeout_s,
                                request_timeout_s=request_timeout_s, backoff_initial_s=backoff_initial_s,
                                backoff_max_s=backoff_max_s)
        self.state = ClusterState(self.api_client, queue_size=queue_size, **informer_options)
        self.metrics_config = (MetricsConfigController(self.api_client, retry_initial_s=backoff_initial_s,
                                                       retry_max_s=backoff_max_s, **informer_options)
                               if metrics_configurations else None)
        self.server = IpCacheServer(self.state, grpc_host, grpc_port, tls=tls)
        self.http_host = http_host
        self.http_port_requested = http_port
        self.http: RouteServer | None = None
        self.shutdown_grace_s = shutdown_grace_s
        self.started_at: float | None = None
        self._stopped = False
        self.registry = make_registry(OperatorCollector(self.stats, self._extra_informer_health))

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def grpc_port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int:
        return self.http.port if self.http is not None else 0

    def start(self) -> None:
        """Bind the HTTP and gRPC ports and start everything. Raises :class:`BindError` (one line naming the port)
        or :class:`TlsError` (a TLS file cannot be loaded); nothing is left running then."""
        try:
            self.http = RouteServer(self.http_host, self.http_port_requested, thread_name="operator-http")
        except OSError as exc:
            raise BindError(f"cannot listen on {self.http_host}:{self.http_port_requested} for HTTP: "
                            f"{exc.strerror or exc}", exc.errno) from None
        self._routes(self.http)
        try:
            self.server.start()
        except BaseException:
            self.http.stop()
            raise
        self.http.start()
        self.state.start()
        if self.metrics_config is not None:
            self.metrics_config.start()
        self.started_at = time.time()
        log.info("operator: watching %s; gRPC on %s:%d, HTTP on %s:%d", self.api_server, self.server.host,
                 self.grpc_port, self.http_host, self.http_port)

    def stop(self, send_shutdown: bool = True) -> None:
        """Send SHUTDOWN to every agent (unless ``send_shutdown`` is False) and stop. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.stop(send_shutdown=send_shutdown, grace_s=self.shutdown_grace_s)
        if self.metrics_config is not None:
            self.metrics_config.stop()
        self.state.stop()
        if self.http is not None:
            self.http.stop()
        try:
            self.api_client.close()
        except Exception:  # noqa: BLE001
            pass
        if self.started_at is not None:
            log.info("operator: stopped")

    def run_until_signal(self) -> int:
        """Start, serve until SIGTERM or SIGINT, then stop (SHUTDOWN to every agent). Returns the exit status."""
        done = threading.Event()
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            received.append(signum)
            done.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not done.wait(1.0):
                pass
            log.info("operator: %s received; sending SHUTDOWN to %d agent(s)", signal.Signals(received[0]).name,
                     len(self.server.agents()))
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        return 0

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state.ready.is_set()

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons): ready once every informer of the address map has listed (it stays ready through later
        API-server trouble: the map is served as last seen). Reasons name what is missing or failing."""
        reasons = []
        for name, inf in self.state.informers.items():
            if not inf.synced:
                reasons.append(f"informer {name} not synced yet" + (f": {inf.error}" if inf.error else ""))
        return self.ready, reasons

    def stats(self) -> dict[str, Any]:
        st = self.state
        with st.lock:
            by_kind = st.ipmap.kind_counts()
            entries = len(st.ipmap)
            upserts, deletes, skipped = st.ipmap.upserts, st.ipmap.deletes, st.ipmap.skipped
            head = st.log.head
        agents = self.server.agents()
        return {
            "ready": self.ready,
            "ready_at": st.ready_at,
            "api_server": self.api_server,
            "entries": entries,
            "entries_by_kind": by_kind,
            "objects": st.counts(),
            "upserts_total": upserts,
            "deletes_total": deletes,
            "skipped_identical_upserts_total": skipped,
            "log": {"head": head, "capacity": st.log.capacity},
            "connected_agents": len(agents),
            "agents": agents,
            "updates_sent_total": self.server.updates_sent,
            "batches_sent_total": self.server.batches_sent,
            "snapshots_sent_total": self.server.snapshots_sent,
            "lagging_disconnects_total": self.server.lagging_disconnects,
            "shutdowns_sent_total": self.server.shutdowns_sent,
            "informers": st.informer_health(),
            "metrics_configurations": self.metrics_config.status() if self.metrics_config is not None else None,
        }

    def _extra_informer_health(self) -> dict[str, dict[str, Any]]:
        """Informers outside the address map, for ``/metrics``: the MetricsConfiguration one when it runs."""
        if self.metrics_config is None:
            return {}
        return {"metricsconfigurations": self.metrics_config.informer.health()}

    def ipcache_json(self, ip: str | None = None) -> dict[str, Any]:
        st = self.state
        with st.lock:
            items = sorted(st.ipmap.resolved.items())
            claims = st.ipmap.claims(ip) if ip else None
            head = st.log.head
        out: dict[str, Any] = {"ready": self.ready, "entries": len(items), "log_head": head}
        if ip:
            out["ips"] = {k: e.to_dict() for k, e in items if k == ip}
            out["claims"] = [{"owner_kind": o[0], "owner_uid": o[1], "rank": list(r), "entry": e.to_dict()}
                             for o, (r, e) in sorted(claims.items(), key=lambda kv: kv[1][0], reverse=True)]
        else:
            out["ips"] = {k: e.to_dict() for k, e in items}
        return out

    # -- HTTP --------------------------------------------------------------------------------------------------

    def _routes(self, http: RouteServer) -> None:
        def healthz(_q: dict, _h: Any) -> Response:
            problems = []
            if self.server._stopped.is_set():
                problems.append("gRPC server stopped")
            problems += [f"informer {n} thread died" for n, inf in self.state.informers.items()
                         if self.started_at and not inf.alive() and not self._stopped]
            return text_response("ok\n") if not problems else text_response("\n".join(problems) + "\n", 503)

        def readyz(_q: dict, _h: Any) -> Response:
            ok, reasons = self.readiness()
            if ok:
                return text_response("ready\n")
            return text_response("not ready:\n" + "".join(f"  {r}\n" for r in reasons), 503)

        def ipcache(q: dict, _h: Any) -> Response:
            ip = (q.get("ip") or [None])[0]
            return json_response(self.ipcache_json(ip), sort_keys=True)

        def stats(_q: dict, _h: Any) -> Response:
            return json_response(self.stats(), sort_keys=True)

        def metrics(_q: dict, _h: Any) -> Response:
            return 200, CONTENT_TYPE, render(self.registry)

        def index(_q: dict, _h: Any) -> Response:
            return text_response("".join(f"{p}\n" for p in sorted(http.routes)))

        for path, fn in (("/healthz", healthz), ("/readyz", readyz), ("/debug/ipcache", ipcache),
                         ("/debug/stats", stats), ("/metrics", metrics), ("/", index)):
            http.route(path, fn)
