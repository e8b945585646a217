"""Compile and load ``bpf/dns.bpf.c`` with bcc, and own its maps (``dns_events``, ``seen_ifindex``,
``dns_stats``). Compiling takes about a second: load once per process (tests: once per module)."""

from __future__ import annotations

import ctypes as ct
import logging
from pathlib import Path

from retina_exporter.errors import StartupError
from retina_exporter.plugins.dns import layout
from retina_exporter.datapath.compiler import BPF_DIR, check_kernel_headers
from retina_exporter.datapath.sysfs import missing_capabilities

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
PAGE_SIZE = 4096
DEFAULT_RING_BYTES = 1 << 20
SEEN_MAP_SIZE = 4096


class DnsProgram:
    """The loaded BPF object: program fds by name, the ring buffer, the seen-interface map and statistics."""

    def __init__(self, ring_buffer_bytes: int = DEFAULT_RING_BYTES) -> None:
        if ring_buffer_bytes < PAGE_SIZE or ring_buffer_bytes & (ring_buffer_bytes - 1):
            raise StartupError(f"dns ring buffer size {ring_buffer_bytes} must be a power of two >= {PAGE_SIZE}")
        check_kernel_headers()
        missing = missing_capabilities()
        if missing:
            raise StartupError(f"the dns plugin needs {', '.join(missing)}: run the agent as root or grant them")
        from bcc import BPF

        cflags = [
            f"-I{BPF_DIR}",
            f"-DRINGBUF_PAGES={ring_buffer_bytes // PAGE_SIZE}",
            f"-DSEEN_MAP_SIZE={SEEN_MAP_SIZE}",
            "-Wno-unused-function",
        ]
        try:
            self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        except Exception as exc:
            raise StartupError(f"compiling {SOURCE} failed ({exc}); check kernel headers ('make setup')") from exc
        self.functions = {}
        for name in CLASSIFIERS:
            try:
                self.functions[name] = self.bpf.load_func(name.encode(), BPF.SCHED_CLS)
            except Exception as exc:
                raise StartupError(f"loading BPF program {name} failed: {exc} (verifier log above)") from exc
        self.seen = self.bpf[b"seen_ifindex"]
        self.stats_map = self.bpf[b"dns_stats"]
        self._handler = None
        self._ring_open = False

    def set_event_handler(self, handler) -> None:
        """Route ring-buffer records to ``handler(ctx, data, size)`` (None: discard). bcc opens a ring buffer only
        once per object, so a program shared by successive plugin instances (tests) switches handlers here."""
        self._handler = handler
        if not self._ring_open:
            self.bpf[b"dns_events"].open_ring_buffer(self._dispatch)
            self._ring_open = True

    def _dispatch(self, ctx, data, size) -> int:
        handler = self._handler
        return 0 if handler is None else handler(ctx, data, size)

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
        present = {int(k.value) for k in self.seen.keys()}
        for index in present - ifindexes:
            try:
                del self.seen[ct.c_uint32(index)]
            except KeyError:
                pass
        for index in ifindexes - present:
            self.seen[ct.c_uint32(index)] = ct.c_uint8(1)

    def seen_set(self) -> set[int]:
        return {int(k.value) for k in self.seen.keys()}

    def close(self) -> None:
        bpf, self.bpf = getattr(self, "bpf", None), None
        if bpf is not None:
            bpf.cleanup()
