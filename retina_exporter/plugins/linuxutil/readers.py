"""Readers for the linuxutil plugin: socket tables and SNMP extension counters from procfs, interface counters from
ethtool (``SIOCETHTOOL``) or sysfs.

Every reader takes the roots it reads from as arguments, so tests can point it at fixture trees:

* ``proc_root``: a directory with a ``net/`` subdirectory laid out like ``/proc/<pid>/net``. The default,
  :data:`PROC_ROOT` = ``/proc/thread-self``, is the **calling thread's** network namespace (``/proc/net`` is
  ``/proc/self/net``, the namespace of the process' main thread, which differs from the thread's after a
  per-thread ``setns(2)``).
* ``sys_root``: a directory laid out like ``/sys`` (``class/net/<ifname>/statistics/<counter>``). sysfs shows the
  network namespace of whoever *mounted* it; ``ip netns exec`` remounts it for the namespace it enters, which is
  how the agent runs in the lab and how a DaemonSet with host networking sees the host's.

The ethtool ioctl works on a socket, i.e. in the namespace of the thread that created the socket.

Units: counts of sockets; the SNMP extension counters and interface counters are the kernel's cumulative values
(packets, events or bytes as each counter's name says), passed through unchanged.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

PROC_ROOT = "/proc/thread-self"
SYS_ROOT = "/sys"

# --- socket tables ---------------------------------------------------------------------------------------------

#: ``st`` column of /proc/net/tcp{,6} -> Retina's state name. The kernel prints request sockets (TCP_NEW_SYN_RECV)
#: as SYN_RECV and never lists TCP_BOUND_INACTIVE sockets, so only these eleven codes occur. Retina (via go-netstat)
#: names TCP_CLOSE ``""``; we name it ``CLOSE``.
TCP_STATES: dict[int, str] = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
}
UNKNOWN_STATE = "UNKNOWN"


@dataclass
class SocketCounts:
    """Sockets listed in the namespace's socket tables at one moment.

    ``tcp_states``: TCP sockets (IPv4 and IPv6) by state name; every name of :data:`TCP_STATES` is present (0 when
    there is none), plus ``UNKNOWN`` only if some unknown state code was seen. ``tcp_with_peer``: TCP sockets with a
    remote peer (remote port not 0: every state but LISTEN, and CLOSE sockets that were never connected).
    ``udp_sockets``: bound UDP sockets (IPv4 and IPv6; /proc/net/udp{,6} lists bound sockets only).
    """

    tcp_states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TCP_STATES.values(), 0))
    tcp_total: int = 0
    tcp_with_peer: int = 0
    udp_sockets: int = 0


def _table_lines(path: str, required: bool) -> Iterable[str]:
    """Data lines of a /proc/net socket table (header skipped). A missing optional table (tcp6/udp6 when IPv6 is
    disabled at boot) yields nothing."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if required:
            raise
        return []
    with f:
        data = f.read()
    lines = data.decode("ascii", "replace").splitlines()
    return lines[1:]


def _remote_port(rem: str) -> int:
    # "0100007F:0050" (IPv4) or 32 hex digits ":" port (IPv6); the port is hex, in host order.
    _, _, port = rem.rpartition(":")
    return int(port, 16)


def read_sockets(proc_root: str = PROC_ROOT) -> SocketCounts:
    """Count the sockets in ``net/tcp``, ``net/tcp6``, ``net/udp`` and ``net/udp6`` under ``proc_root``.

    ``net/tcp`` and ``net/udp`` must exist (``FileNotFoundError`` otherwise); the IPv6 tables may be absent.
    Lines that do not parse are skipped.
    """
    out = SocketCounts()
    states = out.tcp_states
    net = os.path.join(proc_root, "net")
    for name, required in (("tcp", True), ("tcp6", False)):
        for line in _table_lines(os.path.join(net, name), required):
            parts = line.split(None, 4)
            if len(parts) < 4:
                continue
            try:
                code = int(parts[3], 16)
                port = _remote_port(parts[2])
            except ValueError:
                continue
            state = TCP_STATES.get(code, UNKNOWN_STATE)
            states[state] = states.get(state, 0) + 1
            out.tcp_total += 1
            if port != 0:
                out.tcp_with_peer += 1
    for name, required in (("udp", True), ("udp6", False)):
        for line in _table_lines(os.path.join(net, name), required):
            parts = line.split(None, 4)
            if len(parts) >= 4 and parts[0].endswith(":"):
                out.udp_sockets += 1
    return out


