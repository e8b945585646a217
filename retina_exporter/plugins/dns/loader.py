"""Compile and load ``bpf/dns.bpf.c`` with bcc, and own its maps (``dns_events``, ``seen_ifindex``,
``dns_stats``). Compiling takes about a second: load once per process (tests: once per module)."""

from __future__ import annotations

import ctypes as ct
import logging

from retina_exporter.datapath.compiler import BPF_DIR, BccProgram, compile_program, load_functions, ring_pages
from retina_exporter.bpf import dns as layout

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "dns.bpf.c"

# Program names (<= 15 characters). The prefix is this plugin's own: packetparser's stale-attachment cleanup
# removes "retina_" programs, and ours must survive it (and vice versa).
PROGRAM_PREFIX = "rdns_"
FROM_ENDPOINT = "rdns_from_ep"
TO_ENDPOINT = "rdns_to_ep"
FROM_NETWORK = "rdns_from_net"
TO_NETWORK = "rdns_to_net"
CLASSIFIERS = (FROM_ENDPOINT, TO_ENDPOINT, FROM_NETWORK, TO_NETWORK)
DEFAULT_RING_BYTES = 1 << 20
SEEN_MAP_SIZE = 4096


class DnsProgram(BccProgram):
    """The loaded BPF object: program fds by name, the ring buffer, the seen-interface map and statistics."""

    def __init__(self, ring_buffer_bytes: int = DEFAULT_RING_BYTES) -> None:
        pages = ring_pages(ring_buffer_bytes, "dns ring buffer size")
        self.bpf = compile_program("the dns plugin", SOURCE, {"RINGBUF_PAGES": pages, "SEEN_MAP_SIZE": SEEN_MAP_SIZE})
        self.functions = load_functions(self.bpf, CLASSIFIERS, SOURCE)
        self.seen = self.bpf[b"seen_ifindex"]
        self.stats_map = self.bpf[b"dns_stats"]

    def set_event_handler(self, handler) -> None:
        """Route ring-buffer records to ``handler(ctx, data, size)`` (None: discard)."""
        self.route_ring_buffer("dns_events", handler)

    def prog_fd(self, name: str) -> int:
        return self.functions[name].fd

    def stats(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs (see ``DNS_STAT_*`` in bpf/dns.h)."""
        out = {}
        for slot, label in enumerate(layout.STAT_NAMES):
            out[label] = int(sum(self.stats_map[ct.c_int(slot)]))
        return out

    def set_seen(self, ifindexes: set[int]) -> None:
        """Make the kernel's ``seen_ifindex`` map hold exactly ``ifindexes``."""
        self.sync_u32_set(self.seen, ifindexes)

    def seen_set(self) -> set[int]:
        return {int(k.value) for k in self.seen.keys()}
