"""The packetforward plugin: node-level packet and byte totals of the host interfaces, counted in the kernel.

Families (prefix ``networkobservability_``, gauges, Retina's names and labels):

``forward_count{direction}``
    Packets seen on the host interfaces since the plugin loaded (with ``bpfPinning``: since the counters were first
    pinned, across restarts): ``direction="ingress"`` received (TC ingress), ``"egress"`` sent (TC egress), summed
    over all host interfaces.
``forward_bytes{direction}``
    The same packets' bytes: frame length from the Ethernet header on, without FCS (``skb->len`` at the hook), as
    the interface rx_bytes/tx_bytes counters count them.

Every packet on the hooks counts, so on an interface nothing else touches the deltas equal the interface's own
rx/tx packet and byte counters. (Retina uses a socket filter on a raw socket and counts received packets only when
they are addressed to the host, ``PACKET_HOST``, so broadcast and multicast are missing from its ingress.)

Host interfaces: ``hostInterfaces`` (``cfg.host_interfaces``); when empty, the interface of the default route of
the agent's network namespace (IPv4 first, else IPv6; the lowest metric). The kernel side
(``bpf/packetforward.bpf.c``) is two TC classifiers attached with TCX where the kernel has it (``enableTCX``), else
as clsact/cls_bpf filters at priority 2, handle 2 -- packetparser uses priority 1, handle 1, so both can share an
interface. Both return ``TC_ACT_UNSPEC`` and never change a packet's fate. The per-CPU counters are summed every
``metricsInterval`` and the last sum is what ``/metrics`` shows.

Failures (an interface that does not exist, no default route, headers missing, a verifier rejection, an attach
error) raise :class:`PacketForwardError` from ``init``/``start``: the plugin manager isolates them and the other
plugins keep running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from retina_core.telemetry import METRIC_PREFIX
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_exporter.plugins.linuxutil.poller import Poller, metrics_interval_s
from retina_exporter.plugins.packetforward import loader
from retina_exporter.plugins.packetforward.loader import PacketForwardError, PacketForwardProgram
from retina_exporter.datapath.tc import AttachError, TcAttacher
from retina_exporter.plugins.tcattach import attach_programs, interface_index, pin_root

log = logging.getLogger(__name__)

FORWARD_COUNT = METRIC_PREFIX + "forward_count"
FORWARD_BYTES = METRIC_PREFIX + "forward_bytes"
DIRECTIONS = (loader.INGRESS, loader.EGRESS)

# clsact/cls_bpf identity of our filters: packetparser uses priority 1 / handle 1 on the same hooks.
CLSACT_PRIORITY = 2
CLSACT_HANDLE = 2

PROC_ROOT = "/proc/thread-self"  # the calling thread's network namespace (see linuxutil.readers)
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


def default_route_interface(proc_root: str = PROC_ROOT) -> str:
    """The interface of the default route in ``proc_root``'s namespace: the IPv4 default route with the lowest
    metric (``net/route``, main table), else the IPv6 one (``net/ipv6_route``; reject routes and ``lo`` skipped).
    Raises :class:`PacketForwardError` when there is none."""
    best: tuple[int, str] | None = None
    try:
        with open(os.path.join(proc_root, "net", "route")) as f:
            for line in f.read().splitlines()[1:]:
                p = line.split()
                if len(p) < 8:
                    continue
                try:
                    dest, flags, metric, mask = int(p[1], 16), int(p[3], 16), int(p[6]), int(p[7], 16)
                except ValueError:
                    continue
                if dest == 0 and mask == 0 and flags & _RTF_UP and not flags & _RTF_REJECT:
                    if best is None or metric < best[0]:
                        best = (metric, p[0])
    except FileNotFoundError:
        pass
    if best is None:
        try:
            with open(os.path.join(proc_root, "net", "ipv6_route")) as f:
                for line in f.read().splitlines():
                    p = line.split()
                    if len(p) < 10:
                        continue
                    try:
                        plen, metric, flags = int(p[1], 16), int(p[5], 16), int(p[8], 16)
                    except ValueError:
                        continue
                    if (int(p[0], 16) == 0 and plen == 0 and flags & _RTF_UP and not flags & _RTF_REJECT
                            and p[9] != "lo"):
                        if best is None or metric < best[0]:
                            best = (metric, p[9])
        except FileNotFoundError:
            pass
    if best is None:
        raise PacketForwardError(
            "packetforward: hostInterfaces is empty and this network namespace has no default route to take the "
            "interface from; set hostInterfaces (e.g. [eth0])"
        )
    return best[1]


def _ifindex(name: str) -> int:
    return interface_index(name, error=PacketForwardError, what="packetforward: host interface")


class PacketForwardPlugin(Plugin):
    """See the module docstring. ``program`` lets tests share one compiled program (not closed by ``stop``)."""

    name = "packetforward"
    capabilities = ("CAP_BPF", "CAP_NET_ADMIN")

    def __init__(self, program: PacketForwardProgram | None = None, proc_root: str = PROC_ROOT) -> None:
        self._given_program = program
        self.proc_root = proc_root
        self.program: PacketForwardProgram | None = None
        self.attacher: TcAttacher | None = None
        self.poller: Poller | None = None
        self.interfaces: tuple[str, ...] = ()
        self.attached: dict[str, tuple[int, list]] = {}  # ifname -> (ifindex, attachments)
        self.totals: dict[str, tuple[int, int]] | None = None  # last read: direction -> (packets, bytes)
        self._lock = threading.Lock()
        self._registry = None

    # --- lifecycle ------------------------------------------------------------------------------------------
    def init(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        names = tuple(getattr(cfg, "host_interfaces", ()) or ())
        if not names:
            names = (default_route_interface(self.proc_root),)
            log.info("packetforward: hostInterfaces is empty, using the default route's interface %s", names[0])
        for name in names:  # fail before loading anything
            _ifindex(name)
        self.interfaces = names
        self.program = self._given_program or PacketForwardProgram(pin_root=pin_root(cfg, self.name))
        try:
            self.attacher = TcAttacher(prefix=loader.PROGRAM_PREFIX, enable_tcx=getattr(cfg, "enable_tcx", "auto"),
                                       priority=CLSACT_PRIORITY, handle=CLSACT_HANDLE, pins=self.program.pins)
        except (AttachError, ValueError) as exc:
            raise PacketForwardError(f"packetforward: {exc}") from exc
        self.poller = Poller(self.name, self.read_once, metrics_interval_s(cfg))
        self._registry = getattr(ctx, "metrics", None)
        if self._registry is not None:
            self._registry.register(self.families)

    def _attach(self, name: str) -> None:
        assert self.attacher is not None and self.program is not None
        index = _ifindex(name)
        try:
            atts = attach_programs(self.attacher, index, [(d, self.program.prog_fd(d), loader.PROGRAMS[d])
                                                          for d in DIRECTIONS])
        except AttachError as exc:
            raise PacketForwardError(f"packetforward: {exc}") from exc
        self.attached[name] = (index, atts)
        log.info("packetforward attached to %s (ifindex %d) via %s", name, index, atts[0].mode)

    def start(self) -> None:
        assert self.poller is not None, "init() first"
        for name in self.interfaces:
            self._attach(name)
        self.poller.start()

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self.attacher is not None:
            try:
                self.attacher.close()  # detaches everything it attached (and a clsact qdisc it added); pinned: kept
            finally:
                self.attacher = None
                self.attached.clear()
        if self._registry is not None:
            unregister = getattr(self._registry, "unregister", None)
            if unregister is not None:
                unregister(self.families)
            self._registry = None
        if self.program is not None and self.program is not self._given_program:
            self.program.close()
        self.program = None

    def reconcile(self) -> None:
        """Re-attach to a host interface that was deleted and re-created (new ifindex); raise while one is missing
        or the reader thread died."""
        if self.poller is not None and not self.poller.alive():
            raise RuntimeError("packetforward poller thread is not running")
        if self.attacher is None:
            return
        missing = []
        for name in self.interfaces:
            try:
                index = socket.if_nametoindex(name)
            except OSError:
                missing.append(name)
                continue
            old = self.attached.get(name)
            if old is not None and old[0] == index:
                continue
            if old is not None:
                for att in old[1]:
                    try:
                        self.attacher.detach(att)  # gone with its interface: this just forgets it
                    except Exception:
                        pass
            log.info("packetforward: host interface %s is back (ifindex %d): attaching again", name, index)
            self._attach(name)
        if missing:
            raise RuntimeError(f"packetforward: host interface(s) {', '.join(missing)} missing")

    def health(self) -> list[str]:
        if self.poller is not None and self.poller.last_error:
            return [f"reading the counters failed: {self.poller.last_error}"]
        return []

    def debug(self) -> dict:
        return {
            "interfaces": {n: [a.mode for a in atts] for n, (_, atts) in self.attached.items()},
            "totals": dict(self.totals or {}),
            "reads": self.poller.reads if self.poller else 0,
        }

    # --- reading ---------------------------------------------------------------------------------------------
    def read_once(self) -> dict[str, tuple[int, int]]:
        """Sum the per-CPU counters now and publish them (the poller calls this every interval)."""
        assert self.program is not None
        totals = self.program.totals()
        with self._lock:
            self.totals = totals
        return totals

    def families(self):
        with self._lock:
            totals = self.totals
        if totals is None:
            return
        yield (FORWARD_COUNT, "gauge", "Total forwarded packets",
               [((("direction", d),), totals[d][0]) for d in DIRECTIONS])
        yield (FORWARD_BYTES, "gauge", "Total forwarded bytes",
               [((("direction", d),), totals[d][1]) for d in DIRECTIONS])