# --- /proc/net/netstat ------------------------------------------------------------------------------------------

#: Retina's curated TcpExt/MPTcpExt keys (pkg/plugin/linuxutil netstatCuratedKeys): the only ones exported as
#: ``tcp_connection_stats``. (DataCsumErr, AddAddrDrop and RmAddrDrop are MPTcpExt counters, the rest TcpExt.)
TCP_CURATED_KEYS: frozenset[str] = frozenset({
    "ListenDrops", "LockDroppedIcmps", "PFMemallocDrop", "TCPBacklogDrop", "TCPDeferAcceptDrop", "TCPMinTTLDrop",
    "TCPRcvQDrop", "TCPReqQFullDrop", "TCPZeroWindowDrop", "InCsumErrors", "DataCsumErr", "AddAddrDrop",
    "RmAddrDrop", "TCPTimeouts", "TCPLossProbes", "TCPLostRetransmit",
})


def parse_snmp_pairs(text: str) -> dict[str, dict[str, int]]:
    """Parse the "header line / value line" pairs of /proc/net/netstat (and /proc/net/snmp):
    ``{"TcpExt": {"SyncookiesSent": 0, ...}, "IpExt": {...}, "MPTcpExt": {...}}``.

    As Retina's reader: a pair whose two lines name different sections, or have different field counts, is skipped;
    a value that is not an unsigned integer is skipped (its key is absent).
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out: dict[str, dict[str, int]] = {}
    for i in range(0, len(lines) - 1, 2):
        keys, values = lines[i].split(), lines[i + 1].split()
        if len(keys) < 2 or len(keys) != len(values) or keys[0] != values[0] or not keys[0].endswith(":"):
            continue
        section: dict[str, int] = {}
        for k, v in zip(keys[1:], values[1:]):
            if v.isdigit():
                section[k] = int(v)
        out[keys[0][:-1]] = section
    return out


def read_netstat(proc_root: str = PROC_ROOT) -> dict[str, dict[str, int]]:
    """All sections of ``net/netstat`` under ``proc_root`` (see :func:`parse_snmp_pairs`)."""
    with open(os.path.join(proc_root, "net", "netstat"), "rb") as f:
        return parse_snmp_pairs(f.read().decode("ascii", "replace"))


def tcp_connection_stats(netstat: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """``tcp_connection_stats`` as Retina exports it: TcpExt then MPTcpExt counters whose key is in
    :data:`TCP_CURATED_KEYS` and whose value is not 0."""
    out: dict[str, int] = {}
    for section in ("TcpExt", "MPTcpExt"):
        for k, v in netstat.get(section, {}).items():
            if v and k in TCP_CURATED_KEYS:
                out[k] = v
    return out


def ip_connection_stats(netstat: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """``ip_connection_stats``: every IpExt counter whose value is not 0 (InOctets, OutOctets, InNoRoutes,
    InNoECTPkts, ... as Retina's documentation lists them).

    Retina's code runs IpExt through the same 16-key curation as TcpExt, which leaves only ``InCsumErrors``; we do
    not curate IpExt (it has about 20 keys, so cardinality is bounded anyway).
    """
    return {k: v for k, v in netstat.get("IpExt", {}).items() if v}


# --- interface counters -----------------------------------------------------------------------------------------

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
ETHTOOL_GSTRINGS = 0x0000001B
ETHTOOL_GSTATS = 0x0000001D
ETHTOOL_GSSET_INFO = 0x00000037
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16
ARPHRD_LOOPBACK = 772

#: Interfaces Retina's reader skips besides the loopback: names containing these (Cilium's lxc* pod veths, Azure
#: CNI's azv* pod veths, kubenet's cbr0 bridge). Retina skips every name containing "lo"; we skip the loopback
#: device itself (name ``lo`` or type ARPHRD_LOOPBACK), not e.g. ``vlan-local0``.
DEFAULT_EXCLUDED_SUBSTRINGS: tuple[str, ...] = ("lxc", "azv", "cbr0")


class _SsetInfo(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("sset_mask", ctypes.c_uint64),
                ("data", ctypes.c_uint32 * 1)]


class _DrvInfo(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint32), ("driver", ctypes.c_char * 32), ("version", ctypes.c_char * 32),
                ("fw_version", ctypes.c_char * 32), ("bus_info", ctypes.c_char * 32),
                ("erom_version", ctypes.c_char * 32), ("reserved2", ctypes.c_char * 12),
                ("n_priv_flags", ctypes.c_uint32), ("n_stats", ctypes.c_uint32), ("testinfo_len", ctypes.c_uint32),
                ("eedump_len", ctypes.c_uint32), ("regdump_len", ctypes.c_uint32)]


_NOT_SUPPORTED = (_errno.EOPNOTSUPP, _errno.ENOTSUP, _errno.EINVAL)
_GONE = (_errno.ENODEV, _errno.ENXIO)


class Ethtool:
    """``ethtool -S`` through the SIOCETHTOOL ioctl (ETHTOOL_GSSET_INFO, ETHTOOL_GSTRINGS, ETHTOOL_GSTATS): no
    binary, no netlink. Bound to the network namespace of the thread that constructs it (its socket's).
    Use as a context manager or call :meth:`close`."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __enter__(self) -> "Ethtool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _ioctl(self, ifname: str, buf: ctypes.Array | ctypes.Structure) -> None:
        name = ifname.encode()
        if len(name) >= IFNAMSIZ:
            raise OSError(_errno.ENODEV, f"interface name {ifname!r} too long")
        ifr = bytearray(struct.pack(f"{IFNAMSIZ}sP", name, ctypes.addressof(buf)) + b"\0" * 16)  # struct ifreq
        fcntl.ioctl(self._sock.fileno(), SIOCETHTOOL, ifr)

    def _count(self, ifname: str) -> int:
        info = _SsetInfo(cmd=ETHTOOL_GSSET_INFO, sset_mask=1 << ETH_SS_STATS)
        try:
            self._ioctl(ifname, info)
        except OSError as e:
            if e.errno not in _NOT_SUPPORTED:
                raise
            drv = _DrvInfo(cmd=ETHTOOL_GDRVINFO)  # kernels before 2.6.34 / drivers without get_sset_count
            self._ioctl(ifname, drv)
            return int(drv.n_stats)
        return int(info.data[0]) if info.sset_mask & (1 << ETH_SS_STATS) else 0

    def stats(self, ifname: str) -> dict[str, int] | None:
        """The driver's statistics (``ethtool -S ifname``) as ``{name: value}``, or None when the driver has none
        (no ``get_ethtool_stats``, or zero of them) or the interface is gone. A name the driver repeats keeps its
        last value (as Retina's ethtool library does)."""
        for _attempt in range(3):
            try:
                n = self._count(ifname)
                if n <= 0:
                    return None
                # The kernel writes as many entries as the driver has *now*, whatever length we pass: leave room
                # for a driver that grew its count since the first call (e.g. channels reconfigured).
                room = 2 * n + 64
                strings = ctypes.create_string_buffer(12 + room * ETH_GSTRING_LEN)
                struct.pack_into("=III", strings, 0, ETHTOOL_GSTRINGS, ETH_SS_STATS, n)
                self._ioctl(ifname, strings)
                n_strings = struct.unpack_from("=I", strings, 8)[0]
                values = ctypes.create_string_buffer(8 + room * 8)
                struct.pack_into("=II", values, 0, ETHTOOL_GSTATS, n)
                self._ioctl(ifname, values)
                n_values = struct.unpack_from("=I", values, 4)[0]
            except OSError as e:
                if e.errno in _NOT_SUPPORTED or e.errno in _GONE:
                    return None
                raise
            if n_strings == n_values <= room:
                break  # else the driver changed its count between the calls (names would not match): again
        else:
            raise OSError(_errno.EAGAIN, f"{ifname}: the driver's statistics count keeps changing")
        count = n_strings
        raw = strings.raw
        out: dict[str, int] = {}
        for i in range(count):
            off = 12 + i * ETH_GSTRING_LEN
            name = raw[off:off + ETH_GSTRING_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
            out[name] = struct.unpack_from("=Q", values, 8 + i * 8)[0]
        return out


def sysfs_stats(ifname: str, sys_root: str = SYS_ROOT) -> dict[str, int] | None:
    """The generic counters in ``class/net/<ifname>/statistics/`` (rx_dropped, tx_errors, ...), or None when the
    directory does not exist. Unreadable or non-numeric files are skipped."""
    d = os.path.join(sys_root, "class", "net", ifname, "statistics")
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return None
    out: dict[str, int] = {}
    for name in names:
        try:
            with open(os.path.join(d, name), "rb") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            out[name] = int(text)
    return out


def is_err_or_drop(key: str) -> bool:
    """Retina's ethtool key filter: the key contains "err" or "drop" (case-sensitive, as Retina)."""
    return "err" in key or "drop" in key


def _is_loopback(sys_root: str, ifname: str) -> bool:
    if ifname == "lo":
        return True
    try:
        with open(os.path.join(sys_root, "class", "net", ifname, "type"), "rb") as f:
            return int(f.read().strip() or 0) == ARPHRD_LOOPBACK
    except (OSError, ValueError):
        return False


def list_interfaces(sys_root: str = SYS_ROOT) -> list[str]:
    """Interface names under ``class/net`` (directories only: /sys/class/net/bonding_masters is a file), sorted."""
    d = os.path.join(sys_root, "class", "net")
    return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))


@dataclass
class InterfaceReading:
    """One interface's exported counters and where they came from (``"ethtool"`` or ``"sysfs"``)."""

    source: str
    stats: dict[str, int]


def read_interface_stats(
    sys_root: str = SYS_ROOT,
    ethtool: Callable[[str], dict[str, int] | None] | None = None,
    excluded_substrings: Iterable[str] = DEFAULT_EXCLUDED_SUBSTRINGS,
    interfaces: Iterable[str] | None = None,
) -> dict[str, InterfaceReading]:
    """``interface_stats``: per interface, the counters whose name contains "err" or "drop" and whose value is not
    0 (Retina's ethtool filter and zero skipping).

    The source is the driver's ethtool statistics when it has any (``ethtool(ifname)`` returns a non-empty dict),
    else the generic sysfs counters. ``ethtool`` is e.g. :meth:`Ethtool.stats`; None means sysfs only. The loopback
    and names containing one of ``excluded_substrings`` are skipped; ``interfaces`` overrides the listing of
    ``class/net``. Interfaces that vanish while being read are left out.
    """
    excluded = tuple(excluded_substrings)
    names = list(interfaces) if interfaces is not None else list_interfaces(sys_root)
    out: dict[str, InterfaceReading] = {}
    for name in names:
        if _is_loopback(sys_root, name) or any(s in name for s in excluded):
            continue
        stats = ethtool(name) if ethtool is not None else None
        source = "ethtool"
        if not stats:
            stats, source = sysfs_stats(name, sys_root), "sysfs"
            if stats is None:
                continue
        out[name] = InterfaceReading(source, {k: v for k, v in stats.items() if v and is_err_or_drop(k)})
    return out
