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

Latency (``dnsLatency`` section, on by default; see :mod:`retina_core.dns.latency` and the processor):
``networkobservability_dns_latency_seconds{query_type,return_code}`` (histogram) and
``networkobservability_dns_unanswered_queries{query_type}`` (counter, after ``dnsLatency.unansweredTimeout``); a
response that answered a query carries ``Layer7.latency_ns`` in its flow. Responses through NAT are matched where
the kernel reports them again toward their client. The tracker's state is in ``/debug/plugins``
(``latency_pending``, ``latency_overflow``, ``latency_only_events`` …).
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import threading
import time

from retina_exporter.datapath.ringreader import BpfRingReader
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.dns import loader
from retina_exporter.bpf.dns import HEADER_SIZE
from retina_exporter.plugins.dns.config import DnsLatencyConfig
from retina_exporter.plugins.dns.loader import DnsProgram
from retina_exporter.plugins.dns.processor import DnsProcessor
from retina_exporter.datapath.rtnl import get_link
from retina_exporter.datapath.vethwatch import VethWatcher, link_attr
from retina_core.netns import enter_netns
from retina_exporter.plugins.tcattach import TcRingBufferPlugin
from retina_core.telemetry import CONTROL_PLANE_PREFIX, METRIC_PREFIX

log = logging.getLogger(__name__)

REQUEST_METRIC = METRIC_PREFIX + "dns_request_count"
RESPONSE_METRIC = METRIC_PREFIX + "dns_response_count"
PARSE_ERRORS_METRIC = CONTROL_PLANE_PREFIX + "dns_parse_errors_counter"
LATENCY_METRIC = METRIC_PREFIX + "dns_latency_seconds"
UNANSWERED_METRIC = METRIC_PREFIX + "dns_unanswered_queries"
TC_PRIORITY = 3  # packetparser uses 1, packetforward 2
TC_HANDLE = 3


def link_master(index: int) -> int:
    """IFLA_MASTER of an interface (0 when it has none or is gone)."""
    try:
        link = get_link(index)
    except Exception:
        return 0
    return (link_attr(link, "IFLA_MASTER") or 0) if link is not None else 0


class _MasterAwareWatcher(VethWatcher):
    """packetparser's veth watcher, also reporting the master (bridge) of known veths when a link message
    carries a change of it (CNIs enslave a veth after creating it).

    Link events come from the base class's reading thread, which subscribes itself (a
    :class:`~retina_exporter.datapath.rtnl.LinkMonitor`) and signals the subscription, so ``start()`` does not
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

    def _flush(self) -> None:
        self._processor.expire()  # after every poll: unanswered queries are counted without waiting for traffic
        super()._flush()

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._program.set_event_handler(None)


class DnsPlugin(TcRingBufferPlugin):
    name = "dns"
    capabilities = ("CAP_BPF", "CAP_NET_ADMIN")
    program_prefix = loader.PROGRAM_PREFIX
    host_programs = (loader.FROM_NETWORK, loader.TO_NETWORK)
    endpoint_programs = (loader.FROM_ENDPOINT, loader.TO_ENDPOINT)
    tc_priority = TC_PRIORITY
    tc_handle = TC_HANDLE
    program: DnsProgram | None
    reader: _Reader | None
    watcher: _MasterAwareWatcher | None

    def __init__(self, program: DnsProgram | None = None) -> None:
        super().__init__(program)  # tests may hand in a program compiled once per module
        self.processor: DnsProcessor | None = None
        self.masters: dict[int, int] = {}  # attached ifindex -> its master's ifindex (0: none)
        self._lock = threading.RLock()
        self._netns_fd = -1  # the namespace init() ran in: link look-ups happen there, whatever thread asks

    # --- RingBufferPlugin hooks -----------------------------------------------------------------------------
    def read_config(self, ctx: PluginContext) -> None:
        if self._netns_fd < 0:
            self._netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        super().read_config(ctx)

    def load_program(self, ctx: PluginContext) -> DnsProgram:
        return DnsProgram(int(getattr(ctx.config, "dns_ring_buffer_size", loader.DEFAULT_RING_BYTES)))

    def adopt_program(self, program: DnsProgram, ctx: PluginContext) -> None:
        program.set_seen(set())

    def make_reader(self, ctx: PluginContext) -> _Reader:
        cfg = ctx.config
        pod_level = bool(getattr(cfg, "enable_pod_level", False))
        self.processor = DnsProcessor(getattr(cfg, "node_name", ""), self.ifnames, pod_level=pod_level,
                                      latency=getattr(cfg, "dns_latency", DnsLatencyConfig()))
        sink = ctx.flow_sink
        reader = _Reader(self.program, self.processor, sink.write_batch if sink is not None else (lambda b: None))
        self.processor.emit = reader.emit
        self._emitted_base = self.program.stats()["emitted"]  # a shared program (tests) has counted before
        return reader

    def lost_events(self, program: DnsProgram) -> int:
        return program.stats()["ringbuf_full"]

    def make_watcher(self) -> _MasterAwareWatcher:
        return _MasterAwareWatcher(self.on_veth_add, self.on_veth_remove, self._on_master,
                                   excluded=set(self.host_interfaces))

    def detach(self) -> None:
        super().detach()
        self.masters.clear()

    def release_shared_program(self, program: DnsProgram) -> None:
        program.set_seen(set())

    def release(self) -> None:
        if self._netns_fd >= 0:
            os.close(self._netns_fd)
            self._netns_fd = -1

    def rescan(self) -> None:
        if self.watcher is not None:
            with enter_netns(self._netns_fd):
                self.watcher.scan()
            with self._lock:
                for index in list(self.attached):
                    self.masters[index] = self._master(index)
                self._sync_seen()

    # --- attachments and the seen_ifindex map ---------------------------------------------------------------
    def record_attached(self, ifindex: int, ifname: str, atts: list) -> None:
        with self._lock:
            super().record_attached(ifindex, ifname, atts)
            self.masters[ifindex] = self._master(ifindex)
            self._sync_seen()

    def forget_attached(self, ifindex: int) -> list:
        with self._lock:
            atts = super().forget_attached(ifindex)
            self.masters.pop(ifindex, None)
            self._sync_seen()
        return atts

    def _master(self, ifindex: int) -> int:
        if self._netns_fd < 0:
            return link_master(ifindex)
        with enter_netns(self._netns_fd):
            return link_master(ifindex)

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
        if p.tracker is not None:
            hist, unanswered = p.latency_samples()
            yield (LATENCY_METRIC, "histogram",
                   "DNS query to response time as seen on the node, in seconds, by query type and return code", hist)
            yield (UNANSWERED_METRIC, "counter", "Number of DNS queries without a response within the timeout",
                   unanswered)

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
            **super().debug(),
            "seen_ifindex": sorted(self.program.seen_set()) if self.program else [],
            "kernel": self.program.stats() if self.program else {},
        }
        if self.processor is not None:
            out.update(self.processor.debug())
        if self.reader is not None:
            out["callback_errors"] = self.reader.callback_errors
        return out
