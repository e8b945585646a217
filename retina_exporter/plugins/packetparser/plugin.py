"""The packetparser plugin: TC programs on pod veths and host interfaces -> conntrack -> flow records.

Lifecycle: ``init`` compiles and loads the programs (and fails early, with the fix, on missing headers,
privileges or host interfaces); ``start`` attaches to ``hostInterfaces`` and to every pod veth the watcher finds
(and to new ones as they appear), starts the ring-buffer reader and the conntrack sweeper; ``stop`` detaches
everything it attached and releases the BPF objects.
"""

from __future__ import annotations

import logging

from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.packetparser import loader
from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram
from retina_exporter.plugins.packetparser.reader import EventDecoder, RingBufferReader
from retina_exporter.plugins.packetparser.sweeper import ConntrackSweeper
from retina_exporter.plugins.tcattach import TcRingBufferPlugin
from retina_core.telemetry import METRIC_PREFIX

log = logging.getLogger(__name__)


def load_options_from(cfg) -> LoadOptions:
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

    # --- RingBufferPlugin hooks -----------------------------------------------------------------------------
    def load_program(self, ctx: PluginContext) -> PacketParserProgram:
        return PacketParserProgram(load_options_from(ctx.config))

    def adopt_program(self, program: PacketParserProgram, ctx: PluginContext) -> None:
        program.configure(load_options_from(ctx.config))

    def prepare(self, ctx: PluginContext) -> None:
        super().prepare(ctx)
        self.sweeper = ConntrackSweeper(self.program, ctx.config.conntrack_report_interval_ns)

    def make_reader(self, ctx: PluginContext) -> RingBufferReader:
        decoder = EventDecoder(ctx.config.node_name, self.ifnames)
        return RingBufferReader(self.program.bpf, "events", decoder, ctx.flow_sink, on_batch=ctx.telemetry.add_parsed)

    def lost_events(self, program: PacketParserProgram) -> int:
        return program.lost_counts()["ringbuf_full"]

    def exports_families(self, cfg) -> bool:
        return bool(getattr(cfg, "enable_conntrack_metrics", False))

    def start_helpers(self) -> None:
        self.sweeper.start()

    def stop_helpers(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
            try:
                self.flush()  # nothing counted is left behind in the map
            except Exception:
                log.exception("final conntrack harvest failed")

    # --- conntrack ------------------------------------------------------------------------------------------
    def families(self):
        """``enableConntrackMetrics``: Retina's conntrack gauges, summed over live entries at the last sweep
        (tx = initiator -> responder, rx = replies)."""
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
        }
