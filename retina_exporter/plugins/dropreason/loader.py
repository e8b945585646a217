"""Compile ``bpf/dropreason.bpf.c`` with bcc for the running kernel, attach it to ``skb:kfree_skb``, own its maps.

Everything kernel-version dependent is looked up at start-up and handed to the compiler as ``-D`` defines:

* the tracepoint record's field offsets (``TP_OFF_*``) from ``<tracefs>/events/skb/kfree_skb/format``;
* ``sk_buff``, ``skb_shared_info``, ``net_device``, ``sock`` and ``net`` member offsets (``OFF_*``) from the
  running kernel's BTF (:mod:`retina_exporter.datapath.btf`), never from the headers bcc compiles against (on this
  project's machines those are another kernel's).

Compiling takes about a second: do it once per process (tests share one program per module).
"""

from __future__ import annotations

import ctypes as ct
import logging
import threading
from dataclasses import dataclass

from retina_exporter.datapath import btf as btfmod
from retina_exporter.datapath.compiler import BPF_DIR, BccProgram, compile_program, load_functions, ring_pages
from retina_exporter.datapath.tracepoint import DEFAULT_TRACEFS, TracepointFormat, read_format
from retina_exporter.errors import StartupError
from retina_exporter.bpf import dropreason as layout

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "dropreason.bpf.c"
PROGRAM = "retina_drop"
TRACEPOINT = ("skb", "kfree_skb")

# (define, struct, member path, expected size or None)
KERNEL_OFFSETS = (
    ("OFF_SKB_LEN", "sk_buff", "len", 4),
    ("OFF_SKB_DEV", "sk_buff", "dev", 8),
    ("OFF_SKB_SK", "sk_buff", "sk", 8),
    ("OFF_SKB_HEAD", "sk_buff", "head", 8),
    ("OFF_SKB_DATA", "sk_buff", "data", 8),
    ("OFF_SKB_NETWORK_HEADER", "sk_buff", "network_header", 2),
    ("OFF_SKB_SKB_IIF", "sk_buff", "skb_iif", 4),
    ("OFF_SKB_END", "sk_buff", "end", 4),  # an offset from head (NET_SKBUFF_DATA_USES_OFFSET, every 64-bit kernel)
    ("OFF_SHINFO_GSO_SIZE", "skb_shared_info", "gso_size", 2),
    ("OFF_SHINFO_GSO_SEGS", "skb_shared_info", "gso_segs", 2),
    ("OFF_DEV_IFINDEX", "net_device", "ifindex", 4),
    ("OFF_DEV_ND_NET", "net_device", "nd_net.net", 8),
    ("OFF_SK_NET", "sock", "__sk_common.skc_net.net", 8),
    ("OFF_NET_INUM", "net", "ns.inum", 4),
)
# (define, tracepoint field, expected size)
TRACEPOINT_FIELDS = (
    ("TP_OFF_SKBADDR", "skbaddr", 8),
    ("TP_OFF_LOCATION", "location", 8),
    ("TP_OFF_PROTOCOL", "protocol", 2),
    ("TP_OFF_REASON", "reason", 4),
)


@dataclass(frozen=True)
class LoadOptions:
    ring_buffer_bytes: int = 1 << 20  # power of two >= one page; pod-level events only
    tracefs: str = DEFAULT_TRACEFS
    btf_path: str = btfmod.VMLINUX
    counts_map_size: int = 2048
    netns_map_size: int = 4096


def kernel_offsets(b: btfmod.BTF) -> dict[str, int]:
    """The ``OFF_*`` defines from BTF; a :class:`StartupError` naming what does not fit."""
    out = {}
    for define, struct_name, path, size in KERNEL_OFFSETS:
        try:
            off, got = b.member_offset(struct_name, path)
        except btfmod.BtfError as exc:
            raise StartupError(f"dropreason: kernel BTF lacks {struct_name}.{path}: {exc}") from None
        if size is not None and got != size:
            raise StartupError(
                f"dropreason: {struct_name}.{path} is {got} bytes in this kernel's BTF, expected {size}"
            )
        out[define] = off
    return out


