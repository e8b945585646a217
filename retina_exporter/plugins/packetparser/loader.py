"""Compile and load ``bpf/packetparser.bpf.c`` with bcc, and own its maps.

bcc compiles at run time against ``/lib/modules/$(uname -r)/build``; only uapi types are used, so distribution
headers for another kernel version are fine. Compiling takes about a second: load once per process.
"""

from __future__ import annotations

import ctypes as ct
import logging
from dataclasses import dataclass

from retina_exporter.datapath.compiler import BPF_DIR, BccProgram, compile_program, load_functions, ring_pages
from retina_exporter.datapath.pins import open_pins
from retina_exporter.bpf import packetparser as layout

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "packetparser.bpf.c"

# Program names in the C file (at most 15 characters: the kernel's name length). Every one starts with
# PROGRAM_PREFIX, which is how stale TC attachments of an earlier run are recognised.
PROGRAM_PREFIX = "retina_"
FROM_ENDPOINT = "retina_from_ep"  # pod veth, TC ingress
TO_ENDPOINT = "retina_to_ep"  # pod veth, TC egress
FROM_NETWORK = "retina_from_net"  # host interface, TC ingress
TO_NETWORK = "retina_to_net"  # host interface, TC egress
CLASSIFIERS = (FROM_ENDPOINT, TO_ENDPOINT, FROM_NETWORK, TO_NETWORK)
SWEEP_PROGRAM = "retina_ct_sweep"
# Maps kept in bpffs across restarts (bpfPinning): the unreported counts, the records not read yet, the kernel's
# lost counters. config and retina_filter are written by every start.
PINNED_MAPS = ("conntrack", "events", "lost")


@dataclass(frozen=True)
class LoadOptions:
    """What the kernel side is built and configured with."""

    ct_map_size: int = 262144
    ring_buffer_bytes: int = 8 * 1024 * 1024  # power of two, >= one page
    aggregation_high: bool = False
    sampling_rate: int = 1
    report_interval_ns: int = 30 * 1_000_000_000
    # Conntrack lifetimes (ns), as the reference agents: TCP 360 s, handshake 60 s, TIME_WAIT 30 s, others 60 s.
    tcp_lifetime_ns: int = 360 * 1_000_000_000
    syn_timeout_ns: int = 60 * 1_000_000_000
    time_wait_ns: int = 30 * 1_000_000_000
    nontcp_lifetime_ns: int = 60 * 1_000_000_000
    # IP-of-interest filter (annotation opt-in): only packets with an address in retina_filter are tracked.
    filter_enabled: bool = False
    filter_map_size: int = 4096
    # Connection attempts (tcpMetrics.connect): connect latency and failed connections, histogram bounds in ns.
    conn_enabled: bool = False
    bounds_ns: tuple[int, ...] = ()


class PacketParserProgram(BccProgram):
    """The loaded BPF object: program fds by name, and the maps ``events``, ``conntrack``, ``config``, ``lost``.

    ``pin_root``: keep :data:`PINNED_MAPS` pinned under it (``bpfPinPath``), reusing the pins of an earlier run of
    the same layout (:mod:`retina_exporter.datapath.pins`)."""

    def __init__(self, options: LoadOptions, pin_root: str | None = None) -> None:
        self.options = options
        pages = ring_pages(options.ring_buffer_bytes, "packetParserRingBufferSize")
        defines = {"CT_MAP_SIZE": options.ct_map_size, "RINGBUF_PAGES": pages,
                   "FILTER_MAP_SIZE": options.filter_map_size,
                   "ATTEMPT_MAP_SIZE": max(1024, options.ct_map_size // 4)}
        self.bpf = compile_program("packetparser", SOURCE, defines)
        self.pins = open_pins(pin_root, "packetparser", SOURCE, defines)  # after compiling: the shortest gap
        if self.pins is not None:
            self.pins.adopt_maps(self.bpf, PINNED_MAPS)
        self.functions = load_functions(self.bpf, CLASSIFIERS + (SWEEP_PROGRAM,), SOURCE)
        self.events = self.bpf[b"events"]
        self.conntrack = self.bpf[b"conntrack"]
        self.config_map = self.bpf[b"config"]
        self.lost = self.bpf[b"lost"]
        self.tcp_stats = self.bpf[b"tcp_stats"]
        from retina_exporter.plugins.packetparser.filtermap import IpFilterMap

        self.filter = IpFilterMap(self.bpf[b"retina_filter"], options.filter_map_size)
        self.configure(options)

    def configure(self, options: LoadOptions) -> None:
        """Write the runtime configuration map (takes effect for the next packet)."""
        cfg = self.config_map.Leaf()
        cfg.report_interval_ns = options.report_interval_ns
        cfg.aggregation_high = 1 if options.aggregation_high else 0
        cfg.sampling_threshold = layout.sampling_threshold(options.sampling_rate)
        cfg.tcp_lifetime_ns = options.tcp_lifetime_ns
        cfg.syn_timeout_ns = options.syn_timeout_ns
        cfg.time_wait_ns = options.time_wait_ns
        cfg.nontcp_lifetime_ns = options.nontcp_lifetime_ns
        cfg.filter_enabled = 1 if options.filter_enabled else 0
        if len(options.bounds_ns) > layout.HIST_MAX_BOUNDS:
            raise ValueError(f"at most {layout.HIST_MAX_BOUNDS} histogram bounds, got {len(options.bounds_ns)}")
        cfg.conn_enabled = 1 if options.conn_enabled else 0
        cfg.n_bounds = len(options.bounds_ns)
        for i, b in enumerate(options.bounds_ns):
            cfg.bounds_ns[i] = b
        self.config_map[ct.c_int(0)] = cfg
        self.options = options

    def prog_fd(self, name: str) -> int:
        return self.functions[name].fd

    def tcp_counts(self) -> dict:
        """Node-level connection counters summed over CPUs: ``reset``, ``timeout`` (failed attempts), and the
        connect-latency histogram as ``count``, ``sum_ns`` and ``buckets`` (per bucket, not cumulative, the last
        one +Inf)."""
        values = [int(sum(self.tcp_stats[ct.c_int(i)])) for i in range(layout.TCP_STAT_SLOTS)]
        n = len(self.options.bounds_ns)
        first = layout.TCP_STAT_CONNECT_BUCKET0
        return {
            "reset": values[layout.TCP_STAT_RESET],
            "timeout": values[layout.TCP_STAT_TIMEOUT],
            "count": values[layout.TCP_STAT_CONNECT_COUNT],
            "sum_ns": values[layout.TCP_STAT_CONNECT_SUM_NS],
            "buckets": values[first:first + n + 1],
        }

    def lost_counts(self) -> dict[str, int]:
        """Kernel-side lost counters summed over CPUs: ``ringbuf_full`` and ``conntrack_full``."""
        out = {}
        for slot, label in ((layout.LOST_RINGBUF_FULL, "ringbuf_full"), (layout.LOST_CT_FULL, "conntrack_full")):
            values = self.lost[ct.c_int(slot)]
            out[label] = int(sum(values))
        return out
