"""The packetparser plugin: TC programs on pod veths and host interfaces -> conntrack -> flow records.

Lifecycle: ``init`` compiles and loads the programs (and fails early, with the fix, on missing headers,
privileges or host interfaces); ``start`` attaches to ``hostInterfaces`` and to every pod veth the watcher finds
(and to new ones as they appear), starts the ring-buffer reader and the conntrack sweeper; ``stop`` detaches
everything it attached and releases the BPF objects.
"""

from __future__ import annotations

import logging
import os
import socket

from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_exporter.plugins.packetparser import loader
from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram
from retina_exporter.plugins.packetparser.reader import EventDecoder, RingBufferReader
from retina_exporter.plugins.packetparser.sweeper import ConntrackSweeper
from retina_exporter.datapath.vethwatch import VethWatcher
from retina_core.telemetry import LOST_KERNEL
from retina_exporter.datapath.tc import AttachError, TcAttacher

log = logging.getLogger(__name__)


def load_options_from(cfg) -> LoadOptions:
    return LoadOptions(
        ct_map_size=cfg.conntrack_map_size,
        ring_buffer_bytes=cfg.ring_buffer_size,
        aggregation_high=cfg.data_aggregation_level == "high",
        sampling_rate=max(1, cfg.data_sampling_rate),
        report_interval_ns=cfg.conntrack_report_interval_ns,
        filter_enabled=cfg.enable_annotations and not cfg.bypass_lookup_ip_of_interest,
        filter_map_size=cfg.filter_map_max_entries,
    )


def interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise StartupError(
            f"hostInterfaces: interface {name!r} does not exist in this network namespace "
            f"(pid {os.getpid()}); fix the hostInterfaces config key or create the interface"
        ) from None


