"""TCP round-trip time for packetparser (``tcpMetrics.rtt``): ``bpf/tcprtt.bpf.c`` on the ``tcp:tcp_probe``
tracepoint, its maps, and its reader.

Why tcp:tcp_probe: it carries the kernel's smoothed RTT (``srtt``) and the socket's cookie, needs no kprobe
(this kernel has none) and sees every established socket of the host. It fires per received segment, so the
program bounds its cost: one LRU lookup per segment, and at most one sample per socket and
``tcpMetrics.rttSampleInterval`` (measured in ``bench/bench_tcpmetrics.py``). The alternative, one sample at close
from ``sock:inet_sock_set_state`` with ``tcp_sock.srtt_us`` read through BTF, costs less but says nothing about a
long-lived connection until it ends.

Socket state: ``rtt_last`` (sock_cookie -> time of its last sample) loses a socket's entry when the socket enters
TCP_CLOSE (``rtt_forget`` on ``sock:inet_sock_set_state``, a few hits per connection), so the map tracks live
sockets and stays flat under connection churn (``make soak``). Without kernel BTF (the cookie's offset in
``struct sock``) or that tracepoint, entries are left to the LRU bound.

Node level: ``networkobservability_tcp_rtt_seconds`` from the kernel's per-CPU histogram (exact over the samples
taken, even when the ring overflows). Pod level (``enablePodLevel``): each sample as an
:class:`~retina_core.record.EventRecord` (``conn_event == CONN_RTT``, ``rtt_ns``; source = the socket's own
address) into the flow sink, for ``adv_tcp_rtt_seconds``. Scope: with kernel BTF, the node's network namespace
and its pod veths' peers (re-discovered on every reconcile); without it, every namespace of the host.
"""

from __future__ import annotations

import ctypes as ct
import logging

from retina_core.record import CONN_RTT, DIR_UNKNOWN, IPPROTO_TCP, OBS_FROM_ENDPOINT, EventRecord
from retina_exporter.bpf import tcprtt as layout
from retina_exporter.datapath import btf as btfmod
from retina_exporter.datapath.compiler import BPF_DIR, BccProgram, compile_program, load_functions, ring_pages
from retina_exporter.datapath.ringreader import BpfRingReader
from retina_exporter.datapath.tracepoint import DEFAULT_TRACEFS, TracepointMissing, field_defines, read_format
from retina_exporter.errors import StartupError
from retina_exporter.plugins.packetparser.reader import boot_to_wall_offset_ns

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "tcprtt.bpf.c"
PROGRAM = "rtt_probe"
TRACEPOINT = ("tcp", "tcp_probe")
FORGET_PROGRAM = "rtt_forget"
RTT_PLUGIN = "packetparser (tcpMetrics.rtt)"
CLOSE_TRACEPOINT = ("sock", "inet_sock_set_state")
CLOSE_FIELDS = (("SKADDR", "skaddr", 8), ("NEWSTATE", "newstate", 4))
# (define suffix, field, size)
FIELDS = (("SADDR", "saddr", 28), ("DADDR", "daddr", 28), ("SPORT", "sport", 2), ("DPORT", "dport", 2),
          ("FAMILY", "family", 2), ("SRTT", "srtt", 4), ("SOCK_COOKIE", "sock_cookie", 8), ("SKADDR", "skaddr", 8))
NETNS_OFFSETS = (("OFF_SK_NET", "sock", "__sk_common.skc_net.net"), ("OFF_NET_INUM", "net", "ns.inum"))
COOKIE_OFFSET = ("OFF_SK_COOKIE", "sock", "__sk_common.skc_cookie")


def btf_offsets(path: str = btfmod.VMLINUX) -> dict[str, int] | None:
    """The ``-DOFF_*`` defines (byte offsets in kernel structs, from BTF): namespace scoping and the socket
    cookie; None without kernel BTF."""
    try:
        b = btfmod.load(path)
        return {define: b.member_offset(struct, member)[0]
                for define, struct, member in (*NETNS_OFFSETS, COOKIE_OFFSET)}
    except (btfmod.BtfError, OSError) as exc:
        log.warning("tcp RTT: no kernel BTF offsets (%s): samples from every network namespace, and closed "
                    "sockets' sample times left to the LRU bound", exc)
        return None


def close_offsets(tracefs: str) -> dict[str, int] | None:
    """``-DTP_CLOSE_OFF_*`` from sock:inet_sock_set_state's format; None (logged) when the kernel lacks it."""
    try:
        fmt = read_format(*CLOSE_TRACEPOINT, tracefs=tracefs, plugin=RTT_PLUGIN, missing_hint="")
        return field_defines(fmt, "TP_CLOSE_OFF_", CLOSE_FIELDS, plugin=RTT_PLUGIN)
    except (TracepointMissing, StartupError) as exc:
        log.warning("tcp RTT: %s: closed sockets' sample times are left to the LRU bound", exc)
        return None