def tracepoint_offsets(fmt: TracepointFormat) -> dict[str, int]:
    out = {}
    for define, name, size in TRACEPOINT_FIELDS:
        f = fmt.field(name)
        if f.size != size:
            raise StartupError(
                f"dropreason: field {name} of {fmt.system}:{fmt.event} is {f.size} bytes, expected {size} ({fmt.path})"
            )
        out[define] = f.offset
    return out


class DropReasonProgram(BccProgram):
    """The compiled program and its maps: ``counts``, ``config``, ``stats``, ``netns_filter``, ``events``."""

    attached = False

    def __init__(self, options: LoadOptions = LoadOptions()) -> None:
        self.options = options
        pages = ring_pages(options.ring_buffer_bytes, "dropreason ring buffer size")
        # Fail on a missing tracepoint before anything else: it is the clearest message.
        self.tp_format = read_format(*TRACEPOINT, tracefs=options.tracefs)
        tp_defines = tracepoint_offsets(self.tp_format)
        try:
            b = btfmod.load(options.btf_path)
        except btfmod.BtfError as exc:
            raise StartupError(f"dropreason needs kernel BTF for struct offsets: {exc}") from None
        self.defines = {**tp_defines, **kernel_offsets(b)}
        sizes = {"RINGBUF_PAGES": pages, "COUNTS_MAP_SIZE": options.counts_map_size,
                 "NETNS_MAP_SIZE": options.netns_map_size}
        self.bpf = compile_program("dropreason", SOURCE, {**sizes, **dict(sorted(self.defines.items()))})
        load_functions(self.bpf, (PROGRAM,), SOURCE, "TRACEPOINT")
        self.counts = self.bpf[b"counts"]
        self.config_map = self.bpf[b"config"]
        self.stats = self.bpf[b"stats"]
        self.netns_filter = self.bpf[b"netns_filter"]
        self._lock = threading.Lock()
        self.configure()

    # --- configuration -------------------------------------------------------------------------------------

    def configure(self, ignore_codes=(), emit_events: bool = False, netns: set[int] | None = None) -> None:
        """Ignore mask, pod-level events on/off, and the namespace filter (``None``: every namespace)."""
        with self._lock:
            if netns is not None:
                self.sync_u32_set(self.netns_filter, netns)
            cfg = layout.DrConfig()
            for i, w in enumerate(layout.ignore_mask(ignore_codes)):
                cfg.ignore_mask[i] = w
            cfg.emit_events = 1 if emit_events else 0
            cfg.filter_netns = 0 if netns is None else 1
            self.config_map[ct.c_int(0)] = cfg

    def netns_in_filter(self) -> set[int]:
        return {k.value for k in self.netns_filter.keys()}

    # --- attach --------------------------------------------------------------------------------------------

    def attach(self) -> None:
        if self.attached:
            return
        try:
            self.bpf.attach_tracepoint(tp=b"skb:kfree_skb", fn_name=PROGRAM.encode())
        except Exception as exc:
            raise StartupError(f"dropreason: attaching to skb:kfree_skb failed: {exc}") from exc
        self.attached = True

    def detach(self) -> None:
        if self.attached and self.bpf is not None:
            try:
                self.bpf.detach_tracepoint(b"skb:kfree_skb")
            except Exception:
                log.exception("detaching skb:kfree_skb failed")
            self.attached = False

    # --- events -------------------------------------------------------------------------------------------

    def set_event_handler(self, handler) -> None:
        """Route ring-buffer records to ``handler(ctx, data, size)`` (None: discard). Opens the ring once."""
        self.route_ring_buffer("events", handler)

    # --- reading -------------------------------------------------------------------------------------------

    def read_counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        """``{(reason, hint): (packets, bytes)}`` summed over CPUs (kernel totals since load)."""
        out = {}
        for key, per_cpu in self.counts.items():
            packets = nbytes = 0
            for v in per_cpu:
                packets += v.packets
                nbytes += v.bytes
            out[(key.reason, key.hint)] = (packets, nbytes)
        return out

    def read_stats(self) -> dict[str, int]:
        out = {}
        for slot, name in enumerate(layout.STAT_NAMES):
            out[name] = int(sum(self.stats[ct.c_int(slot)]))
        return out
