"""The packetparser plugin: TC programs on pod veths and host interfaces -> conntrack -> flow records.

Lifecycle: ``init`` compiles and loads the programs (and fails early, with the fix, on missing headers,
privileges or host interfaces); ``start`` attaches to ``hostInterfaces`` and to every pod veth the watcher finds
(and to new ones as they appear), starts the ring-buffer reader and the conntrack sweeper; ``stop`` detaches
everything it attached and releases the BPF objects.

TCP metrics (``tcpMetrics``, issue 14): connect latency and failed connections come from the conntrack itself
(``bpf/packetparser.bpf.c`` ``track_connect``, timeouts settled by the sweeper), RTT from a second program on
``tcp:tcp_probe`` (:mod:`~retina_exporter.plugins.packetparser.rtt`), both with node-level histograms and counters
kept in the kernel and pod-level records through the flow sink.
"""

from __future__ import annotations

import logging

from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.packetparser import loader
from retina_exporter.plugins.packetparser.config import TcpMetricsConfig
from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram
from retina_exporter.plugins.packetparser.reader import EventDecoder, RingBufferReader
from retina_exporter.plugins.packetparser.rtt import RttDecoder, RttReader, TcpRttProgram
from retina_exporter.datapath import scope as scope_mod
from retina_exporter.datapath.sysfs import ensure_tracefs
from retina_exporter.plugins.packetparser.sweeper import ConntrackSweeper
from retina_exporter.plugins.tcattach import TcRingBufferPlugin, pin_root
from retina_core.histogram import HistogramValue
from retina_core.record import CONN_EVENTS, CONN_RESET, CONN_TIMEOUT
from retina_core.telemetry import CONTROL_PLANE_PREFIX, METRIC_PREFIX

log = logging.getLogger(__name__)


def tcp_metrics_of(cfg) -> TcpMetricsConfig:
    return getattr(cfg, "tcp_metrics", None) or TcpMetricsConfig()


def load_options_from(cfg) -> LoadOptions:
    tcp = tcp_metrics_of(cfg)
    return LoadOptions(
        ct_map_size=cfg.conntrack_map_size,
        ring_buffer_bytes=cfg.ring_buffer_size,
        aggregation_high=cfg.data_aggregation_level == "high",
        sampling_rate=max(1, cfg.data_sampling_rate),
        report_interval_ns=cfg.conntrack_report_interval_ns,
        tcp_lifetime_ns=cfg.conntrack_lifetimes.tcp_ns,
        syn_timeout_ns=cfg.conntrack_lifetimes.syn_timeout_ns,
        time_wait_ns=cfg.conntrack_lifetimes.time_wait_ns,
        nontcp_lifetime_ns=cfg.conntrack_lifetimes.other_ns,
        filter_enabled=cfg.enable_annotations and not cfg.bypass_lookup_ip_of_interest,
        filter_map_size=cfg.filter_map_max_entries,
        conn_enabled=tcp.connect,
        bounds_ns=tcp.bounds_ns(),
    )