class TcpRttProgram(BccProgram):
    """The compiled program and its maps: ``rtt_events``, ``rtt_config``, ``rtt_last``, ``rtt_netns``,
    ``rtt_stats``."""

    attached = False

    def __init__(self, ring_buffer_bytes: int = 256 * 1024, map_size: int = 65536,
                 tracefs: str = DEFAULT_TRACEFS) -> None:
        fmt = read_format(*TRACEPOINT, tracefs=tracefs, plugin=RTT_PLUGIN,
                          missing_hint="set tcpMetrics.rtt: false")
        defines: dict[str, int] = {"RINGBUF_PAGES": ring_pages(ring_buffer_bytes, "tcp RTT ring buffer size"),
                                   "RTT_MAP_SIZE": map_size,
                                   **field_defines(fmt, "TP_OFF_", FIELDS, plugin=RTT_PLUGIN,
                                                   hint="set tcpMetrics.rtt: false on this kernel")}
        offsets = btf_offsets()
        self.can_scope = offsets is not None
        close = close_offsets(tracefs) if offsets is not None else None
        self.forgets_closed = close is not None
        if close is None and offsets is not None:
            del offsets[COOKIE_OFFSET[0]]  # rtt_forget is built only with both
        defines.update(offsets or {})
        defines.update(close or {})
        self.bpf = compile_program(RTT_PLUGIN, SOURCE, defines)
        load_functions(self.bpf, (PROGRAM, FORGET_PROGRAM) if self.forgets_closed else (PROGRAM,), SOURCE,
                       "TRACEPOINT")
        self.config_map = self.bpf[b"rtt_config"]
        self.stats_map = self.bpf[b"rtt_stats"]
        self.netns_map = self.bpf[b"rtt_netns"]
        self.bounds_ns: tuple[int, ...] = ()

    def configure(self, interval_ns: int, bounds_ns: tuple[int, ...], emit_events: bool,
                  netns: set[int] | None) -> None:
        """Sample interval, histogram bounds, events on/off, and the namespaces in scope (None: all)."""
        if netns is not None and not self.can_scope:
            netns = None
        if netns is not None:
            self.sync_u32_set(self.netns_map, netns)
        cfg = layout.RttConfig()
        cfg.interval_ns = interval_ns
        cfg.filter_netns = 0 if netns is None else 1
        cfg.emit_events = 1 if emit_events else 0
        cfg.n_bounds = len(bounds_ns)
        for i, b in enumerate(bounds_ns):
            cfg.bounds_ns[i] = b
        self.config_map[ct.c_int(0)] = cfg
        self.bounds_ns = tuple(bounds_ns)

    def set_scope(self, netns: set[int] | None) -> None:
        cfg = self.config_map[ct.c_int(0)]
        if netns is not None and self.can_scope:
            self.sync_u32_set(self.netns_map, netns)
        cfg.filter_netns = 0 if netns is None or not self.can_scope else 1
        self.config_map[ct.c_int(0)] = cfg

    def _tracepoints(self) -> list[tuple[bytes, bytes]]:
        """``(system:event, program)`` pairs, the close hook first (a socket sampled before it is attached would
        otherwise keep its entry)."""
        pairs = [(CLOSE_TRACEPOINT, FORGET_PROGRAM)] if self.forgets_closed else []
        return [(":".join(tp).encode(), fn.encode()) for tp, fn in (*pairs, (TRACEPOINT, PROGRAM))]

    def attach(self) -> None:
        if not self.attached:
            done: list[bytes] = []
            for tp, fn in self._tracepoints():
                try:
                    self.bpf.attach_tracepoint(tp=tp, fn_name=fn)
                except Exception as exc:
                    for t in done:
                        self.bpf.detach_tracepoint(t)
                    raise StartupError(f"packetparser: attaching to {tp.decode()} failed: {exc}") from exc
                done.append(tp)
            self.attached = True

    def detach(self) -> None:
        if self.attached:
            for tp, _ in reversed(self._tracepoints()):
                try:
                    self.bpf.detach_tracepoint(tp)
                except Exception:
                    log.exception("detaching %s failed", tp.decode())
            self.attached = False

    def stats(self) -> dict:
        """Summed over CPUs: ``samples``, ``sum_ns``, ``out_of_scope``, ``ringbuf_full``, ``buckets`` (per bucket,
        the last one +Inf)."""
        v = [int(sum(self.stats_map[ct.c_int(i)])) for i in range(layout.STAT_SLOTS)]
        first = layout.STAT_BUCKET0
        return {"samples": v[layout.STAT_SAMPLES], "sum_ns": v[layout.STAT_SUM_NS],
                "out_of_scope": v[layout.STAT_OUT_OF_SCOPE], "ringbuf_full": v[layout.STAT_RINGBUF_FULL],
                "buckets": v[first:first + len(self.bounds_ns) + 1]}


_V4MAPPED = b"\x00" * 10 + b"\xff\xff"


class RttDecoder:
    """Raw ``struct rtt_event`` -> :class:`EventRecord` (``conn_event`` CONN_RTT, ``rtt_ns``)."""

    def __init__(self, node_name: str = "") -> None:
        self.node_name = node_name
        self.offset_ns = boot_to_wall_offset_ns()
        self._unpack = layout.EVENT_STRUCT.unpack_from

    def decode(self, buf: bytes) -> EventRecord:
        ts, saddr, daddr, srtt_us, sport, dport, ipv = self._unpack(buf, 0)
        if ipv == 6 and saddr[:12] == _V4MAPPED and daddr[:12] == _V4MAPPED:  # a dual-stack socket's IPv4 peer
            ipv, saddr, daddr = 4, saddr[12:], daddr[12:]
        elif ipv == 4:
            saddr, daddr = saddr[:4], daddr[:4]
        return EventRecord(ts + self.offset_ns, ipv, saddr, daddr, IPPROTO_TCP, sport, dport,
                           obs_point=OBS_FROM_ENDPOINT, direction=DIR_UNKNOWN, is_reply=False, packets=0,
                           node_name=self.node_name, conn_event=CONN_RTT, rtt_ns=srtt_us * 1000)


class RttReader(BpfRingReader):
    """Polls ``rtt_events`` in its own thread and hands RTT sample records to ``sink.write_batch``."""

    def __init__(self, program: TcpRttProgram, decoder: RttDecoder, sink, batch_size: int = 256) -> None:
        super().__init__(program.bpf, sink.write_batch, name="tcprtt", batch_size=batch_size,
                         decode=decoder.decode, event_size=layout.EVENT_SIZE)
        program.route_ring_buffer("rtt_events", self._callback)
