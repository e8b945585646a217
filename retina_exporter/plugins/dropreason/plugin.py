"""The dropreason plugin: every packet the kernel drops, by the kernel's own drop reason.

Unlike Retina's dropreason (kprobes on five netfilter/TCP functions, seven fixed reasons, ``direction`` unknown
for most), this hooks the ``skb:kfree_skb`` tracepoint, where the kernel itself names why it dropped a packet
(``enum skb_drop_reason``: ~125 reasons on 6.18, netfilter, sockets, TCP state, routing, qdiscs, ...).

Node level (always): ``networkobservability_drop_count`` and ``networkobservability_drop_bytes`` (gauges with
labels ``reason``, ``direction``), read from the kernel's per-CPU counters at scrape time (so always current;
the reference sets them every metricsInterval). ``bytes`` is the IP packet's length (network header to end,
the same wherever in the stack it was dropped); a GSO packet counts as its segments.

Pod level (``enablePodLevel``): one DROPPED :class:`FlowRecord` per drop of an IPv4/IPv6 packet, with the
5-tuple (TCP, UDP, ICMP/ICMPv6 type and code), ``drop_reason`` = the kernel's reason code (name via
``drop_reason_name``), direction, ifindex and length, into
``ctx.flow_sink``.

Names, ignored reasons (NOT_SPECIFIED ...), direction and the Hubble mapping: see :mod:`.reasons`; which
network namespaces are counted: see :mod:`.scope`.

Options (plugin constructor, or config attributes when the agent wires them): ``drop_reason_scope``
(``all``/``node``), ``drop_reason_ignore`` (reason names), ``drop_reason_ring_buffer_size`` (bytes).
"""

from __future__ import annotations

import logging
import threading
import time

from retina_core.record import DIRECTION_LABELS
from retina_exporter.plugins.dropreason.config import DropReasonConfig
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.dropreason import reasons as reasons_mod
from retina_exporter.datapath import scope as scope_mod
from retina_exporter.plugins.dropreason.loader import DropReasonProgram, LoadOptions
from retina_exporter.plugins.dropreason.reader import DropDecoder, DropEventReader
from retina_exporter.datapath.tracepoint import DEFAULT_TRACEFS
from retina_exporter.datapath.sysfs import ensure_tracefs
from retina_exporter.plugins.ringbuf import TracepointPlugin
from retina_core.telemetry import METRIC_PREFIX

log = logging.getLogger(__name__)

DROP_COUNT = METRIC_PREFIX + "drop_count"
DROP_BYTES = METRIC_PREFIX + "drop_bytes"
DROP_COUNT_HELP = "Total dropped packets"
DROP_BYTES_HELP = "Total dropped bytes"

#: Scrapes within this many seconds of the last kernel read reuse it.
READ_CACHE_S = 0.25