class PacketParserPlugin(TcRingBufferPlugin):
    name = "packetparser"
    capabilities = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN")
    reader_label = "ring-buffer reader"
    program_prefix = loader.PROGRAM_PREFIX
    host_programs = (loader.FROM_NETWORK, loader.TO_NETWORK)
    endpoint_programs = (loader.FROM_ENDPOINT, loader.TO_ENDPOINT)
    remove_stale = True
    program: PacketParserProgram | None
    reader: RingBufferReader | None

    def __init__(self, program: PacketParserProgram | None = None) -> None:
        super().__init__(program)  # tests may hand in a program compiled once per session
        self.sweeper: ConntrackSweeper | None = None
        self._merge_registry = None  # where merge_families is registered (mergeQueuedEvents), until stop
        self._merging_reader: RingBufferReader | None = None
        self._conntrack_metrics = False
        self.rtt: TcpRttProgram | None = None  # tcpMetrics.rtt: the tcp:tcp_probe program, owned here
        self.rtt_reader: RttReader | None = None

    # --- RingBufferPlugin hooks -----------------------------------------------------------------------------
    def load_program(self, ctx: PluginContext) -> PacketParserProgram:
        return PacketParserProgram(load_options_from(ctx.config), pin_root=pin_root(ctx.config, self.name))

    def adopt_program(self, program: PacketParserProgram, ctx: PluginContext) -> None:
        program.configure(load_options_from(ctx.config))

    def prepare(self, ctx: PluginContext) -> None:
        super().prepare(ctx)
        tcp = tcp_metrics_of(ctx.config)
        self.sweeper = ConntrackSweeper(self.program, ctx.config.conntrack_report_interval_ns,
                                        tcp.connect_timeout_ns if tcp.connect else 0)
        self._conntrack_metrics = bool(getattr(ctx.config, "enable_conntrack_metrics", False))
        if tcp.rtt and self.rtt is None:
            pod_level = bool(getattr(ctx.config, "enable_pod_level", False))
            ensure_tracefs()
            self.rtt = TcpRttProgram()
            self.rtt.configure(tcp.rtt_sample_interval_ns, tcp.bounds_ns(), pod_level, self._rtt_scope())
            if pod_level:
                self.rtt_reader = RttReader(self.rtt, RttDecoder(ctx.config.node_name), ctx.flow_sink)

    def make_reader(self, ctx: PluginContext) -> RingBufferReader:
        decoder = EventDecoder(ctx.config.node_name, self.ifnames)
        merge = bool(getattr(ctx.config, "merge_queued_events", False))
        reader = RingBufferReader(self.program.bpf, "events", decoder, ctx.flow_sink,
                                  on_batch=ctx.telemetry.add_parsed, merge=merge)
        if merge and ctx.metrics is not None:
            self._merging_reader = reader
            ctx.metrics.register(self.merge_families)
            self._merge_registry = ctx.metrics
        return reader

    def merge_families(self):
        """``mergeQueuedEvents``: events folded into another event's record (the flows Hubble and flow logs see
        fewer of; their counts are in the record they were folded into)."""
        merged = self._merging_reader.events_merged if self._merging_reader is not None else 0
        return [(CONTROL_PLANE_PREFIX + "packetparser_merged_events_counter", "counter",
                 "packetparser events merged into another event's flow record (mergeQueuedEvents)",
                 [((), merged)])]

    def release(self) -> None:
        super().release()
        if self._merge_registry is not None:
            self._merge_registry.unregister(self.merge_families)
            self._merge_registry = None
        self._merging_reader = None

    def lost_events(self, program: PacketParserProgram) -> int:
        rtt = self.rtt
        return program.lost_counts()["ringbuf_full"] + (rtt.stats()["ringbuf_full"] if rtt is not None else 0)

    def exports_families(self, cfg) -> bool:
        tcp = tcp_metrics_of(cfg)
        return bool(getattr(cfg, "enable_conntrack_metrics", False)) or tcp.connect or tcp.rtt

    def start_helpers(self) -> None:
        self.sweeper.start()
        if self.rtt is not None:
            if self.rtt_reader is not None:
                self.rtt_reader.start()
            self.rtt.attach()

    def _rtt_scope(self) -> set[int] | None:
        """The node's network namespace and its pod veths' peers (host interfaces excluded)."""
        return scope_mod.node_namespaces(None, self.host_interfaces)

    def rescan(self) -> None:
        super().rescan()
        if self.rtt is not None:
            self.rtt.set_scope(self._rtt_scope())

    def stop_helpers(self) -> None:
        if self.rtt is not None:
            self.rtt.detach()
            if self.rtt_reader is not None:
                self.rtt_reader.stop()
                self.rtt_reader = None
            self.rtt.close()
            self.rtt = None
        if self.sweeper is not None:
            self.sweeper.stop()
            if self.program is not None and self.program.pins is not None:
                return  # unreported counts stay in the pinned conntrack: the next run reports them
            try:
                self.flush()  # nothing counted is left behind in the map
            except Exception:
                log.exception("final conntrack harvest failed")

    # --- conntrack ------------------------------------------------------------------------------------------
    def families(self):
        """``enableConntrackMetrics``: Retina's conntrack gauges; ``tcpMetrics.connect``: the node-level connect
        latency and failed connections (kernel counters, each attempt once per node)."""
        out = self.conntrack_families() if self._conntrack_metrics else []
        program = self.program
        if program is not None and program.options.conn_enabled:
            out += tcp_connect_families(program.tcp_counts(), program.options.bounds_ns)
        rtt = self.rtt
        if rtt is not None:
            out.append(tcp_rtt_family(rtt.stats(), rtt.bounds_ns))
        return out

    def conntrack_families(self) -> list:
        """Retina's conntrack gauges, summed over live entries at the last sweep (tx = initiator -> responder,
        rx = replies)."""
        last = self.sweeper.last if self.sweeper is not None else None
        if last is None:
            return []
        prefix = METRIC_PREFIX + "conntrack_"
        rows = (
            ("packets_tx", "Packets sent by connection initiators, over live conntrack entries", last.packets_tx),
            ("packets_rx", "Packets sent by responders (replies), over live conntrack entries", last.packets_rx),
            ("bytes_tx", "Bytes sent by connection initiators, over live conntrack entries", last.bytes_tx),
            ("bytes_rx", "Bytes sent by responders, over live conntrack entries", last.bytes_rx),
            ("total_connections", "Live conntrack entries (one per connection and interface)", last.entries),
        )
        return [(prefix + name, "gauge", help_text, [((), value)]) for name, help_text, value in rows]

    def health(self) -> list[str]:
        reasons = super().health()
        if self.sweeper is not None and not self.sweeper.alive():
            reasons.append("conntrack sweeper not running")
        if self.rtt_reader is not None and not self.rtt_reader.alive():
            reasons.append("tcp RTT reader not running")
        return reasons

    def flush(self) -> None:
        """Harvest every unreported count now (shutdown, tests); the events follow through the reader."""
        if self.sweeper is not None and self.program is not None:
            self.sweeper.sweep_once(force=True)

    def debug(self) -> dict:
        return {
            **super().debug(),
            "events_read": self.reader.events_read if self.reader else 0,
            "lost": self.program.lost_counts() if self.program else {},
            "sweeps": self.sweeper.sweeps if self.sweeper else 0,
            "events_merged": self.reader.events_merged if self.reader else 0,
            "tcp_rtt": self.rtt.stats() if self.rtt else None,
        }


