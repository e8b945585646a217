"""The agent's Hubble gRPC server: ``observer.Observer``, ``peer.Peer``, ``grpc.health.v1.Health`` and server
reflection, on a UNIX socket (plaintext, ``hubble.socketPath``) and optionally TCP (``hubble.listenAddress``,
TLS when ``hubble.tls.certFile`` is set, mTLS when ``hubble.tls.clientCAFiles`` too).

* **Health.** ``hubble status`` first asks ``Health/Check`` for the service ``hubble.server.Observer``; it answers
  ``SERVING`` once the agent is ready (the ``ready`` callable, polled every half second by a :class:`Worker`) and
  ``NOT_SERVING`` before and while not ready. The overall service ``""`` follows the same state.
* **TLS.** The certificate, key and client CAs are re-read when any of the files changes (checked at each new
  connection by gRPC's dynamic credentials), so a cert-manager rotation needs no restart. TLS 1.2+ (gRPC's core).
* **Streams.** Each open ``GetFlows``/``Notify`` stream holds a server thread: the pool is sized for
  ``max_streams`` concurrent streams plus unary calls; more streams wait for a free thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from retina_core.proto import observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc
from retina_core.ring import Ring
from retina_core.worker import Worker
from retina_exporter.hubble.config import HubbleConfig, parse_listen_address
from retina_exporter.hubble.observer import NodeInfo, ObserverService, RingStats
from retina_exporter.hubble.peer import PeerService, PeerSource, tls_server_name

__all__ = ["HEALTH_SERVICE", "HubbleServer", "HubbleServerError"]

log = logging.getLogger(__name__)

HEALTH_SERVICE = "hubble.server.Observer"  # the name `hubble status` checks (not a proto service)
DEFAULT_MAX_STREAMS = 128


class HubbleServerError(RuntimeError):
    """The server cannot start (port in use, unreadable certificate ...); the message names the key to fix."""


class _ReadinessWatcher(Worker):
    """Sets the health status of :data:`HEALTH_SERVICE` (and ``""``) from ``ready()`` every half second."""

    def __init__(self, servicer: health.HealthServicer, ready: Callable[[], bool]) -> None:
        super().__init__("hubble-health")
        self.servicer = servicer
        self.ready = ready
        self.serving: bool | None = None

    def update(self) -> None:
        try:
            ok = bool(self.ready())
        except Exception:  # a failing readiness check means not ready
            ok = False
        if ok != self.serving:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            self.servicer.set(HEALTH_SERVICE, status)
            self.servicer.set("", status)
            self.serving = ok

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.update()


class _CertFiles:
    """The TLS files and their stat signature; :meth:`fetch` returns a new configuration when one changed."""

    def __init__(self, cfg: HubbleConfig) -> None:
        self.cert, self.key, self.cas = cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_files
        self.signature = self._signature()
        self.reloads = 0

    def _signature(self) -> tuple:
        out = []
        for path in (self.cert, self.key, *self.cas):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def configuration(self) -> Any:
        def read(path: str, key: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise HubbleServerError(f"hubble.tls.{key}: cannot read {path}: {exc.strerror}") from None

        pair = [(read(self.key, "keyFile"), read(self.cert, "certFile"))]
        roots = b"".join(read(p, "clientCAFiles") for p in self.cas) or None
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=roots)

    def fetch(self) -> Any:
        sig = self._signature()
        if sig == self.signature:
            return None
        try:
            config = self.configuration()
        except HubbleServerError as exc:  # a half-written rotation: keep serving the old certificate
            log.warning("hubble: keeping the current TLS certificate: %s", exc)
            return None
        self.signature = sig
        self.reloads += 1
        log.info("hubble: TLS certificate files changed; new connections use the new ones")
        return config


class HubbleServer:
    """Serves Hubble's APIs for the agent's ``ring``. ``ready()`` drives health; ``peers()`` the Peer stream
    (default: this node only)."""

    def __init__(self, cfg: HubbleConfig, ring: Ring, node_name: str, version: str, *,
                 ready: Callable[[], bool] = lambda: True, peers: PeerSource | None = None,
                 advertise_address: str = "", max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.cfg = cfg
        self.ring = ring
        self.node_name = node_name
        self.stopping = threading.Event()
        self.tcp_port: int | None = None
        self.socket_path = cfg.socket_path or None
        host_port = parse_listen_address(cfg.listen_address) if cfg.listen_address else None
        self.node = NodeInfo(node_name, advertise_address, version, time.monotonic(), cfg.tls_enabled,
                             tls_server_name(node_name) if cfg.tls_enabled else "")
        self.stats = RingStats(ring)
        self.observer = ObserverService(ring, self.node, self.stats, self.stopping)
        self.peer = PeerService(peers or (lambda: {self.node.name: self.node.address}), cfg.tls_enabled,
                                self.stopping)
        self.health = health.HealthServicer()
        self.readiness = _ReadinessWatcher(self.health, ready)
        self.certs = _CertFiles(cfg) if cfg.tls_enabled else None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_streams + 8,
                                                             thread_name_prefix="hubble-grpc"),
                                  maximum_concurrent_rpcs=max_streams + 8)
        observer_pb2_grpc.add_ObserverServicer_to_server(self.observer, self.server)
        peer_pb2_grpc.add_PeerServicer_to_server(self.peer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((
            observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name,
            peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ), self.server)
        self.readiness.update()  # NOT_SERVING until the first readiness check says otherwise
        self._bind(host_port)
        if not advertise_address and host_port is not None:  # the address Peer and GetNodes announce
            host = host_port[0] if host_port[0] not in ("", "0.0.0.0", "::") else node_name
            self.node = dataclasses.replace(self.node, address=f"{host}:{self.tcp_port}")
            self.observer.node = self.node

    def _bind(self, host_port: tuple[str, int] | None) -> None:
        if self.socket_path:
            directory = os.path.dirname(self.socket_path)
            try:
                os.makedirs(directory, exist_ok=True)
                if os.path.exists(self.socket_path):
                    os.unlink(self.socket_path)  # a stale socket of an earlier run
            except OSError as exc:
                raise HubbleServerError(f"hubble.socketPath: cannot use {self.socket_path}: {exc.strerror}; set "
                                        "another path or empty (no socket)") from None
            if self.server.add_insecure_port(f"unix:{self.socket_path}") == 0:
                raise HubbleServerError(f"hubble.socketPath: cannot listen on {self.socket_path}")
        if host_port is not None:
            host, port = host_port
            target = f"[{host}]:{port}" if ":" in host else f"{host or '[::]'}:{port}"
            try:
                if self.certs is not None:
                    creds = grpc.dynamic_ssl_server_credentials(
                        self.certs.configuration(), self.certs.fetch,
                        require_client_authentication=bool(self.cfg.tls_client_ca_files))
                    bound = self.server.add_secure_port(target, creds)
                else:
                    bound = self.server.add_insecure_port(target)
            except RuntimeError:
                bound = 0
            if bound == 0:
                raise HubbleServerError(f"hubble.listenAddress: cannot listen on {self.cfg.listen_address} (port in "
                                        "use or address not on this host); change hubble.listenAddress")
            self.tcp_port = bound

    def start(self) -> None:
        self.server.start()
        self.stats.start()
        self.readiness.start()
        log.info("hubble: serving on %s", ", ".join(filter(None, (
            f"unix:{self.socket_path}" if self.socket_path else "",
            f"{self.cfg.listen_address} (port {self.tcp_port}, {'mTLS' if self.cfg.tls_client_ca_files else 'TLS' if self.certs else 'plaintext'})"
            if self.tcp_port else ""))))

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving: open streams end (followers return at once), then the socket file is removed."""
        self.stopping.set()
        self.ring.notify_all()
        self.server.stop(grace_s).wait(grace_s + 2)
        self.readiness.stop()
        self.stats.stop()
        if self.socket_path:
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass

    def status(self) -> dict[str, Any]:
        return {"socket": self.socket_path, "tcp_port": self.tcp_port, "tls": bool(self.certs),
                "mtls": bool(self.cfg.tls_client_ca_files), "serving": bool(self.readiness.serving),
                "streams": self.observer.streams, "streams_total": self.observer.streams_total,
                "tls_reloads": self.certs.reloads if self.certs else 0}
