"""Compile and load ``bpf/packetparser.bpf.c`` with bcc, and own its maps.

bcc compiles at run time against ``/lib/modules/$(uname -r)/build``; only uapi types are used, so distribution
headers for another kernel version are fine. Compiling takes about a second: load once per process.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from retina_exporter.errors import StartupError
from retina_exporter.plugins.packetparser import layout
from retina_exporter.datapath.compiler import BPF_DIR, check_kernel_headers
from retina_exporter.datapath.sysfs import missing_capabilities

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
PAGE_SIZE = 4096


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


class PacketParserProgram:
    """The loaded BPF object: program fds by name, and the maps ``events``, ``conntrack``, ``config``, ``lost``."""

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        if options.ring_buffer_bytes < PAGE_SIZE or options.ring_buffer_bytes & (options.ring_buffer_bytes - 1):
            raise StartupError(
                f"packetParserRingBufferSize={options.ring_buffer_bytes} must be a power of two >= {PAGE_SIZE}"
            )
        check_kernel_headers()
        missing = missing_capabilities()
        if missing:
            raise StartupError(
                f"packetparser needs {', '.join(missing)}: run the agent as root or grant the capabilities "
                "(securityContext.capabilities.add in the DaemonSet)"
            )
        from bcc import BPF  # imported late: the module needs root-only kernel access on import in some builds

        self._bpf_cls = BPF
        cflags = [
            f"-I{BPF_DIR}",
            f"-DCT_MAP_SIZE={options.ct_map_size}",
            f"-DRINGBUF_PAGES={options.ring_buffer_bytes // PAGE_SIZE}",
            f"-DFILTER_MAP_SIZE={options.filter_map_size}",
            "-Wno-unused-function",
        ]
        try:
            self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception with the compiler output on stderr
            raise StartupError(
                f"compiling {SOURCE} failed ({exc}); check kernel headers ('make setup') and the compiler output above"
            ) from exc
        self.functions = {}
        for name in CLASSIFIERS + (SWEEP_PROGRAM,):
            try:
                self.functions[name] = self.bpf.load_func(name.encode(), BPF.SCHED_CLS)
            except Exception as exc:
                raise StartupError(f"loading BPF program {name} failed: {exc} (verifier log above)") from exc
        self.events = self.bpf[b"events"]
        self.conntrack = self.bpf[b"conntrack"]
        self.config_map = self.bpf[b"config"]
        self.lost = self.bpf[b"lost"]
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
        self.config_map[ct.c_int(0)] = cfg
        self.options = options

    def prog_fd(self, name: str) -> int:
        return self.functions[name].fd

    def lost_counts(self) -> dict[str, int]:
        """Kernel-side lost counters summed over CPUs: ``ringbuf_full`` and ``conntrack_full``."""
        out = {}
        for slot, label in ((layout.LOST_RINGBUF_FULL, "ringbuf_full"), (layout.LOST_CT_FULL, "conntrack_full")):
            values = self.lost[ct.c_int(slot)]
            out[label] = int(sum(values))
        return out

    def close(self) -> None:
        """Release maps and programs (the kernel frees them once nothing else holds them)."""
        bpf, self.bpf = getattr(self, "bpf", None), None
        if bpf is not None:
            bpf.cleanup()