CONNECT_LATENCY_METRIC = METRIC_PREFIX + "tcp_connect_latency_seconds"
FAILED_CONNECTIONS_METRIC = METRIC_PREFIX + "tcp_failed_connections"


def tcp_connect_families(counts: dict, bounds_ns: tuple[int, ...]) -> list:
    """Node-level families from :meth:`PacketParserProgram.tcp_counts`."""
    hist = HistogramValue(tuple(b / 1e9 for b in bounds_ns), tuple(counts["buckets"]), counts["sum_ns"] / 1e9,
                          counts["count"])
    failed = [((("reason", CONN_EVENTS[CONN_RESET]),), counts["reset"]),
              ((("reason", CONN_EVENTS[CONN_TIMEOUT]),), counts["timeout"])]
    return [
        (CONNECT_LATENCY_METRIC, "histogram",
         "TCP connect latency: first SYN to the SYN-ACK answering it, as seen on this node, in seconds", [((), hist)]),
        (FAILED_CONNECTIONS_METRIC, "counter",
         "TCP connection attempts answered by an RST (reset) or not answered within tcpMetrics.connectTimeout "
         "(timeout)", failed),
    ]


RTT_METRIC = METRIC_PREFIX + "tcp_rtt_seconds"


def tcp_rtt_family(stats: dict, bounds_ns: tuple[int, ...]):
    """``tcp_rtt_seconds`` from :meth:`TcpRttProgram.stats`."""
    hist = HistogramValue(tuple(b / 1e9 for b in bounds_ns), tuple(stats["buckets"]), stats["sum_ns"] / 1e9,
                          stats["samples"])
    return (RTT_METRIC, "histogram", "TCP smoothed round-trip time (the kernel's srtt from tcp:tcp_probe), at most "
            "one sample per socket and tcpMetrics.rttSampleInterval, in seconds", [((), hist)])
