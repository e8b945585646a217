"""The linuxutil plugin: socket counts, TCP/IP extension counters and interface error/drop counters of the network
namespace the agent runs in, read every ``metricsInterval`` and published as Retina's basic gauges.

Families (prefix ``networkobservability_``, all gauges; the value is a snapshot of the last read):

``tcp_state{state}``
    TCP sockets (IPv4 and IPv6: /proc/net/tcp and tcp6) by state. All eleven states are always exported (0 when
    none), so a state that empties drops to 0 instead of keeping a stale value. Retina reads IPv4 only (go-netstat
    ``TCPSocks``), exports only states it has seen (stale afterwards) and names TCP_CLOSE ``""``.
``tcp_connection_remote{address="AllIPs"}``
    TCP sockets with a remote peer (remote port != 0, i.e. not LISTEN), IPv4 and IPv6. One series since Retina
    #877. (Retina's count includes IPv4 listeners, whose "0.0.0.0:0" parses as an address, and misses IPv6 sockets,
    whose unbracketed "ip:port" does not.)
``tcp_connection_stats{statistic_name}``
    /proc/net/netstat TcpExt and MPTcpExt counters, only Retina's 16 curated keys, zero values skipped.
``ip_connection_stats{statistic_name}``
    /proc/net/netstat IpExt counters, zero values skipped (not curated: see ``readers.ip_connection_stats``).
``udp_connection_stats{statistic_name="ACTIVE"}``
    Bound UDP sockets (/proc/net/udp and udp6; Retina: IPv4 only).
``interface_stats{interface_name,statistic_name}``
    Per interface, the counters whose name contains "err" or "drop", zero values skipped: the driver's ethtool
    statistics where it has them, else the generic sysfs counters (Retina: ethtool only, and summed over all
    interfaces under ``interface_name="all_interfaces"``). The loopback and lxc*/azv*/cbr0 interfaces are skipped.

Units: socket counts; kernel counters passed through unchanged (packets, events or bytes, as their names say).
A section that fails to read (e.g. a file that vanished) exports nothing until it reads again; ``/readyz`` says why.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from retina_core.telemetry import METRIC_PREFIX
from retina_exporter.plugins.base import Plugin, PluginContext
from retina_exporter.plugins.linuxutil import readers
from retina_exporter.plugins.linuxutil.poller import Poller, metrics_interval_s

log = logging.getLogger(__name__)

TCP_STATE = METRIC_PREFIX + "tcp_state"
TCP_CONNECTION_REMOTE = METRIC_PREFIX + "tcp_connection_remote"
TCP_CONNECTION_STATS = METRIC_PREFIX + "tcp_connection_stats"
IP_CONNECTION_STATS = METRIC_PREFIX + "ip_connection_stats"
UDP_CONNECTION_STATS = METRIC_PREFIX + "udp_connection_stats"
INTERFACE_STATS = METRIC_PREFIX + "interface_stats"
REMOTE_ADDRESS_ALL = "AllIPs"
UDP_ACTIVE = "ACTIVE"

_HELP = {
    TCP_STATE: "Number of active TCP connections by state",
    TCP_CONNECTION_REMOTE: "Number of active TCP connections by remote address",
    TCP_CONNECTION_STATS: "TCP connections statistics",
    IP_CONNECTION_STATS: "IP connections statistics",
    UDP_CONNECTION_STATS: "UDP connections statistics",
    INTERFACE_STATS: "Interface statistics",
}


class LinuxUtilError(RuntimeError):
    """linuxutil cannot work in this environment; the message says what is missing."""


@dataclass
class Snapshot:
    """One read: ``families`` as the metrics registry wants them, and the error of each section that failed."""

    families: tuple = ()
    errors: dict[str, str] = field(default_factory=dict)
    interface_sources: dict[str, str] = field(default_factory=dict)  # ifname -> "ethtool" | "sysfs"


def build_snapshot(proc_root: str = readers.PROC_ROOT, sys_root: str = readers.SYS_ROOT,
                   use_ethtool: bool = True) -> Snapshot:
    """Read everything once (in the calling thread's network namespace for procfs and ethtool) and build the
    families. Each section (sockets, netstat, interfaces) fails on its own."""
    errors: dict[str, str] = {}
    fams: list[tuple] = []

    try:
        socks = readers.read_sockets(proc_root)
    except Exception as exc:
        errors["sockets"] = f"{type(exc).__name__}: {exc}"
    else:
        fams.append((TCP_STATE, "gauge", _HELP[TCP_STATE],
                     [((("state", s),), n) for s, n in sorted(socks.tcp_states.items())]))
        fams.append((TCP_CONNECTION_REMOTE, "gauge", _HELP[TCP_CONNECTION_REMOTE],
                     [((("address", REMOTE_ADDRESS_ALL),), socks.tcp_with_peer)]))
        fams.append((UDP_CONNECTION_STATS, "gauge", _HELP[UDP_CONNECTION_STATS],
                     [((("statistic_name", UDP_ACTIVE),), socks.udp_sockets)]))

    try:
        netstat = readers.read_netstat(proc_root)
    except Exception as exc:
        errors["netstat"] = f"{type(exc).__name__}: {exc}"
    else:
        for name, values in ((TCP_CONNECTION_STATS, readers.tcp_connection_stats(netstat)),
                             (IP_CONNECTION_STATS, readers.ip_connection_stats(netstat))):
            fams.append((name, "gauge", _HELP[name],
                         [((("statistic_name", k),), v) for k, v in sorted(values.items())]))

    sources: dict[str, str] = {}
    try:
        if use_ethtool:
            with readers.Ethtool() as eth:
                ifaces = readers.read_interface_stats(sys_root, eth.stats)
        else:
            ifaces = readers.read_interface_stats(sys_root, None)
    except Exception as exc:
        errors["interfaces"] = f"{type(exc).__name__}: {exc}"
    else:
        samples = []
        for ifname, reading in sorted(ifaces.items()):
            sources[ifname] = reading.source
            samples.extend(((("interface_name", ifname), ("statistic_name", k)), v)
                           for k, v in sorted(reading.stats.items()))
        fams.append((INTERFACE_STATS, "gauge", _HELP[INTERFACE_STATS], samples))

    return Snapshot(tuple(fams), errors, sources)


class LinuxUtilPlugin(Plugin):
    """See the module docstring. ``proc_root``/``sys_root``/``use_ethtool`` exist for tests (fixture trees)."""

    name = "linuxutil"

    def __init__(self, proc_root: str = readers.PROC_ROOT, sys_root: str = readers.SYS_ROOT,
                 use_ethtool: bool = True) -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.use_ethtool = use_ethtool
        self.snapshot = Snapshot()
        self._lock = threading.Lock()
        self.poller: Poller | None = None
        self._registry = None

    # --- lifecycle ------------------------------------------------------------------------------------------
    def init(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        for rel in ("net/tcp", "net/udp", "net/netstat"):
            path = os.path.join(self.proc_root, rel)
            if not os.access(path, os.R_OK):
                raise LinuxUtilError(f"linuxutil cannot read {path}: is procfs mounted (and this the right root)?")
        net = os.path.join(self.sys_root, "class", "net")
        if not os.path.isdir(net):
            raise LinuxUtilError(f"linuxutil cannot list {net}: is sysfs mounted?")
        self.poller = Poller(self.name, self.read_once, metrics_interval_s(ctx.config))
        self._registry = getattr(ctx, "metrics", None)
        if self._registry is not None:
            self._registry.register(self.families)

    def start(self) -> None:
        assert self.poller is not None, "init() first"
        self.poller.start()

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self._registry is not None:
            unregister = getattr(self._registry, "unregister", None)
            if unregister is not None:
                unregister(self.families)
            self._registry = None

    def reconcile(self) -> None:
        if self.poller is not None and not self.poller.alive():
            raise RuntimeError("linuxutil poller thread is not running")

    def health(self) -> list[str]:
        reasons = []
        if self.poller is not None and self.poller.last_error:
            reasons.append(f"read failed: {self.poller.last_error}")
        reasons.extend(f"{section} unreadable: {err}" for section, err in sorted(self.snapshot.errors.items()))
        return reasons

    def debug(self) -> dict:
        p = self.poller
        return {
            "interval_s": p.interval_s if p else None,
            "reads": p.reads if p else 0,
            "errors": dict(self.snapshot.errors),
            "interface_sources": dict(self.snapshot.interface_sources),
        }

    # --- reading ---------------------------------------------------------------------------------------------
    def read_once(self) -> Snapshot:
        """Read now and publish (the poller calls this every interval)."""
        snap = build_snapshot(self.proc_root, self.sys_root, self.use_ethtool)
        with self._lock:
            self.snapshot = snap
        for section, err in snap.errors.items():
            log.debug("linuxutil %s: %s", section, err)
        return snap

    def families(self):
        """The families of the last read (what ``/metrics`` shows)."""
        with self._lock:
            snap = self.snapshot
        return iter(snap.families)
