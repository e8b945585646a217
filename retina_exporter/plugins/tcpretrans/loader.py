"""Compile ``bpf/tcpretrans.bpf.c`` with bcc for the running kernel, attach it to the ``tcp:tcp_retransmit_skb``
(and, when present, ``tcp:tcp_retransmit_synack``) tracepoints, own its maps.

Version-dependent facts are read at start-up and handed to the compiler as ``-D`` defines: the tracepoint
records' field offsets from ``<tracefs>/events/tcp/<event>/format`` (``TP_SKB_OFF_*``, ``TP_SA_OFF_*``; ``err``
exists since Linux 6.10 or so), and -- when the kernel has BTF -- ``sock``/``net``/``sk_buff``/``tcp_skb_cb``
member offsets from :mod:`retina_exporter.datapath.btf` (netns inode, segment count, TCP flags). Without BTF the plugin
still counts, with netns 0 (no namespace scoping), 1 segment per retransmission and no flags.
"""

from __future__ import annotations

import ctypes as ct
import logging
import threading
from dataclasses import dataclass

from retina_exporter.datapath import btf as btfmod
from retina_exporter.datapath.compiler import BPF_DIR, BccProgram, compile_program, load_functions, ring_pages
from retina_exporter.datapath.tracepoint import (
    DEFAULT_TRACEFS,
    TracepointMissing,
    field_defines,
    read_format,
)
from retina_exporter.errors import StartupError
from retina_exporter.bpf import tcpretrans as layout

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "tcpretrans.bpf.c"
PROG_SKB = "rtcp_retrans"
PROG_SYNACK = "rtcp_synack"
TP_SKB = ("tcp", "tcp_retransmit_skb")
TP_SYNACK = ("tcp", "tcp_retransmit_synack")

# (define suffix, field, expected size)
SKB_FIELDS = (
    ("SKBADDR", "skbaddr", 8),
    ("SKADDR", "skaddr", 8),
    ("STATE", "state", 4),
    ("SPORT", "sport", 2),
    ("DPORT", "dport", 2),
    ("FAMILY", "family", 2),
    ("SADDR", "saddr", 4),
    ("DADDR", "daddr", 4),
    ("SADDR_V6", "saddr_v6", 16),
    ("DADDR_V6", "daddr_v6", 16),
)
SYNACK_FIELDS = tuple(f for f in SKB_FIELDS if f[1] not in ("skbaddr", "state"))
# (define, struct, member path, expected size or None)
KERNEL_OFFSETS = (
    ("OFF_SK_NET", "sock", "__sk_common.skc_net.net", 8),
    ("OFF_NET_INUM", "net", "ns.inum", 4),
    ("OFF_SKB_CB", "sk_buff", "cb", None),
    ("OFF_TCB_GSO_SEGS", "tcp_skb_cb", "tcp_gso_segs", 2),
    ("OFF_TCB_FLAGS", "tcp_skb_cb", "tcp_flags", None),
)


@dataclass(frozen=True)
class LoadOptions:
    ring_buffer_bytes: int = 256 * 1024
    tracefs: str = DEFAULT_TRACEFS
    btf_path: str = btfmod.VMLINUX
    netns_map_size: int = 4096
    use_btf: bool = True


def kernel_offsets(path: str) -> dict[str, int] | None:
    """BTF member offsets, or None (logged) when the kernel has no usable BTF."""
    try:
        b = btfmod.load(path)
        out = {}
        for define, struct_name, member, size in KERNEL_OFFSETS:
            off, got = b.member_offset(struct_name, member)
            if size is not None and got != size:
                raise btfmod.BtfError(f"{struct_name}.{member} is {got} bytes, expected {size}")
            out[define] = off
        return out
    except (btfmod.BtfError, OSError) as exc:
        log.warning("tcpretrans: no kernel BTF offsets (%s): no netns scoping, 1 segment per retransmission", exc)
        return None


