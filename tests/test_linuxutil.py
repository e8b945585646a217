"""linuxutil: readers and plugin against fixture trees with known values, and against the real /proc, sysfs and
ethtool of fresh network namespaces in which the test made exactly the sockets and counters it expects.

Ground truth for the real namespaces comes from independent tools run in the same namespace: ``ss`` (sock_diag
netlink) for sockets, ``nstat`` for /proc/net/netstat, ``ethtool -S`` and ``ip -s link`` for interfaces.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from metrics_module.exposition import render
from metrics_module.registry import FamilyRegistry
from retina_exporter.lab.topology import in_netns
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.linuxutil import plugin as lu
from retina_exporter.plugins.linuxutil import readers
from retina_exporter.plugins.linuxutil.poller import Poller, metrics_interval_s

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "proc"
NODE1 = str(FIXTURES / "node1")
QUIRKS = str(FIXTURES / "quirks")

ALL_STATES = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT",
              "LAST_ACK", "LISTEN", "CLOSING")
SS_STATES = {"ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV", "FIN-WAIT-1": "FIN_WAIT1",
             "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT", "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT",
             "LAST-ACK": "LAST_ACK", "LISTEN": "LISTEN", "CLOSING": "CLOSING"}


def states(**nonzero) -> dict[str, int]:
    out = dict.fromkeys(ALL_STATES, 0)
    out.update(nonzero)
    return out


def samples(families, name: str) -> dict:
    """{label values tuple: value} of one family (asserting it is there exactly once)."""
    found = [f for f in families if f[0] == name]
    assert len(found) == 1, f"{name}: {len(found)} families"
    _, mtype, _, ss = found[0]
    assert mtype == "gauge"
    return {tuple(v for _, v in labels): value for labels, value in ss}


def wait_for(pred, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def make_sysfs(root: Path, interfaces: dict[str, dict[str, int]], types: dict[str, int] | None = None) -> str:
    for name, stats in interfaces.items():
        d = root / "class" / "net" / name / "statistics"
        d.mkdir(parents=True)
        for k, v in stats.items():
            (d / k).write_text(f"{v}\n")
        (root / "class" / "net" / name / "type").write_text(f"{(types or {}).get(name, 1)}\n")
    (root / "class" / "net").mkdir(parents=True, exist_ok=True)
    (root / "class" / "net" / "bonding_masters").write_text("\n")  # a file, not an interface
    return str(root)


# --------------------------------------------------------------------------------------------------------------
# Fixtures: exact known values


def test_sockets_from_fixture():
    s = readers.read_sockets(NODE1)
    # tcp: 3 LISTEN, 4 ESTABLISHED, SYN_SENT, TIME_WAIT, CLOSE_WAIT, FIN_WAIT2, SYN_RECV (9 with a peer);
    # tcp6: 2 LISTEN, 2 ESTABLISHED, LAST_ACK, CLOSING, FIN_WAIT1, and a CLOSE socket without peer (5 with a peer).
    assert s.tcp_states == states(LISTEN=5, ESTABLISHED=6, SYN_SENT=1, SYN_RECV=1, FIN_WAIT1=1, FIN_WAIT2=1,
                                  TIME_WAIT=1, CLOSE=1, CLOSE_WAIT=1, LAST_ACK=1, CLOSING=1)
    assert (s.tcp_total, s.tcp_with_peer, s.udp_sockets) == (20, 14, 5)


def test_sockets_quirks_ipv4_only_unknown_state_and_garbage():
    s = readers.read_sockets(QUIRKS)  # no tcp6/udp6 (IPv6 disabled at boot): not an error
    assert s.tcp_states == {**states(ESTABLISHED=1), "UNKNOWN": 1}  # state 0x0C; garbage lines skipped
    assert (s.tcp_total, s.tcp_with_peer, s.udp_sockets) == (2, 2, 0)


def test_missing_tcp_table_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        readers.read_sockets(str(tmp_path))


def test_netstat_from_fixture_curated_and_zero_skipped():
    ns = readers.read_netstat(NODE1)
    assert set(ns) == {"TcpExt", "IpExt", "MPTcpExt"}
    assert ns["TcpExt"]["ListenOverflows"] == 7 and ns["TcpExt"]["TCPLossProbes"] == 0
    # Curated keys only (ListenOverflows, TW, DelayedACKs, MPCapableSYNRX are not), zero values (TCPLossProbes,
    # TCPRcvQDrop, AddAddrDrop) skipped; DataCsumErr and RmAddrDrop come from MPTcpExt.
    assert readers.tcp_connection_stats(ns) == {
        "ListenDrops": 7, "TCPTimeouts": 12, "TCPBacklogDrop": 3, "TCPLostRetransmit": 1,
        "DataCsumErr": 2, "RmAddrDrop": 4,
    }
    assert readers.ip_connection_stats(ns) == {
        "InOctets": 1000, "OutOctets": 2000, "InNoRoutes": 5, "InCsumErrors": 1, "InNoECTPkts": 17,
    }


def test_netstat_quirks_malformed_pairs_skipped():
    ns = readers.read_netstat(QUIRKS)
    # "4 x 6 4": the non-numeric value's key is absent; IpExt with a missing value and the MPTcpExt/TcpExt pair
    # with different section names are skipped; a dangling header line at the end is ignored.
    assert ns == {"TcpExt": {"ListenDrops": 4, "TCPLossProbes": 6, "ListenOverflows": 4},
                  "IpExt": {"InNoRoutes": 3, "InOctets": 0}}
    assert readers.tcp_connection_stats(ns) == {"ListenDrops": 4, "TCPLossProbes": 6}
    assert readers.ip_connection_stats(ns) == {"InNoRoutes": 3}


def test_interface_stats_ethtool_first_then_sysfs(tmp_path):
    sys_root = make_sysfs(tmp_path, {
        "lo": {"rx_dropped": 9},  # the loopback: skipped
        "eth0": {"rx_dropped": 100, "rx_packets": 5},  # has ethtool stats: sysfs not used
        "br0": {"rx_dropped": 4, "tx_errors": 0, "rx_packets": 77, "tx_fifo_errors": 2, "rx_nohandler": 3},
        "lxc12ab": {"rx_dropped": 1},  # Cilium pod veth: skipped as in Retina
        "loop9": {"rx_dropped": 6},  # another loopback by type: skipped
        "vlan-lo": {"tx_dropped": 8},  # Retina would skip it ("lo" substring); we do not
    }, types={"loop9": readers.ARPHRD_LOOPBACK})
    ethtool = {
        "eth0": {"rx_queue_0_drops": 3, "rx_csum_err": 0, "tx_timeout": 9, "rx_errors": 2, "rx0_drop_full": 1,
                 "Rx_Errors": 5},
        "br0": None,  # driver without ethtool statistics
        "vlan-lo": {},  # none either
    }
    got = readers.read_interface_stats(sys_root, ethtool.get)
    assert {n: (r.source, r.stats) for n, r in got.items()} == {
        "eth0": ("ethtool", {"rx_queue_0_drops": 3, "rx_errors": 2, "rx0_drop_full": 1}),
        "br0": ("sysfs", {"rx_dropped": 4, "tx_fifo_errors": 2}),
        "vlan-lo": ("sysfs", {"tx_dropped": 8}),
    }
    assert readers.list_interfaces(sys_root) == sorted(["lo", "eth0", "br0", "lxc12ab", "loop9", "vlan-lo"])


def test_plugin_families_from_fixture_and_exposition(tmp_path):
    sys_root = make_sysfs(tmp_path, {"eth1": {"rx_dropped": 3, "tx_errors": 1, "rx_bytes": 10}})
    registry = FamilyRegistry()
    plugin = lu.LinuxUtilPlugin(proc_root=NODE1, sys_root=sys_root, use_ethtool=False)
    ctx = PluginContext(config=SimpleNamespace(metrics_interval_ns=3_600 * 10**9), flow_sink=None, telemetry=None,
                        metrics=registry)
    plugin.init(ctx)
    try:
        assert list(registry.families()) == []  # nothing before the first read
        plugin.start()
        fams = list(registry.families())
        assert [f[0] for f in fams] == [lu.TCP_STATE, lu.TCP_CONNECTION_REMOTE, lu.UDP_CONNECTION_STATS,
                                        lu.TCP_CONNECTION_STATS, lu.IP_CONNECTION_STATS, lu.INTERFACE_STATS]
        assert samples(fams, lu.TCP_STATE) == {(k,): v for k, v in readers.read_sockets(NODE1).tcp_states.items()}
        assert samples(fams, lu.TCP_CONNECTION_REMOTE) == {("AllIPs",): 14}
        assert samples(fams, lu.UDP_CONNECTION_STATS) == {("ACTIVE",): 5}
        assert samples(fams, lu.TCP_CONNECTION_STATS) == {
            ("DataCsumErr",): 2, ("ListenDrops",): 7, ("RmAddrDrop",): 4, ("TCPBacklogDrop",): 3,
            ("TCPLostRetransmit",): 1, ("TCPTimeouts",): 12}
        assert samples(fams, lu.IP_CONNECTION_STATS) == {
            ("InCsumErrors",): 1, ("InNoECTPkts",): 17, ("InNoRoutes",): 5, ("InOctets",): 1000, ("OutOctets",): 2000}
        assert samples(fams, lu.INTERFACE_STATS) == {("eth1", "rx_dropped"): 3, ("eth1", "tx_errors"): 1}
        text = render(fams)
        assert 'networkobservability_tcp_state{state="LISTEN"} 5\n' in text
        assert 'networkobservability_tcp_connection_remote{address="AllIPs"} 14\n' in text
        assert 'networkobservability_interface_stats{interface_name="eth1",statistic_name="rx_dropped"} 3\n' in text
        assert "_total" not in text
        assert plugin.health() == [] and plugin.poller.reads == 1
        assert plugin.debug()["interface_sources"] == {"eth1": "sysfs"}
    finally:
        plugin.stop()
    assert list(registry.families()) == []  # unregistered on stop
    assert not plugin.poller.alive()


def test_plugin_section_failure_is_isolated_and_reported(tmp_path):
    root = tmp_path / "proc"
    (root / "net").mkdir(parents=True)
    for name in ("tcp", "udp", "netstat"):
        (root / "net" / name).write_bytes((Path(NODE1) / "net" / name).read_bytes())
    sys_root = make_sysfs(tmp_path / "sys", {})
    plugin = lu.LinuxUtilPlugin(proc_root=str(root), sys_root=sys_root, use_ethtool=False)
    plugin.init(PluginContext(config=SimpleNamespace(), flow_sink=None, telemetry=None, metrics=None))
    (root / "net" / "netstat").unlink()  # vanishes after init
    snap = plugin.read_once()
    assert set(snap.errors) == {"netstat"}
    names = [f[0] for f in plugin.families()]
    assert lu.TCP_STATE in names and lu.TCP_CONNECTION_STATS not in names and lu.IP_CONNECTION_STATS not in names
    assert any("netstat unreadable" in r for r in plugin.health())
    assert plugin.poller.interval_s == 10.0  # no metrics_interval_ns: Retina's default 10 s


def test_init_fails_clearly_without_procfs(tmp_path):
    plugin = lu.LinuxUtilPlugin(proc_root=str(tmp_path), sys_root=str(tmp_path))
    with pytest.raises(lu.LinuxUtilError, match=r"cannot read .*net/tcp"):
        plugin.init(PluginContext(config=SimpleNamespace(), flow_sink=None, telemetry=None))
    plugin.stop()  # idempotent after a failed init


def test_poller_reads_every_interval_and_survives_errors():
    calls = []

    def read():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise OSError("transient")

    p = Poller("t", read, 0.02)
    p.start()
    try:
        assert len(calls) == 1  # first read synchronous
        wait_for(lambda: len(calls) >= 4, what="4 reads")
        assert p.failures == 1 and p.last_error is None and p.alive()
    finally:
        p.stop()
    assert not p.alive()
    assert metrics_interval_s(SimpleNamespace(metrics_interval_ns=1_500_000_000)) == 1.5


# --------------------------------------------------------------------------------------------------------------
# Real /proc in fresh network namespaces


@pytest.fixture
def netns():
    name = f"rxlu-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # No IPv6 link-local traffic (router solicitations, MLD) on the interfaces the test creates.
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"],
                       check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class Sockets:
    def __init__(self):
        self.all: list[socket.socket] = []

    def close(self):
        for s in self.all:
            s.close()

    def listener(self, family: int, addr: str, backlog: int = 16) -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 0))
        s.listen(backlog)
        self.all.append(s)
        return s

    def connect(self, lst: socket.socket) -> tuple[socket.socket, socket.socket]:
        c = socket.socket(lst.family, socket.SOCK_STREAM)
        c.connect(lst.getsockname()[:2])
        a, _ = lst.accept()
        self.all += [c, a]
        return c, a

    def udp(self, family: int, addr: str | None) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        if addr is not None:
            s.bind((addr, 0))
        self.all.append(s)
        return s


def ss_states(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tanH"], capture_output=True, text=True,
                         check=True).stdout
    got = dict.fromkeys(ALL_STATES, 0)
    for line in out.splitlines():
        if line.strip():
            got[SS_STATES[line.split()[0]]] += 1
    return got


def ss_udp_count(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-uanH"], capture_output=True, text=True,
                         check=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def proc_tally() -> tuple[dict[str, int], int, int]:
    """Independent count of the calling thread's /proc tables: states by code, TCP entries with a remote port,
    UDP entries."""
    by_code: dict[str, int] = {}
    peers = udp = 0
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/thread-self/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            by_code[readers.TCP_STATES[int(f[3], 16)]] = by_code.get(readers.TCP_STATES[int(f[3], 16)], 0) + 1
            peers += f[2].split(":")[1] != "0000"
    for name in ("udp", "udp6"):
        udp += len(Path(f"/proc/thread-self/net/{name}").read_text().splitlines()) - 1
    return {**dict.fromkeys(ALL_STATES, 0), **by_code}, peers, udp


def test_real_sockets_exact_in_fresh_namespace(netns):
    socks = Sockets()
    try:
        def scenario():
            l4 = [socks.listener(socket.AF_INET, "127.0.0.1") for _ in range(3)]
            l6 = [socks.listener(socket.AF_INET6, "::1") for _ in range(2)]
            socks.connect(l4[0])
            socks.connect(l4[1])
            socks.connect(l6[0])  # 3 connections: 6 ESTABLISHED
            c, _ = socks.connect(l4[2])
            c.shutdown(socket.SHUT_WR)  # client FIN_WAIT2, server CLOSE_WAIT
            c2, a2 = socks.connect(l4[0])
            a2.close()  # server closes first ...
            assert c2.recv(1) == b""
            c2.close()  # ... so it ends in TIME_WAIT once the client's FIN arrives
            for _ in range(3):
                socks.udp(socket.AF_INET, "127.0.0.1")
            for _ in range(2):
                socks.udp(socket.AF_INET6, "::1")
            socks.udp(socket.AF_INET, None)  # unbound: in no table

        in_netns(netns, scenario)
        want = states(LISTEN=5, ESTABLISHED=6, FIN_WAIT2=1, CLOSE_WAIT=1, TIME_WAIT=1)
        wait_for(lambda: ss_states(netns) == want, what=f"the namespace's sockets to settle at {want}")
        assert ss_udp_count(netns) == 5

        def measure():
            before = proc_tally()
            got = readers.read_sockets()  # default root: /proc/thread-self, i.e. this thread's namespace
            snap = lu.LinuxUtilPlugin(use_ethtool=False).read_once()
            after = proc_tally()
            return before, got, snap, after

        before, got, snap, after = in_netns(netns, measure)
        assert before == after == (want, 9, 5)
        assert (got.tcp_states, got.tcp_with_peer, got.udp_sockets, got.tcp_total) == (want, 9, 5, 14)
        fams = snap.families
        assert samples(fams, lu.TCP_STATE) == {(k,): v for k, v in want.items()}
        assert samples(fams, lu.TCP_CONNECTION_REMOTE) == {("AllIPs",): 9}
        assert samples(fams, lu.UDP_CONNECTION_STATS) == {("ACTIVE",): 5}
    finally:
        socks.close()


def nstat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-a", "-s", "-z", "-j"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["kernel"]


def test_real_netstat_equals_nstat_with_listen_drops(netns):
    socks = Sockets()
    pending: list[socket.socket] = []
    try:
        def overflow():
            lst = socks.listener(socket.AF_INET, "127.0.0.1", backlog=0)
            socks.connect(lst)  # some traffic on lo (IpExt octets), then the queue is empty again
            # The accept queue holds one connection (backlog 0); the SYNs after that are dropped: ListenDrops.
            for _ in range(3):
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setblocking(False)
                c.connect_ex(lst.getsockname())
                pending.append(c)

        in_netns(netns, overflow)
        wait_for(lambda: nstat(netns).get("TcpExtListenDrops", 0) >= 2, what="ListenDrops >= 2")
        for c in pending:  # no more SYN retransmissions: the counters stop moving
            c.close()

        for _attempt in range(20):  # equal to nstat at the same moment (counters did not move across the read)
            n1 = nstat(netns)
            got, snap = in_netns(netns, lambda: (readers.read_netstat(), lu.LinuxUtilPlugin(use_ethtool=False)
                                                 .read_once()))
            n2 = nstat(netns)
            if n1 == n2:
                break
        else:
            pytest.fail("netstat counters kept moving")
        for section in ("TcpExt", "IpExt", "MPTcpExt"):  # every counter, zeros included
            assert got[section], section
            assert {section + k: v for k, v in got[section].items()} == \
                {k: v for k, v in n1.items() if k.startswith(section)}, section
        assert n1["TcpExtListenDrops"] >= 2 and n1["IpExtInOctets"] > 0
        want_tcp = {k: n1[s + k] for s in ("TcpExt", "MPTcpExt") for k in readers.TCP_CURATED_KEYS
                    if n1.get(s + k)}
        assert samples(snap.families, lu.TCP_CONNECTION_STATS) == {(k,): v for k, v in want_tcp.items()}
        assert ("ListenDrops",) in samples(snap.families, lu.TCP_CONNECTION_STATS)
        assert samples(snap.families, lu.IP_CONNECTION_STATS) == {
            (k[len("IpExt"):],): v for k, v in n1.items() if k.startswith("IpExt") and v}
    finally:
        for c in pending:
            c.close()
        socks.close()


TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
BPF_PROG_TYPE_XDP = 6
XDP_DROP = 1


def ethtool_s(ns: str, ifname: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-S", ifname], capture_output=True, text=True,
                         check=True).stdout
    return {k.strip(): int(v) for k, _, v in (ln.partition(":") for ln in out.splitlines()[1:]) if v.strip()}


def link_stats(ns: str, ifname: str) -> dict:
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]


def test_real_interface_stats_ethtool_and_sysfs(netns):
    """vxa/vxb: veth (ethtool statistics); vxb drops N frames with an XDP_DROP program (rx_queue_0_xdp_drops).
    tapx: tap (no ethtool statistics: sysfs); M frames of an unknown ethertype written into it are dropped by the
    stack (rx_dropped). The reader runs under ``ip netns exec`` so that /sys is the namespace's."""
    from retina_exporter.datapath import syscall as bpfsys

    N, M = 11, 7
    ip = ["ip", "-n", netns]
    subprocess.run(ip + ["link", "add", "vxa", "type", "veth", "peer", "name", "vxb"], check=True)
    fds: list[int] = []
    try:
        xdp = bpfsys.load_constant_prog(XDP_DROP, "xdpdrop", prog_type=BPF_PROG_TYPE_XDP)
        fds.append(xdp)

        def setup():
            from pyroute2 import IPRoute

            tap = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(tap)
            fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", b"tapx", IFF_TAP | IFF_NO_PI))
            with IPRoute() as r:
                r.link("set", index=r.link_lookup(ifname="vxb")[0], xdp_fd=xdp)
                for name in ("vxa", "vxb", "tapx"):
                    r.link("set", index=r.link_lookup(ifname=name)[0], state="up")
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind(("vxa", 0))
            return tap, s

        tap, pkt = in_netns(netns, setup)

        def carrier(name):
            out = subprocess.run(ip + ["link", "show", name], capture_output=True, text=True).stdout
            return "LOWER_UP" in out

        # Frames sent before the veth pair has carrier are dropped before XDP sees them.
        wait_for(lambda: carrier("vxa") and carrier("vxb"), what="veth carrier")
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(46)  # local experimental ethertype
        try:
            for _ in range(N):
                pkt.send(frame)
        finally:
            pkt.close()
        for _ in range(M):
            os.write(tap, frame)
        wait_for(lambda: ethtool_s(netns, "vxb").get("rx_queue_0_xdp_drops") == N, what="XDP drops")
        wait_for(lambda: link_stats(netns, "tapx")["rx"]["dropped"] == M, what="tap rx drops")

        script = ("import json; from retina_exporter.plugins.linuxutil import readers, plugin\n"
                  "with readers.Ethtool() as e:\n"
                  "    raw = {n: e.stats(n) for n in readers.list_interfaces()}\n"
                  "snap = plugin.build_snapshot()\n"
                  "fam = [f for f in snap.families if f[0] == plugin.INTERFACE_STATS][0]\n"
                  "print(json.dumps({'raw': raw, 'sources': snap.interface_sources, 'errors': snap.errors,\n"
                  "  'samples': [[dict(l), v] for l, v in fam[3]]}))\n")
        p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script], cwd=ROOT,
                           capture_output=True, text=True, check=True)
        out = json.loads(p.stdout)
        # The ioctl reader sees exactly what `ethtool -S` shows; drivers without statistics give None.
        assert out["raw"]["vxa"] == ethtool_s(netns, "vxa") and out["raw"]["vxb"] == ethtool_s(netns, "vxb")
        assert out["raw"]["tapx"] is None and out["raw"]["lo"] is None
        assert out["errors"] == {}
        assert out["sources"] == {"vxa": "ethtool", "vxb": "ethtool", "tapx": "sysfs"}
        got = {(s["interface_name"], s["statistic_name"]): v for s, v in out["samples"]}
        assert got == {("vxb", "rx_queue_0_xdp_drops"): N, ("tapx", "rx_dropped"): M}
    finally:
        for fd in fds:
            os.close(fd)
