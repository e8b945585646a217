"""The dns plugin: DNS queries and responses seen on pod veths and host interfaces.

Kernel side (``bpf/dns.bpf.c``): four TC classifiers of our own (prefix ``rdns_``; clsact priority 3 / handle 3,
or TCX links), attached to both hooks of every pod veth (found by packetparser's :class:`VethWatcher`) and of
every ``hostInterfaces`` interface. They pass UDP and TCP port-53 packets (IPv4 and IPv6) to a ring buffer with
the 5-tuple, the observation point, the interface and up to 512 bytes of payload, and always return
``TC_ACT_UNSPEC``.

Counting: each DNS message is counted once per node, at the first observation point it passes (see the
comment at the top of ``bpf/dns.bpf.c``): FROM_ENDPOINT and FROM_NETWORK always; TO_ENDPOINT and TO_NETWORK
only for packets whose ingress interface is none of ours (nor a bridge over one of our pod veths) -- packets the
node's own stack sent, or that came in on an interface we do not watch. User space keeps the kernel's
``seen_ifindex`` map equal to {interfaces with our ingress hook} plus their bridge masters, following link
changes. Not seen at all: DNS between two processes in the node's own network namespace over ``lo``, and DNS
that never crosses a pod veth or a host interface.

Metrics: ``networkobservability_dns_request_count`` and ``networkobservability_dns_response_count`` (counters,
no labels, as Retina since #877): one per message whose header and first question parse, by the QR bit.
``controlplane_networkobservability_dns_parse_errors_counter{reason}`` counts port-53 payloads that are not a
DNS message we can read (garbage, truncated, compression loops, oversized names ...; reasons are
``retina_core.dns.parser.REASONS``); those are not requests or responses. Ring-buffer overflow counts in
``controlplane_networkobservability_lost_events_counter{type="kernel",reason="dns"}``.

Pod level (``enablePodLevel``): one :class:`FlowRecord` per counted message, verdict 16 (Retina's
``Verdict_DNS``), ``l7`` a :class:`~retina_core.dns.record.DnsRecord`; direction EGRESS for queries and
INGRESS for responses (as Retina), ``is_reply`` = QR.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import socket
import threading
import time

from retina_exporter.datapath.ringreader import BpfRingReader
from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_exporter.plugins.dns import loader
from retina_exporter.plugins.dns.layout import HEADER_SIZE
from retina_exporter.plugins.dns.loader import DnsProgram
from retina_exporter.plugins.dns.processor import DnsProcessor
from retina_exporter.datapath.vethwatch import VethWatcher, link_attr
from retina_core.netns import enter_netns
from retina_exporter.datapath.tc import AttachError, TcAttacher
from retina_core.telemetry import LOST_KERNEL

log = logging.getLogger(__name__)

REQUEST_METRIC = "networkobservability_dns_request_count"
RESPONSE_METRIC = "networkobservability_dns_response_count"
PARSE_ERRORS_METRIC = "controlplane_networkobservability_dns_parse_errors_counter"
TC_PRIORITY = 3  # packetparser uses 1, packetforward 2
TC_HANDLE = 3


def interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise StartupError(
            f"hostInterfaces: interface {name!r} does not exist in this network namespace (pid {os.getpid()}); "
            "fix the hostInterfaces config key or create the interface"
        ) from None


def link_master(index: int) -> int:
    """IFLA_MASTER of an interface (0 when it has none or is gone)."""
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            links = ipr.get_links(index)
    except Exception:
        return 0
    return (link_attr(links[0], "IFLA_MASTER") or 0) if links else 0


class _MasterAwareWatcher(VethWatcher):
    """packetparser's veth watcher, also reporting the master (bridge) of known veths when a link message
    carries a change of it (CNIs enslave a veth after creating it).

    Link events come from the base class's reading thread, which subscribes itself (pyroute2 0.9's synchronous
    ``IPRoute`` hands each thread its own netlink socket) and signals the subscription, so ``start()`` does not
    wait out its 5 s timeout."""

    def __init__(self, on_add, on_remove, on_master, excluded=None) -> None:
        super().__init__(on_add, on_remove, excluded=excluded)
        self._on_master = on_master
        self._known_lock = threading.RLock()  # scan() runs in this thread and in reconcile's

    def scan(self) -> None:
        with self._known_lock:
            super().scan()

    def _handle(self, msg) -> None:
        with self._known_lock:
            super()._handle(msg)
        index = msg.get("index")
        if msg.get("event") == "RTM_NEWLINK" and index in self.known:
            try:
                self._on_master(index, link_attr(msg, "IFLA_MASTER") or 0)
            except Exception:
                log.exception("updating the master of ifindex %s failed", index)


class _Reader(BpfRingReader):
    """Polls the ring buffer in its own thread and hands each event to the processor, whose records
    (:meth:`emit`) go to ``on_batch(list)`` in batches (see :class:`~retina_exporter.datapath.ringreader.BpfRingReader`).

    Events shorter than a header are skipped; ``callback_errors`` counts events the processor failed on."""

    def __init__(self, program: DnsProgram, processor: DnsProcessor, on_batch) -> None:
        super().__init__(program.bpf, on_batch, name="dns")
        self._program = program
        self._processor = processor
        self.callback_errors = 0
        program.set_event_handler(self._callback)

    def _callback(self, _ctx, data, size) -> int:
        if size >= HEADER_SIZE:
            try:
                self._processor.process(ct.string_at(data, size))
            except Exception:  # a bug here must not stop the reader; the event is lost, and counted
                self.callback_errors += 1
                log.exception("dns event processing failed")
        if len(self._batch) >= self._batch_size:
            self._flush()
        return -1 if self._stop.is_set() else 0

    def emit(self, rec) -> None:
        self._batch.append(rec)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._program.set_event_handler(None)


class DnsPlugin(Plugin):
    name = "dns"

    def __init__(self, program: DnsProgram | None = None) -> None:
        self._program = program  # tests may hand in a program compiled once per module
        self._owns_program = program is None
        self.program: DnsProgram | None = None
        self.attacher: TcAttacher | None = None
        self.processor: DnsProcessor | None = None
        self.reader: _Reader | None = None
        self.watcher: _MasterAwareWatcher | None = None
        self.ifnames: dict[int, str] = {}
        self.attached: dict[int, list] = {}
        self.masters: dict[int, int] = {}  # attached ifindex -> its master's ifindex (0: none)
        self.host_interfaces: tuple[str, ...] = ()
        self._lock = threading.RLock()
        self._registered = False
        self._netns_fd = -1  # the namespace init() ran in: link look-ups happen there, whatever thread asks

    # --- lifecycle ----------------------------------------------------------------------------------------
    def init(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        if self._netns_fd < 0:
            self._netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.host_interfaces = tuple(getattr(cfg, "host_interfaces", ()))
        for name in self.host_interfaces:
            interface_index(name)
        if self._program is not None:
            self.program = self._program
            self.program.set_seen(set())
        else:
            self.program = DnsProgram(int(getattr(cfg, "dns_ring_buffer_size", loader.DEFAULT_RING_BYTES)))
        self.attacher = TcAttacher(prefix=loader.PROGRAM_PREFIX, enable_tcx=getattr(cfg, "enable_tcx", "auto"),
                                   priority=TC_PRIORITY, handle=TC_HANDLE)
        pod_level = bool(getattr(cfg, "enable_pod_level", False))
        self.processor = DnsProcessor(getattr(cfg, "node_name", ""), self.ifnames, pod_level=pod_level)
        sink = ctx.flow_sink
        self.reader = _Reader(self.program, self.processor, sink.write_batch if sink is not None else (lambda b: None))
        self.processor.emit = self.reader.emit
        self._emitted_base = self.program.stats()["emitted"]  # a shared program (tests) has counted before
        program = self.program
        if ctx.telemetry is not None:
            ctx.telemetry.lost_source(LOST_KERNEL, self.name, lambda: program.stats()["ringbuf_full"])
        if ctx.metrics is not None:
            ctx.metrics.register(self.families)
            self._registered = True

    def start(self) -> None:
        assert self.reader is not None
        for name in self.host_interfaces:
            index = interface_index(name)
            try:
                self._attach_pair(index, name, loader.FROM_NETWORK, loader.TO_NETWORK)
            except AttachError as exc:
                raise StartupError(str(exc)) from exc
        self.reader.start()
        self.watcher = _MasterAwareWatcher(self._on_veth_add, self._on_veth_remove, self._on_master,
                                           excluded=set(self.host_interfaces))
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.attacher is not None:
            self.attacher.detach_all()
            self.attached.clear()
            self.masters.clear()
        if self.reader is not None:
            self.reader.stop()
        if self._registered and self.ctx.metrics is not None:
            self.ctx.metrics.unregister(self.families)
            self._registered = False
        if self.program is not None:
            if self._owns_program:
                self.program.close()
            else:
                self.program.set_seen(set())
        self.program = None
        if self._netns_fd >= 0:
            os.close(self._netns_fd)
            self._netns_fd = -1

    def reconcile(self) -> None:
        if self.watcher is not None:
            with enter_netns(self._netns_fd):
                self.watcher.scan()
            with self._lock:
                for index in list(self.attached):
                    self.masters[index] = self._master(index)
                self._sync_seen()
        if self.reader is not None and not self.reader.alive():
            raise RuntimeError("dns ring-buffer reader thread died")

    def readers_alive(self) -> bool:
        return self.reader is not None and self.reader.alive()

    def health(self) -> list[str]:
        if self.reader is not None and not self.reader.alive():
            return ["dns ring-buffer reader not running"]
        return []

    # --- attachments ----------------------------------------------------------------------------------------
    def _attach_pair(self, ifindex: int, ifname: str, ingress_prog: str, egress_prog: str) -> None:
        assert self.attacher is not None and self.program is not None
        atts = []
        try:
            atts.append(self.attacher.attach(ifindex, "ingress", self.program.prog_fd(ingress_prog), ingress_prog))
            atts.append(self.attacher.attach(ifindex, "egress", self.program.prog_fd(egress_prog), egress_prog))
        except Exception:
            for att in atts:
                self.attacher.detach(att)
            raise
        with self._lock:
            self.ifnames[ifindex] = ifname
            self.attached[ifindex] = atts
            self.masters[ifindex] = self._master(ifindex)
            self._sync_seen()
        log.info("dns attached to %s (ifindex %d) via %s", ifname, ifindex, atts[0].mode)

    def _master(self, ifindex: int) -> int:
        if self._netns_fd < 0:
            return link_master(ifindex)
        with enter_netns(self._netns_fd):
            return link_master(ifindex)

    def _on_veth_add(self, ifindex: int, ifname: str) -> None:
        self._attach_pair(ifindex, ifname, loader.FROM_ENDPOINT, loader.TO_ENDPOINT)

    def _on_veth_remove(self, ifindex: int, ifname: str) -> None:
        with self._lock:
            atts = self.attached.pop(ifindex, [])
            self.masters.pop(ifindex, None)
            self._sync_seen()
        for att in atts:
            try:
                self.attacher.detach(att)
            except Exception:
                pass
        log.info("dns forgot %s (ifindex %d)", ifname, ifindex)

    def _on_master(self, ifindex: int, master: int) -> None:
        with self._lock:
            if ifindex in self.attached and self.masters.get(ifindex) != master:
                self.masters[ifindex] = master
                self._sync_seen()

    def _sync_seen(self) -> None:
        if self.program is None:
            return
        seen = set(self.attached) | {m for m in self.masters.values() if m}
        self.program.set_seen(seen)

    # --- metrics ----------------------------------------------------------------------------------------------
    def families(self):
        p = self.processor
        if p is None:
            return
        yield (REQUEST_METRIC, "counter", "Number of DNS requests by providing host", [((), p.requests)])
        yield (RESPONSE_METRIC, "counter", "Number of DNS responses by providing host", [((), p.responses)])
        yield (PARSE_ERRORS_METRIC, "counter",
               "Number of port-53 payloads the dns plugin could not parse as a DNS message, by reason",
               [((("reason", r),), n) for r, n in sorted(p.parse_errors.items())])

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until the reader has consumed what the kernel wrote so far (tests, shutdown)."""
        if self.program is None or self.reader is None or self.processor is None:
            return
        target = self.program.stats()["emitted"] - self._emitted_base
        deadline = time.monotonic() + timeout
        while self.processor.events < target and time.monotonic() < deadline:
            time.sleep(0.01)

    def debug(self) -> dict:
        out = {
            "attached": {self.ifnames.get(i, str(i)): [a.mode for a in atts] for i, atts in self.attached.items()},
            "seen_ifindex": sorted(self.program.seen_set()) if self.program else [],
            "kernel": self.program.stats() if self.program else {},
        }
        if self.processor is not None:
            out.update(self.processor.debug())
        if self.reader is not None:
            out["callback_errors"] = self.reader.callback_errors
        return out
