"""``ipcache.IpCache/StreamUpdates`` over gRPC (asyncio server on its own thread).

Per agent stream:

1. wait until the state is ready (every informer listed once) -- the stream stays open meanwhile;
2. take a cursor into the delta log and the snapshot, atomically (:meth:`ClusterState.subscribe`, run in a worker
   thread so a large map does not stall the other streams): the subscription exists *before* the snapshot is taken,
   so no change is missed and none is sent twice;
3. send the snapshot in batches of at most 1 MiB, then a batch holding ``SYNC_COMPLETE``;
4. send deltas from the cursor on, as many as are waiting per batch, in log order;
5. if the cursor has fallen out of the log (the agent is more than ``queue_size`` updates behind): end the stream
   with ``DATA_LOSS`` ("... lagging ...; reconnect to resync") -- the agent reconnects and gets a fresh snapshot;
6. on shutdown: send what is still waiting, then ``SHUTDOWN``, and end the stream with OK.

Fan-out is one encoded update per change (:mod:`retina_operator.wire`) read by every stream; producers never wait
for an agent. A stream blocked by HTTP/2 flow control (an agent that does not read) notices that it lagged once
the agent reads again; an agent that is gone is found by keepalive (pings every 30 s, 10 s timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from retina_core.proto import ipcache_pb2

from retina_operator.broadcast import Lagged
from retina_operator.cluster import ClusterState
from retina_operator.wire import MAX_BATCH_BYTES, SHUTDOWN_BATCH, SYNC_COMPLETE_BATCH, batches

__all__ = ["BindError", "IpCacheServer", "SERVER_OPTIONS", "TlsError", "TlsFiles"]

log = logging.getLogger(__name__)

SERVICE = "ipcache.IpCache"
METHOD = "StreamUpdates"

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.so_reuseport", 0),  # a second operator on the same port must fail, not share it
    ("grpc.keepalive_time_ms", 30_000),  # ping each agent connection every 30 s ...
    ("grpc.keepalive_timeout_ms", 10_000),  # ... and drop it when the ping is not answered within 10 s
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),  # agents ping every 20 s: allow that
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 1 << 20),  # requests are a node name
]


class BindError(RuntimeError):
    """A port cannot be bound (one line); ``errno`` as the OS said, when known."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class TlsError(ValueError):
    """A TLS file cannot be loaded (one line naming the flag)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate and key, and optionally a CA whose client certificates are required
    (mutual TLS)."""

    cert: str
    key: str
    client_ca: str | None = None

    def check(self) -> None:
        """Load the files with Python's ssl module first: gRPC only says "failed to bind" about a bad PEM.
        Raises :class:`TlsError` naming the flag."""
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"--tls-cert/--tls-key: cannot load {self.cert} with {self.key}: "
                           f"{getattr(exc, 'reason', None) or exc}; give a PEM certificate and its private key"
                           ) from None
        if self.client_ca:
            try:
                ctx.load_verify_locations(self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise TlsError(f"--tls-client-ca: cannot load {self.client_ca}: "
                               f"{getattr(exc, 'reason', None) or exc}; give a PEM CA certificate") from None

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        self.check()
        ca = read(self.client_ca) if self.client_ca else None
        return grpc.ssl_server_credentials([(read(self.key), read(self.cert))], root_certificates=ca,
                                           require_client_auth=ca is not None)


@dataclass
class _Agent:
    id: int
    node: str
    peer: str
    connected_at: float
    phase: str = "waiting"  # waiting (state not ready) | snapshot | live | closing
    cursor: int | None = None
    updates_sent: int = 0
    batches_sent: int = 0
    snapshot_entries: int = 0


class IpCacheServer:
    """Serves the stream for ``state`` on ``host:port`` (0: any free port; see :attr:`port`).

    ``tls``: :class:`TlsFiles` or None for plaintext. ``max_batch_bytes``: batch size limit. Counters read by the
    operator's /metrics and /debug/stats: ``updates_sent``, ``batches_sent``, ``snapshots_sent``,
    ``lagging_disconnects``, ``streams_total``, ``shutdowns_sent``.
    """

    def __init__(self, state: ClusterState, host: str = "0.0.0.0", port: int = 9090, *, tls: TlsFiles | None = None,
                 max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self.state = state
        self.host = host
        self.requested_port = port
        self.tls = tls
        self.max_batch_bytes = max_batch_bytes
        self.port = 0
        self.updates_sent = 0
        self.batches_sent = 0
        self.snapshots_sent = 0
        self.lagging_disconnects = 0
        self.streams_total = 0
        self.shutdowns_sent = 0
        self._agents: dict[int, _Agent] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._event: asyncio.Event | None = None
        self._wake_pending = False
        self._shutting_down = False
        self._stop_requested: asyncio.Event | None = None
        self._stop_args: tuple[bool, float] = (True, 2.0)
        self._stopped = threading.Event()

    # -- lifecycle (caller's thread) ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve from a background thread. Raises :class:`BindError` when the port cannot be bound and
        :class:`TlsError` when a TLS file cannot be loaded."""
        creds = self.tls.credentials() if self.tls is not None else None
        self._check_port()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(creds, started, failure))
            except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
                if not started.is_set():
                    failure.append(exc)
                    started.set()
                else:
                    log.exception("operator: gRPC server loop failed")
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_default_executor())
                finally:
                    loop.close()
                    self._stopped.set()

        self._thread = threading.Thread(target=run, name="operator-grpc", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join(5)
            exc = failure[0]
            if isinstance(exc, (BindError, OSError)):
                raise exc
            raise BindError(f"cannot start the gRPC server on {self.host}:{self.requested_port}: {exc}")
        self.state.add_listener(self._notify_threadsafe)

    def _check_port(self) -> None:
        """Bind the port once with a plain socket: gRPC only says "failed to bind" (and logs to stderr)."""
        import socket

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.requested_port))
        except OSError as exc:
            raise BindError(f"cannot listen on {self.host}:{self.requested_port}: {exc.strerror or exc}",
                            exc.errno) from None

    async def _serve(self, creds: grpc.ServerCredentials | None, started: threading.Event,
                     failure: list[BaseException]) -> None:
        self._event = asyncio.Event()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_stream_rpc_method_handler(
            self._stream, request_deserializer=ipcache_pb2.IpCacheRequest.FromString, response_serializer=None)})
        server.add_generic_rpc_handlers((handler,))
        addr = f"[{self.host}]:{self.requested_port}" if ":" in self.host else f"{self.host}:{self.requested_port}"
        try:
            port = server.add_secure_port(addr, creds) if creds is not None else server.add_insecure_port(addr)
        except RuntimeError as exc:
            port = 0
            detail = str(exc)
        else:
            detail = "address in use or not available"
        if not port:
            failure.append(BindError(f"cannot listen on {addr}: {detail}"))
            started.set()
            return
        self.port = port
        await server.start()
        self._server = server
        self._stop_requested = asyncio.Event()
        started.set()
        log.info("operator: serving ipcache.IpCache on %s:%d (%s)", self.host, port,
                 "mutual TLS" if self.tls and self.tls.client_ca else "TLS" if self.tls else "plaintext")
        await self._stop_requested.wait()
        await self._shutdown(*self._stop_args)

    def stop(self, send_shutdown: bool = True, grace_s: float = 2.0) -> None:
        """Stop serving. With ``send_shutdown`` every stream first gets what is still waiting and ``SHUTDOWN``
        (waiting up to ``grace_s`` for them to finish); without, streams are cut (as when the process dies).
        Idempotent."""
        loop = self._loop
        ev = self._stop_requested
        if loop is None or ev is None or self._stopped.is_set():
            return
        self._stop_args = (send_shutdown, grace_s)
        try:
            loop.call_soon_threadsafe(ev.set)
        except RuntimeError:  # the loop is already closed
            pass
        if not self._stopped.wait(grace_s + 5):
            log.warning("operator: the gRPC server did not stop within %gs", grace_s + 5)
        if self._thread is not None:
            self._thread.join(5)

    async def _shutdown(self, send_shutdown: bool, grace_s: float) -> None:
        self._shutting_down = True
        if send_shutdown:
            self._wake()
            deadline = time.monotonic() + grace_s
            while self._agents and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.stop(0 if not send_shutdown else 0.2)

    # -- introspection (any thread) ----------------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        """Connected agents: node, peer, phase, connected_at, queue depth (updates waiting), updates sent."""
        head = self.state.log.head
        cap = self.state.log.capacity
        out = []
        for a in list(self._agents.values()):
            depth = head - a.cursor if a.cursor is not None else 0
            out.append({"node": a.node, "peer": a.peer, "phase": a.phase, "connected_at": a.connected_at,
                        "queue_depth": depth, "queue_capacity": cap, "lagging": depth > cap,
                        "updates_sent": a.updates_sent, "batches_sent": a.batches_sent,
                        "snapshot_entries": a.snapshot_entries})
        out.sort(key=lambda d: (d["node"], d["peer"]))
        return out

    # -- waking streams ----------------------------------------------------------------------------------------

    def _notify_threadsafe(self) -> None:
        """Called by the state (any thread, under its lock) after an append or on readiness."""
        if self._wake_pending:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _wake(self) -> None:
        self._wake_pending = False
        ev, self._event = self._event, asyncio.Event()
        if ev is not None:
            ev.set()

    async def _wait_change(self) -> None:
        ev = self._event
        assert ev is not None
        await ev.wait()

    # -- the stream --------------------------------------------------------------------------------------------

    async def _write(self, context: grpc.aio.ServicerContext, agent: _Agent, data: bytes, n: int) -> None:
        await context.write(data)
        agent.updates_sent += n
        agent.batches_sent += 1
        self.updates_sent += n
        self.batches_sent += 1

    async def _stream(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        node = request.node_name or "?"
        agent = _Agent(next(self._ids), node, context.peer() or "?", time.time())
        self._agents[agent.id] = agent
        self.streams_total += 1
        log.debug("operator: agent %s (%s) subscribed", node, agent.peer)
        try:
            while not self.state.ready.is_set() and not self._shutting_down:
                ev = self._event
                if self.state.ready.is_set() or self._shutting_down:
                    break
                assert ev is not None
                await ev.wait()
            if self._shutting_down:
                agent.phase = "closing"
                await self._send_shutdown(context, agent)
                return
            agent.phase = "snapshot"
            loop = asyncio.get_running_loop()
            cursor, snapshot = await loop.run_in_executor(None, self.state.subscribe)
            agent.cursor = cursor
            agent.snapshot_entries = len(snapshot)
            for data, n in batches(snapshot, self.max_batch_bytes):
                await self._write(context, agent, data, n)
            del snapshot
            await self._write(context, agent, SYNC_COMPLETE_BATCH, 1)
            self.snapshots_sent += 1
            agent.phase = "live"
            log.info("operator: agent %s (%s) synced: %d entries", node, agent.peer, agent.snapshot_entries)
            while True:
                ev = self._event  # taken before reading: a later append wakes us
                try:
                    items, cursor = self.state.log.read(agent.cursor, max_bytes=self.max_batch_bytes)
                except Lagged as exc:
                    self.lagging_disconnects += 1
                    log.warning("operator: agent %s (%s) is lagging (%s); disconnecting it, it will resync",
                                node, agent.peer, exc)
                    agent.phase = "closing"
                    await context.abort(grpc.StatusCode.DATA_LOSS,
                                        f"agent {node} is lagging: {exc}; reconnect to get a fresh snapshot")
                    return
                if items:
                    agent.cursor = cursor  # handed to gRPC (depth counts what is not)
                    await self._write(context, agent, b"".join(items), len(items))
                    continue
                if self._shutting_down:
                    agent.phase = "closing"
                    await self._send_shutdown(context, agent)
                    return
                assert ev is not None
                await ev.wait()
        except asyncio.CancelledError:
            log.debug("operator: stream of agent %s (%s) cancelled", node, agent.peer)
            raise
        finally:
            self._agents.pop(agent.id, None)
            log.debug("operator: agent %s (%s) disconnected", node, agent.peer)

    async def _send_shutdown(self, context: grpc.aio.ServicerContext, agent: _Agent) -> None:
        await self._write(context, agent, SHUTDOWN_BATCH, 1)
        self.shutdowns_sent += 1