class DropReasonPlugin(TracepointPlugin):
    name = "dropreason"
    capabilities = ("CAP_BPF", "CAP_PERFMON")
    program: DropReasonProgram | None
    reader: DropEventReader | None

    def __init__(
        self,
        program: DropReasonProgram | None = None,
        *,
        tracefs: str = DEFAULT_TRACEFS,
        scope: str | None = None,
        ignore: tuple[str, ...] | None = None,
        node_netns: str | None = None,
        ring_buffer_bytes: int | None = None,
    ) -> None:
        # tests hand in a program compiled once per module; node_netns: the node's namespace for scope "node"
        super().__init__(program, scope=scope, node_netns=node_netns)
        self.tracefs = tracefs
        self._ignore_opt = ignore
        self._ring_opt = ring_buffer_bytes
        self.reasons: reasons_mod.ReasonTable | None = None
        self.decoder: DropDecoder | None = None
        self._ignore: tuple[str, ...] = ()
        self._ignore_codes: list[int] = []
        self._cache_lock = threading.Lock()
        self._cache: tuple[float, list, list] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def configured_scope(self, cfg) -> str:
        return (getattr(cfg, "drop_reason", None) or DropReasonConfig()).scope

    def read_config(self, ctx: PluginContext) -> None:
        super().read_config(ctx)
        section = getattr(ctx.config, "drop_reason", None) or DropReasonConfig()
        self._ignore = self._ignore_opt if self._ignore_opt is not None else section.ignore_reasons
        if self.tracefs == DEFAULT_TRACEFS:
            ensure_tracefs()

    def load_program(self, ctx: PluginContext) -> DropReasonProgram:
        ring = self._ring_opt or getattr(ctx.config, "drop_reason_ring_buffer_size", None) or LoadOptions.ring_buffer_bytes
        return DropReasonProgram(LoadOptions(ring_buffer_bytes=ring, tracefs=self.tracefs))

    def prepare(self, ctx: PluginContext) -> None:
        self.reasons = reasons_mod.ReasonTable.from_kernel(self.tracefs)
        self._ignore_codes = self.reasons.ignore_codes(self._ignore)
        self.netns = self.discover_scope()
        self.apply_scope(self.netns)

    def make_reader(self, ctx: PluginContext) -> DropEventReader | None:
        if not self.pod_level:
            return None
        own = scope_mod.netns_inode(self.node_netns) if self.node_netns else None
        self.decoder = DropDecoder(getattr(ctx.config, "node_name", ""), self.reasons, own)
        return DropEventReader(self.program, self.decoder, ctx.flow_sink)

    def lost_events(self, program: DropReasonProgram) -> int:
        return program.read_stats()["ringbuf_full"]

    def init(self, ctx: PluginContext) -> None:
        super().init(ctx)
        log.info("dropreason: %d kernel reasons (%s), ignoring %s, scope %s%s", len(self.reasons.names),
                 self.reasons.source, ",".join(self.reasons.name(c) for c in self._ignore_codes), self.scope,
                 ", pod level" if self.pod_level else "")

    def apply_scope(self, netns: set[int] | None) -> None:
        self.program.configure(self._ignore_codes, emit_events=self.pod_level, netns=netns)

    def detach(self) -> None:
        super().detach()
        if self.program is not None and not self._owns_program:  # a shared program must not keep emitting
            try:
                self.program.configure(self._ignore_codes, emit_events=False, netns=self.netns)
            except Exception:
                pass

    # --- metrics -------------------------------------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``{(reason name, direction): (packets, bytes)}``, kernel totals since the program was loaded."""
        assert self.program is not None and self.reasons is not None
        out: dict[tuple[str, str], list[int]] = {}
        for (code, hint), (packets, nbytes) in self.program.read_counts().items():
            key = (self.reasons.name(code), DIRECTION_LABELS[self.reasons.direction(code, hint)])
            acc = out.setdefault(key, [0, 0])
            acc[0] += packets
            acc[1] += nbytes
        return {k: (v[0], v[1]) for k, v in out.items()}

    def families(self):
        if self.program is None:
            return
        now = time.monotonic()
        with self._cache_lock:
            cached = self._cache
            if cached is None or now - cached[0] > READ_CACHE_S:
                counts, nbytes = [], []
                for (reason, direction), (p, b) in sorted(self.totals().items()):
                    labels = (("reason", reason), ("direction", direction))
                    counts.append((labels, p))
                    nbytes.append((labels, b))
                cached = self._cache = (now, counts, nbytes)
        yield (DROP_COUNT, "gauge", DROP_COUNT_HELP, cached[1])
        yield (DROP_BYTES, "gauge", DROP_BYTES_HELP, cached[2])

    def debug(self) -> dict:
        out: dict = {"scope": self.scope, "pod_level": self.pod_level}
        if self.program is not None:
            out["kernel"] = self.program.read_stats()
            out["namespaces_in_scope"] = None if self.netns is None else len(self.netns)
        if self.reasons is not None:
            out["reason_source"] = self.reasons.source
            out["ignored_reasons"] = [self.reasons.name(c) for c in self._ignore_codes]
        if self.reader is not None:
            out["events_read"] = self.reader.events_read
        if self.decoder is not None:
            out["recent_locations"] = [
                {"reason": self.reasons.name(r), "location": _symbol(a)} for r, a in self.decoder.last_locations[-8:]
            ]
        return out


_ksyms: list[tuple[int, str]] | None = None


def _symbol(addr: int) -> str:
    """``function+0xoff`` for a kernel address (/proc/kallsyms, read once), else hex."""
    global _ksyms
    if _ksyms is None:
        syms = []
        try:
            with open("/proc/kallsyms") as f:
                for line in f:
                    a, t, name = line.split()[:3]
                    if t in "tT":
                        syms.append((int(a, 16), name))
        except OSError:
            pass
        syms.sort()
        _ksyms = syms
    import bisect

    i = bisect.bisect_right(_ksyms, (addr, "\uffff")) - 1
    if i < 0 or not _ksyms or _ksyms[i][0] == 0:
        return hex(addr)
    base, name = _ksyms[i]
    return f"{name}+{addr - base:#x}"