class PacketParserPlugin(Plugin):
    name = "packetparser"

    def __init__(self, program: PacketParserProgram | None = None) -> None:
        self._program = program  # tests may hand in a program compiled once per session
        self._owns_program = program is None
        self.program: PacketParserProgram | None = None
        self.attacher: TcAttacher | None = None
        self.reader: RingBufferReader | None = None
        self.sweeper: ConntrackSweeper | None = None
        self.watcher: VethWatcher | None = None
        self.ifnames: dict[int, str] = {}
        self.attached: dict[int, list] = {}
        self.host_interfaces: tuple[str, ...] = ()

    def init(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.host_interfaces = tuple(cfg.host_interfaces)
        for name in self.host_interfaces:  # fail before loading anything
            interface_index(name)
        options = load_options_from(cfg)
        if self._program is not None:
            self._program.configure(options)
            self.program = self._program
        else:
            self.program = PacketParserProgram(options)
        self.attacher = TcAttacher(prefix=loader.PROGRAM_PREFIX, enable_tcx=cfg.enable_tcx)
        decoder = EventDecoder(cfg.node_name, self.ifnames)
        telemetry = ctx.telemetry
        self.reader = RingBufferReader(
            self.program.bpf, "events", decoder, ctx.flow_sink, on_batch=telemetry.add_parsed
        )
        program = self.program
        telemetry.lost_source(LOST_KERNEL, self.name, lambda: program.lost_counts()["ringbuf_full"])
        self.sweeper = ConntrackSweeper(self.program, cfg.conntrack_report_interval_ns)
        if getattr(cfg, "enable_conntrack_metrics", False) and ctx.metrics is not None:
            ctx.metrics.register(self._conntrack_families)
            self._registered = ctx.metrics

    def _attach_pair(self, ifindex: int, ifname: str, ingress_prog: str, egress_prog: str) -> None:
        assert self.attacher is not None and self.program is not None
        self.attacher.remove_stale(ifindex)
        atts = []
        try:
            atts.append(self.attacher.attach(ifindex, "ingress", self.program.prog_fd(ingress_prog), ingress_prog))
            atts.append(self.attacher.attach(ifindex, "egress", self.program.prog_fd(egress_prog), egress_prog))
        except Exception:
            for att in atts:
                self.attacher.detach(att)
            raise
        self.ifnames[ifindex] = ifname
        self.attached[ifindex] = atts
        log.info("packetparser attached to %s (ifindex %d) via %s", ifname, ifindex, atts[0].mode)

    def _on_veth_add(self, ifindex: int, ifname: str) -> None:
        self._attach_pair(ifindex, ifname, loader.FROM_ENDPOINT, loader.TO_ENDPOINT)

    def _on_veth_remove(self, ifindex: int, ifname: str) -> None:
        atts = self.attached.pop(ifindex, [])
        for att in atts:
            try:
                self.attacher.detach(att)  # the kernel already dropped it with the device; this closes our fds
            except Exception:
                pass
        log.info("packetparser forgot %s (ifindex %d)", ifname, ifindex)

    def start(self) -> None:
        assert self.reader is not None and self.sweeper is not None
        for name in self.host_interfaces:
            index = interface_index(name)
            try:
                self._attach_pair(index, name, loader.FROM_NETWORK, loader.TO_NETWORK)
            except AttachError as exc:
                raise StartupError(str(exc)) from exc
        self.reader.start()
        self.sweeper.start()
        self.watcher = VethWatcher(self._on_veth_add, self._on_veth_remove, excluded=set(self.host_interfaces))
        self.watcher.start()

    def _conntrack_families(self):
        """``enableConntrackMetrics``: Retina's conntrack gauges, summed over live entries at the last sweep
        (tx = initiator -> responder, rx = replies)."""
        last = self.sweeper.last if self.sweeper is not None else None
        if last is None:
            return []
        prefix = "networkobservability_conntrack_"
        rows = (
            ("packets_tx", "Packets sent by connection initiators, over live conntrack entries", last.packets_tx),
            ("packets_rx", "Packets sent by responders (replies), over live conntrack entries", last.packets_rx),
            ("bytes_tx", "Bytes sent by connection initiators, over live conntrack entries", last.bytes_tx),
            ("bytes_rx", "Bytes sent by responders, over live conntrack entries", last.bytes_rx),
            ("total_connections", "Live conntrack entries (one per connection and interface)", last.entries),
        )
        return [(prefix + name, "gauge", help_text, [((), value)]) for name, help_text, value in rows]

    def stop(self) -> None:
        registry = getattr(self, "_registered", None)
        if registry is not None:
            registry.unregister(self._conntrack_families)
            self._registered = None
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.attacher is not None:
            self.attacher.detach_all()
            self.attached.clear()
        if self.sweeper is not None:
            self.sweeper.stop()
            try:
                self.flush()  # nothing counted is left behind in the map
            except Exception:
                log.exception("final conntrack harvest failed")
        if self.reader is not None:
            self.reader.stop()
        if self.program is not None and self._owns_program:
            self.program.close()
        self.program = None

    def reconcile(self) -> None:
        if self.watcher is not None:
            self.watcher.scan()
        if self.reader is not None and not self.reader.alive():
            raise RuntimeError("ring-buffer reader thread died")

    def readers_alive(self) -> bool:
        return self.reader is not None and self.reader.alive()

    def health(self) -> list[str]:
        reasons = []
        if self.reader is not None and not self.reader.alive():
            reasons.append("ring-buffer reader not running")
        if self.sweeper is not None and not self.sweeper.alive():
            reasons.append("conntrack sweeper not running")
        return reasons

    def flush(self) -> None:
        """Harvest every unreported count now (shutdown, tests); the events follow through the reader."""
        if self.sweeper is not None and self.program is not None:
            self.sweeper.sweep_once(force=True)

    def debug(self) -> dict:
        return {
            "attached": {self.ifnames.get(i, str(i)): [a.mode for a in atts] for i, atts in self.attached.items()},
            "events_read": self.reader.events_read if self.reader else 0,
            "lost": self.program.lost_counts() if self.program else {},
            "sweeps": self.sweeper.sweeps if self.sweeper else 0,
        }
