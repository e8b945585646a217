"""The ``operator`` source: identities streamed by retina-operator (``ipcache.IpCache/StreamUpdates``).

One background thread keeps one stream open to the operator (``enrichment.operatorAddress``, default
``retina-operator:9090``; plaintext, TLS, or mutual TLS) and applies what arrives to the IP cache:

* **Snapshot, built aside.** A stream starts with the whole picture (UPSERTs) and a ``SYNC_COMPLETE`` marker. The
  snapshot is collected in a staging map and published with one :meth:`IPCache.publish` when ``SYNC_COMPLETE``
  arrives: it replaces this source's previous content atomically. A reconnect therefore never empties or
  half-fills the cache: until the new snapshot is complete, lookups answer from the old one.
* **Deltas.** After ``SYNC_COMPLETE`` every received batch is one :meth:`IPCache.apply` (readers see a batch whole
  or not at all), in the order the operator sent them; several updates of one address in a batch collapse into
  the last one. An address has one entry: an UPSERT of another kind than the address had (a pod address that is
  now a node's) removes the old kind's entry in the same batch.
* **Disconnects keep the cache.** Whether the operator sends ``SHUTDOWN`` (a restart or a rollout), the connection
  breaks, or the operator drops us for lagging (``DATA_LOSS``), the cache keeps the last picture and the source
  reconnects with exponential backoff and jitter (``backoff_initial_s`` doubling to ``backoff_max_s``, times a
  random factor in [0.5, 1); back to the start after a stream that reached ``SYNC_COMPLETE``). Changes made while
  the operator was away arrive with the next snapshot.
* ``status()["loaded"]`` is False until the first ``SYNC_COMPLETE`` (the agent's /readyz waits for it) and stays
  True after. ``status()["synced"]`` tells whether the current stream is in sync.

Updates from an operator that does not send ``kind`` (the Rust reference) are classified as Retina's lookup
does: a pod if ``pod_name`` is set, else a service if ``service_name`` is, else a node. A node address of this
agent's own node gets kind ``host``. Pods flagged ``observed`` (``retina.sh=observe`` on the pod or its
namespace) are listed by :meth:`OperatorSource.observed_ips`.

Option keys (``enrichment.<key>``, read by :func:`source_from_options`):

==========================  ========================  ==========================================================
key                         default                   meaning
==========================  ========================  ==========================================================
``operatorAddress``         ``retina-operator:9090``  ``host:port`` of retina-operator's gRPC port
``operatorTLS``             ``false``                 TLS (also turned on by any of the four keys below)
``operatorCAFile``          ``""``                    CA that signed the operator's certificate (empty: system CAs)
``operatorCertFile``        ``""``                    client certificate for mutual TLS (with operatorKeyFile)
``operatorKeyFile``         ``""``                    its private key
``operatorServerName``      ``""``                    name checked in the operator's certificate (empty: the host)
``operatorStartTimeout``    ``10s``                   how long the agent's start waits for the first snapshot
==========================  ========================  ==========================================================
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE, Identity
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes, ip_text
from retina_core.units import ConfigError
from enricher.config import DEFAULT_OPERATOR_ADDRESS, EnrichmentConfig
from retina_core.worker import Worker

__all__ = ["CHANNEL_OPTIONS", "DEFAULT_ADDRESS", "OperatorSource", "source_from_config"]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = DEFAULT_OPERATOR_ADDRESS

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),  # ping the operator every 20 s, even on a quiet stream ...
    ("grpc.keepalive_timeout_ms", 10_000),  # ... and give the connection up when a ping is not answered in 10 s
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.enable_retries", 0),  # our loop retries (with a fresh snapshot)
    ("grpc.use_local_subchannel_pool", 1),  # a connection of our own: each attempt really reconnects
]

_MAP_KIND = {KIND_POD: KIND_POD, KIND_SERVICE: KIND_SERVICE, KIND_NODE: KIND_NODE, KIND_HOST: KIND_NODE}


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"enrichment.{what}: cannot read {path}: {exc.strerror or exc}") from None


class _Stop(Exception):
    pass


class OperatorSource(Worker):
    """Feeds the cache from retina-operator (see the module docstring).

    ``node_name``: this agent's node (sent to the operator; its node addresses get kind ``host``). ``address``:
    ``host:port`` of the operator. TLS: ``tls`` (or any of the files) turns it on; ``ca_file`` verifies the
    operator (system roots when None), ``cert_file``/``key_file`` are the client certificate for mutual TLS,
    ``server_name`` overrides the name checked in the operator's certificate. ``start_timeout_s``: how long
    :meth:`start` waits for the first SYNC_COMPLETE before returning (the stream keeps going in the background).
    ``restart_grace_s``: after a SHUTDOWN, failures to reconnect are expected (a rollout) and logged at DEBUG for
    this long; after it, as any outage (one WARNING). ``channel_options``: extra gRPC channel arguments (after
    :data:`CHANNEL_OPTIONS`, so they win). Raises :class:`~retina_exporter.config.ConfigError` (one line) for bad
    values or unreadable files.
    """

    name = "operator"

    def __init__(
        self,
        node_name: str,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
        start_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        restart_grace_s: float = 120.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        rng: random.Random | None = None,
    ) -> None:
        if not address or not isinstance(address, str):
            raise ConfigError("enrichment.operatorAddress: must be host:port of retina-operator, e.g. "
                              f"{DEFAULT_ADDRESS}")
        if bool(cert_file) != bool(key_file):
            raise ConfigError("enrichment.operatorCertFile: the client certificate and key (operatorKeyFile) go "
                              "together; set both or neither")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.node_name = node_name
        self.address = address
        self.tls = bool(tls or ca_file or cert_file or server_name)
        self._credentials = None
        if self.tls:
            import grpc

            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file, "operatorCAFile"),
                private_key=_read(key_file, "operatorKeyFile"),
                certificate_chain=_read(cert_file, "operatorCertFile"))
        self.server_name = server_name
        self.start_timeout_s = start_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.restart_grace_s = restart_grace_s
        self.channel_options = list(channel_options)
        self._rng = rng or random.Random()
        self.telemetry: Any = None
        self.cache: IPCache | None = None
        # Status (written by the stream thread).
        self.loaded = False
        self.synced = False
        self.connected = False
        self.error: str | None = None
        self.entries = 0
        self.updated_at: float | None = None
        self.streams = 0
        self.syncs = 0
        self.shutdowns = 0
        self.lagging_disconnects = 0
        self.updates_received = 0
        self.invalid_updates = 0
        self.last_sync_at: float | None = None
        # The published picture: ip -> map kind, and the observed pod addresses.
        self._live: dict[bytes, str] = {}
        self._observed: set[bytes] = set()
        self._loaded_event = threading.Event()
        Worker.__init__(self, "enricher-operator")
        self._call: Any = None
        self._call_lock = threading.Lock()
        self._attempt = 0
        self._outage_since: float | None = None
        self._restart_grace_until = 0.0
        self._invalid_logged = False

    # -- Source protocol ---------------------------------------------------------------------------------------

    def start(self, cache: IPCache) -> None:
        """Register, connect in the background, and wait up to ``start_timeout_s`` for the first snapshot."""
        if self.cache is not None:
            raise RuntimeError("operator source already started")
        self.cache = cache
        cache.register(self)
        Worker.start(self)
        if self.start_timeout_s > 0 and not self._loaded_event.wait(self.start_timeout_s):
            log.warning("enrichment operator: no snapshot from %s within %gs (%s); continuing in the background",
                        self.address, self.start_timeout_s, self.error or "no answer yet")

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Close the stream and stop the thread; the cache keeps the last picture. Idempotent."""
        return Worker.stop(self, timeout_s)

    def _wake_thread(self) -> None:
        self._cancel()

    def wait_loaded(self, timeout_s: float | None = None) -> bool:
        return self._loaded_event.wait(timeout_s)

    def observed_ips(self) -> frozenset[bytes]:
        """Packed addresses of pods that opted in to observation (``retina.sh=observe``)."""
        return frozenset(self._observed)

    def status(self) -> dict[str, Any]:
        """``loaded`` (a snapshot was published, stays True), ``error`` (the last connection problem, None while
        connected), ``entries``, ``updated_at``, plus ``address``, ``tls``, ``connected``, ``synced`` (the current
        stream delivered its snapshot), ``streams``, ``syncs``, ``shutdowns`` (SHUTDOWNs received),
        ``lagging_disconnects``, ``updates_received``, ``invalid_updates``, ``observed``, ``last_sync_at``."""
        return {
            "loaded": self.loaded,
            "error": self.error,
            "entries": self.entries,
            "updated_at": self.updated_at,
            "address": self.address,
            "tls": self.tls,
            "connected": self.connected,
            "synced": self.synced,
            "streams": self.streams,
            "syncs": self.syncs,
            "shutdowns": self.shutdowns,
            "lagging_disconnects": self.lagging_disconnects,
            "updates_received": self.updates_received,
            "invalid_updates": self.invalid_updates,
            "observed": len(self._observed),
            "last_sync_at": self.last_sync_at,
        }

    # -- the connection loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            outcome = "error"
            try:
                outcome = self._stream_once()
            except _Stop:
                break
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                if self._stop.is_set():
                    break
                self._failed(self._describe(exc), exc)
            finally:
                self.connected = False
                self.synced = False
            if self._stop.is_set():
                break
            if outcome == "shutdown":
                # The operator is restarting on purpose: come back soon, without counting it as trouble.
                self._attempt = 0
                self._stop.wait(self.backoff_initial_s * self._rng.uniform(0.5, 1.0))
            else:
                self._backoff()

    def _backoff(self) -> None:
        delay = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        self._stop.wait(delay * self._rng.uniform(0.5, 1.0))

    def _failed(self, what: str, exc: BaseException | None = None) -> None:
        if time.monotonic() < self._restart_grace_until:
            # The operator said it was going away (SHUTDOWN): failing to reach it during a rollout is expected.
            self.error = f"the operator at {self.address} is restarting (SHUTDOWN received); last attempt: {what}"
            log.debug("enrichment operator: %s", self.error)
            return
        self.error = what
        if self._outage_since is None:
            self._outage_since = time.time()
            log.warning("enrichment operator: %s; keeping the last picture (%d entries) and reconnecting with "
                        "backoff (up to %gs)", what, self.entries, self.backoff_max_s)
        else:
            log.debug("enrichment operator: again: %s", what)

    def _describe(self, exc: BaseException) -> str:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            code = exc.code()
            details = (exc.details() or "").replace("\n", " ")
            if code == grpc.StatusCode.DATA_LOSS:
                return f"the operator at {self.address} disconnected us for lagging ({details})"
            if code == grpc.StatusCode.UNAVAILABLE:
                return f"cannot reach the operator at {self.address} ({details})"
            return f"stream from the operator at {self.address} failed: {code.name} ({details})"
        return f"stream from the operator at {self.address} failed: {type(exc).__name__}: {exc}"

    def _channel(self) -> Any:
        import grpc

        options = list(CHANNEL_OPTIONS) + self.channel_options
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self._credentials is not None:
            return grpc.secure_channel(self.address, self._credentials, options=options)
        return grpc.insecure_channel(self.address, options=options)

    def _cancel(self) -> None:
        with self._call_lock:
            call = self._call
        if call is not None:
            try:
                call.cancel()
            except Exception:  # noqa: BLE001
                pass

    def _stream_once(self) -> str:
        """One stream, from connect to its end. Returns "shutdown" (SHUTDOWN received) or "ended" (closed with
        OK without SHUTDOWN); raises on errors."""
        import grpc

        from retina_core.proto import ipcache_pb2, ipcache_pb2_grpc

        channel = self._channel()
        try:
            stub = ipcache_pb2_grpc.IpCacheStub(channel)
            call = stub.StreamUpdates(ipcache_pb2.IpCacheRequest(node_name=self.node_name))
            with self._call_lock:
                self._call = call
            if self._stop.is_set():
                raise _Stop()
            self.streams += 1
            staging: dict[bytes, tuple[str, Identity, bool]] | None = {}
            try:
                for batch in call:
                    if not self.connected:
                        self.connected = True
                    staging, ended = self._apply_batch(batch, staging)
                    if ended:
                        return "shutdown"
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    raise _Stop() from None
                if exc.code() == grpc.StatusCode.DATA_LOSS:
                    self.lagging_disconnects += 1
                raise
            if self._stop.is_set():
                raise _Stop()
            self._failed(f"the operator at {self.address} ended the stream without SHUTDOWN")
            return "ended"
        finally:
            with self._call_lock:
                self._call = None
            channel.close()

    # -- applying ----------------------------------------------------------------------------------------------

    def _identity(self, u: Any) -> tuple[bytes, str, Identity, bool] | None:
        from retina_core.proto import ipcache_pb2

        try:
            packed = ip_bytes(u.ip.strip())
        except ValueError:
            self._invalid(f"UPSERT with an invalid address {u.ip!r}")
            return None
        kind_enum = u.kind
        if kind_enum == ipcache_pb2.KIND_POD or (kind_enum == ipcache_pb2.KIND_UNSPECIFIED and u.pod_name):
            kind = KIND_POD
        elif kind_enum == ipcache_pb2.KIND_SERVICE or (kind_enum == ipcache_pb2.KIND_UNSPECIFIED and u.service_name):
            kind = KIND_SERVICE
        elif kind_enum in (ipcache_pb2.KIND_NODE, ipcache_pb2.KIND_UNSPECIFIED):
            kind = KIND_HOST if u.node_name and u.node_name == self.node_name else KIND_NODE
        else:
            self._invalid(f"UPSERT of {u.ip} with an unknown kind {kind_enum}")
            return None
        ident = Identity(kind, namespace=u.namespace, pod_name=u.pod_name, labels=tuple(u.labels),
                         workloads=tuple((w.kind, w.name) for w in u.workloads), service=u.service_name,
                         node_name=u.node_name, zone=u.zone, ip=ip_text(packed))
        return packed, _MAP_KIND[kind], ident, bool(u.observed and kind == KIND_POD)

    def _invalid(self, what: str) -> None:
        self.invalid_updates += 1
        if not self._invalid_logged:
            self._invalid_logged = True
            log.warning("enrichment operator: ignoring an invalid update from %s: %s (further ones at DEBUG)",
                        self.address, what)
        else:
            log.debug("enrichment operator: ignoring an invalid update: %s", what)

    def _apply_batch(self, batch: Any, staging: dict[bytes, tuple[str, Identity, bool]] | None
                     ) -> tuple[dict[bytes, tuple[str, Identity, bool]] | None, bool]:
        """Apply one batch. ``staging``: the snapshot being collected (None once in sync). Returns the new staging
        and whether SHUTDOWN arrived."""
        from retina_core.proto import ipcache_pb2

        changes: dict[bytes, tuple[str, Identity, bool] | None] = {}
        shutdown = False
        for u in batch.updates:
            self.updates_received += 1
            t = u.update_type
            if t == ipcache_pb2.UPSERT:
                r = self._identity(u)
                if r is None:
                    continue
                packed, mkind, ident, observed = r
                target = staging if staging is not None else changes
                target[packed] = (mkind, ident, observed)
            elif t == ipcache_pb2.DELETE:
                try:
                    packed = ip_bytes(u.ip.strip())
                except ValueError:
                    self._invalid(f"DELETE with an invalid address {u.ip!r}")
                    continue
                if staging is not None:
                    staging.pop(packed, None)
                else:
                    changes[packed] = None
            elif t == ipcache_pb2.SYNC_COMPLETE:
                if staging is None:
                    continue  # a repeated marker: nothing to do
                self._flush(changes)
                changes = {}
                self._publish_snapshot(staging)
                staging = None
            elif t == ipcache_pb2.SHUTDOWN:
                shutdown = True
                break
            else:
                self._invalid(f"unknown update type {t}")
        if staging is None:
            self._flush(changes)
        if shutdown:
            self.shutdowns += 1
            self._attempt = 0
            self._restart_grace_until = time.monotonic() + self.restart_grace_s
            self.error = f"the operator at {self.address} is restarting (SHUTDOWN received)"
            log.info("enrichment operator: the operator at %s is shutting down; keeping the last picture (%d "
                     "entries) and reconnecting", self.address, self.entries)
        return staging, shutdown

    def _publish_snapshot(self, staging: dict[bytes, tuple[str, Identity, bool]]) -> None:
        cache = self.cache
        assert cache is not None
        maps: dict[str, dict[bytes, Identity]] = {KIND_POD: {}, KIND_SERVICE: {}, KIND_NODE: {}}
        for ip, (mkind, ident, _obs) in staging.items():
            maps[mkind][ip] = ident
        cache.publish(self.name, pods=maps[KIND_POD], services=maps[KIND_SERVICE], nodes=maps[KIND_NODE])
        self._live = {ip: mkind for ip, (mkind, _i, _o) in staging.items()}
        self._observed = {ip for ip, (_k, _i, obs) in staging.items() if obs}
        self.entries = len(self._live)
        self.updated_at = self.last_sync_at = time.time()
        self.syncs += 1
        self.synced = True
        self.loaded = True
        self._attempt = 0
        self._restart_grace_until = 0.0
        self.error = None
        if self._outage_since is not None:
            log.info("enrichment operator: in sync with %s again after %.1fs: %d entries", self.address,
                     time.time() - self._outage_since, self.entries)
            self._outage_since = None
        elif self.syncs == 1:
            log.info("enrichment operator: snapshot from %s: %d entries", self.address, self.entries)
        self._loaded_event.set()

    def _flush(self, changes: Mapping[bytes, tuple[str, Identity, bool] | None]) -> None:
        """One cache.apply for the final state of every address changed by a batch."""
        if not changes:
            return
        upserts: list[tuple[str, bytes, Identity]] = []
        deletes: list[tuple[str, bytes]] = []
        for ip, new in changes.items():
            old_kind = self._live.get(ip)
            if new is None:
                if old_kind is not None:
                    deletes.append((old_kind, ip))
                    del self._live[ip]
                self._observed.discard(ip)
                continue
            mkind, ident, observed = new
            if old_kind is not None and old_kind != mkind:
                deletes.append((old_kind, ip))
            upserts.append((mkind, ip, ident))
            self._live[ip] = mkind
            if observed:
                self._observed.add(ip)
            else:
                self._observed.discard(ip)
        if upserts or deletes:
            assert self.cache is not None
            self.cache.apply(self.name, upserts=upserts, deletes=deletes)
        self.entries = len(self._live)
        self.updated_at = time.time()


# -- construction from the configuration --------------------------------------------------------------------------


def source_from_config(cfg: EnrichmentConfig, node_name: str) -> OperatorSource:
    """An :class:`OperatorSource` from the parsed ``enrichment`` section. Raises :class:`ConfigError` with a
    one-line message (an unreadable TLS file, a certificate without its key)."""
    return OperatorSource(node_name, cfg.operator_address, tls=cfg.operator_tls, ca_file=cfg.operator_ca_file or None,
                          cert_file=cfg.operator_cert_file or None, key_file=cfg.operator_key_file or None,
                          server_name=cfg.operator_server_name or None,
                          start_timeout_s=cfg.operator_start_timeout_ns / 1e9)