class TcpRetransProgram(BccProgram):
    """The compiled program and its maps: ``rt_events``, ``rt_config``, ``netns_filter``, ``rt_stats``."""

    attached: list[bytes] | tuple = ()  # until __init__ has run: close() after a failed __init__ detaches nothing

    def __init__(self, options: LoadOptions = LoadOptions()) -> None:
        self.options = options
        pages = ring_pages(options.ring_buffer_bytes, "tcpretrans ring buffer size")
        skb_fmt = read_format(*TP_SKB, tracefs=options.tracefs, plugin="tcpretrans", missing_hint="")
        defines = field_defines(skb_fmt, "TP_SKB_OFF_", SKB_FIELDS, plugin="tcpretrans")
        err = skb_fmt.fields.get("err")
        if err is not None and err.size == 4:
            defines["TP_SKB_OFF_ERR"] = err.offset
            defines["TP_SKB_HAS_ERR"] = 1
        try:
            sa_fmt = read_format(*TP_SYNACK, tracefs=options.tracefs, plugin="tcpretrans", missing_hint="")
            defines.update(field_defines(sa_fmt, "TP_SA_OFF_", SYNACK_FIELDS, plugin="tcpretrans"))
            defines["HAVE_SYNACK"] = 1
        except TracepointMissing:
            log.info("tcpretrans: no tcp:tcp_retransmit_synack tracepoint; SYN-ACK retransmissions are not counted")
        self.has_synack = defines.get("HAVE_SYNACK") == 1
        self.has_err = defines.get("TP_SKB_HAS_ERR") == 1
        koff = kernel_offsets(options.btf_path) if options.use_btf else None
        self.has_kernel_offsets = koff is not None
        if koff:
            defines.update(koff)
            defines["HAVE_KERNEL_OFFSETS"] = 1
        self.defines = defines
        sizes = {"RINGBUF_PAGES": pages, "NETNS_MAP_SIZE": options.netns_map_size}
        self.bpf = compile_program("tcpretrans", SOURCE, {**sizes, **dict(sorted(defines.items()))})
        load_functions(self.bpf, (PROG_SKB, PROG_SYNACK) if self.has_synack else (PROG_SKB,), SOURCE, "TRACEPOINT")
        self.config_map = self.bpf[b"rt_config"]
        self.stats_map = self.bpf[b"rt_stats"]
        self.netns_filter = self.bpf[b"netns_filter"]
        self.attached = []
        self._lock = threading.Lock()
        self.configure()

    def configure(self, emit_events: bool = False, netns: set[int] | None = None) -> None:
        """Events on/off and the namespace filter (``None``: every namespace)."""
        with self._lock:
            if netns is not None:
                self.sync_u32_set(self.netns_filter, netns)
            cfg = layout.RtConfig()
            cfg.filter_netns = 0 if netns is None else 1
            cfg.emit_events = 1 if emit_events else 0
            self.config_map[ct.c_int(0)] = cfg

    def attach(self) -> None:
        targets = [(b"tcp:tcp_retransmit_skb", PROG_SKB)]
        if self.has_synack:
            targets.append((b"tcp:tcp_retransmit_synack", PROG_SYNACK))
        for tp, prog in targets:
            if tp in self.attached:
                continue
            try:
                self.bpf.attach_tracepoint(tp=tp, fn_name=prog.encode())
            except Exception as exc:
                self.detach()
                raise StartupError(f"tcpretrans: attaching to {tp.decode()} failed: {exc} (is tracefs mounted?)") from exc
            self.attached.append(tp)

    def detach(self) -> None:
        for tp in list(self.attached):
            try:
                self.bpf.detach_tracepoint(tp)
            except Exception:
                log.exception("detaching %s failed", tp)
            self.attached.remove(tp)

    def set_event_handler(self, handler) -> None:
        """Route ring-buffer records to ``handler(ctx, data, size)`` (None: discard). Opens the ring once."""
        self.route_ring_buffer("rt_events", handler)

    def stats(self) -> dict[str, int]:
        return {name: int(sum(self.stats_map[ct.c_int(i)])) for i, name in enumerate(layout.STAT_NAMES)}
