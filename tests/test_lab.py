"""The local lab: topology, quietness, traffic ground truth, teardown and the ``lab`` CLI.

Needs root (network namespaces).  Every lab made here uses its own ``rxlab-<id>-*`` namespaces and is removed
by its fixture/test, whatever happens.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

from retina_exporter.lab import traffic as T  # noqa: E402
from retina_exporter.lab.topology import NETNS_DIR, Lab, LabError, existing_namespaces, stats_delta  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def lab_namespaces(lab_id: str) -> list[str]:
    return existing_namespaces(f"rxlab-{lab_id}-")


def wait_until(cond, timeout: float = 5.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


@pytest.fixture(scope="module")
def lab():
    lab = Lab(pods=2, offloads=False)  # TSO/GSO/GRO off: one skb per wire packet, exact TCP packet counts
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert lab_namespaces(lab.id) == []


# ------------------------------------------------------------------------------------------------------------
# topology


def test_up_is_fast_and_complete(lab):
    assert lab.up_seconds < 2.0, f"lab up took {lab.up_seconds:.2f}s"
    assert sorted(lab_namespaces(lab.id)) == sorted(lab.namespaces)
    assert lab.node_ns == f"rxlab-{lab.id}-node" and lab.world_ns == f"rxlab-{lab.id}-world"
    assert [p.netns for p in lab.pods] == [f"rxlab-{lab.id}-pod0", f"rxlab-{lab.id}-pod1"]
    p0 = lab.pods[0]
    assert (p0.name, p0.ifname, p0.host_ifname, p0.ipv4, p0.ipv6) == (
        "pod-0", "eth0", "vpod0", "10.244.0.10", "fd00:244::10")
    # eth0 carries the addresses and the MAC, the host side is a port of br0
    out = json.loads(lab.run(p0, ["ip", "-j", "addr", "show", "dev", "eth0"]).stdout)[0]
    assert out["address"] == p0.mac
    addrs = {(a["local"], a["prefixlen"]) for a in out["addr_info"]}
    assert addrs == {("10.244.0.10", 24), ("fd00:244::10", 64)}  # and no link-local address
    link = json.loads(lab.run("node", ["ip", "-j", "link", "show", "dev", "vpod0"]).stdout)[0]
    assert link["master"] == "br0"
    # static neighbours everywhere that talks
    neigh = json.loads(lab.run(p0, ["ip", "-j", "neigh", "show", "dev", "eth0"]).stdout)
    perm = {n["dst"] for n in neigh if "PERMANENT" in n.get("state", [])}
    assert {"10.244.0.1", "fd00:244::1", "10.244.0.11", "fd00:244::11"} <= perm
    neigh = json.loads(lab.run("world", ["ip", "-j", "neigh", "show"]).stdout)
    assert {"10.99.0.2", "fd00:99::2"} <= {n["dst"] for n in neigh if "PERMANENT" in n.get("state", [])}
    # forwarding on in the node
    assert lab.run("node", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert lab.ipv6_forwarding_mode in ("force_forwarding", "all.forwarding")


def test_offloads_off(lab):
    for ns, ifname in lab.interfaces():
        assert lab.get_offloads(ns, ifname) == {"tso": False, "gso": False, "gro": False}, (ns, ifname)


@pytest.mark.parametrize("method", ["ioctl", "ethtool"])
def test_set_offloads_methods(lab, method):
    if method == "ethtool" and not lab.run("node", ["sh", "-c", "command -v ethtool"], check=False).stdout:
        pytest.skip("ethtool is not installed (apt-get install ethtool); the ioctl fallback is used")
    p = lab.pods[1]
    try:
        assert lab.set_offloads(p, "eth0", tso=True, gso=True, gro=None, method=method) == method
        assert lab.get_offloads(p, "eth0") == {"tso": True, "gso": True, "gro": False}
    finally:
        lab.set_offloads(p, "eth0", tso=False, gso=False, gro=False, method=method)
    assert lab.get_offloads(p, "eth0") == {"tso": False, "gso": False, "gro": False}


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_connectivity(lab, ipv6):
    p0, p1 = lab.pods
    for src, dst in ((p0, p1.ip(ipv6)), (p1, p0.ip(ipv6)), (p0, lab.world_ipv6 if ipv6 else lab.world_ipv4),
                     (p1, lab.gateway6 if ipv6 else lab.gateway4)):
        r = T.ping(lab, src, dst, 2, ipv6=ipv6)
        assert (r.sent, r.received) == (2, 2), r.output
    # world -> pod (routed back through the node, no NAT)
    r = T.ping(lab, "world", p1.ip(ipv6), 2, ipv6=ipv6)
    assert (r.sent, r.received) == (2, 2)


def test_up_itself_sends_nothing():
    """Bringing a lab up puts no packet on any interface (no DAD, MLD, RS, gratuitous ARP ...)."""
    with Lab(pods=2) as lab:
        sent = {(ns, i): (st["rx_packets"], st["tx_packets"]) for ns in lab.namespaces
                for i, st in lab.all_link_stats(ns).items() if st["rx_packets"] or st["tx_packets"]}
        assert sent == {}


def test_idle_lab_sends_nothing(lab):
    """No DAD, RS, MLD, ARP/ND or anything else: over an idle second no counter moves, on any interface."""
    before = {ns: lab.all_link_stats(ns) for ns in lab.namespaces}
    time.sleep(1.0)  # the observation window itself
    after = {ns: lab.all_link_stats(ns) for ns in lab.namespaces}
    moved = {(ns, i): stats_delta(before[ns][i], after[ns][i]) for ns in before for i in before[ns]
             if before[ns][i] != after[ns][i]}
    assert moved == {}


# ------------------------------------------------------------------------------------------------------------
# traffic ground truth


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_burst_exact(lab, ipv6):
    count, size = 300, 200
    b0, b1 = lab.host_stats(0), lab.host_stats(1)
    r = T.udp_burst(lab, 0, 1, count, size, sport=40001, dport=9001, ipv6=ipv6)
    assert (r.sent, r.received, r.other, r.send_errors) == (count, count, 0, 0)
    assert r.five_tuple == (lab.pods[0].ip(ipv6), 40001, lab.pods[1].ip(ipv6), 9001, "UDP")
    frame = size + 8 + (40 if ipv6 else 20) + 14
    assert r.wire_bytes == count * frame
    d0, d1 = stats_delta(b0, lab.host_stats(0)), stats_delta(b1, lab.host_stats(1))
    # vpod0 receives what pod-0 sends; vpod1 transmits to pod-1; nothing else on either.
    assert (d0["rx_packets"], d0["rx_bytes"], d0["tx_packets"]) == (count, count * frame, 0)
    assert (d1["tx_packets"], d1["tx_bytes"], d1["rx_packets"]) == (count, count * frame, 0)


def test_udp_burst_reports_losses():
    """When datagrams go missing the receiver is told to stop and reports what it got (no hang)."""
    with Lab(pods=2) as lab:
        lab.run(1, ["ip", "link", "set", "eth0", "mtu", "500"])  # the veth drops larger frames towards pod-1
        t0 = time.monotonic()
        r = T.udp_burst(lab, 0, 1, 10, 1000, dport=9100, drain_timeout=0.3)
        assert (r.sent, r.received, r.lost) == (10, 0, 10)
        assert time.monotonic() - t0 < 5
        r = T.udp_burst(lab, 0, 1, 10, 400, dport=9100)
        assert (r.sent, r.received) == (10, 10)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_transfer_exact(lab, ipv6):
    nbytes = 300_000
    b0, b1 = lab.host_stats(0), lab.host_stats(1)
    r = T.tcp_transfer(lab, 0, 1, nbytes, 8080, ipv6=ipv6, client_port=41000 + ipv6)
    assert r.bytes_sent == r.bytes_received == nbytes
    assert r.clean_close
    assert r.five_tuple == (lab.pods[0].ip(ipv6), 41000 + ipv6, lab.pods[1].ip(ipv6), 8080, "TCP")
    assert r.client_info["bytes_acked"] == nbytes + 2  # + our SYN and FIN (one sequence number each)
    d0, d1 = stats_delta(b0, lab.host_stats(0)), stats_delta(b1, lab.host_stats(1))
    # offloads off: the client's own segment counters are the wire packets, SYN ... final ACK
    assert d0["rx_packets"] == r.client_segs_out == d1["tx_packets"]
    assert d0["tx_packets"] == r.client_segs_in == d1["rx_packets"]
    assert d0["rx_bytes"] > nbytes


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_to_world_crosses_uplink(lab, ipv6):
    bu = lab.link_stats("node", "uplink0")
    r = T.tcp_transfer(lab, 1, "world", 50_000, 443, ipv6=ipv6)
    assert r.bytes_received == 50_000 and r.clean_close
    du = stats_delta(bu, lab.link_stats("node", "uplink0"))
    assert (du["tx_packets"], du["rx_packets"]) == (r.client_segs_out, r.client_segs_in)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_ping_exact(lab, ipv6):
    count = 25
    b0 = lab.host_stats(0)
    r = T.ping(lab, 0, lab.pods[1], count, ipv6=ipv6)
    assert (r.sent, r.received) == (count, count)
    frame = 56 + 8 + (40 if ipv6 else 20) + 14
    assert r.wire_bytes_per_packet == frame
    d0 = stats_delta(b0, lab.host_stats(0))
    assert (d0["rx_packets"], d0["tx_packets"]) == (count, count)
    assert (d0["rx_bytes"], d0["tx_bytes"]) == (count * frame, count * frame)


def test_refused_connection(lab):
    b1 = lab.host_stats(1)
    assert T.tcp_connect_refused(lab, 0, 1, 9)
    d1 = stats_delta(b1, lab.host_stats(1))
    assert (d1["tx_packets"], d1["rx_packets"]) == (1, 1)  # SYN in, RST out


def test_background_traffic_runs_and_stops(lab):
    import threading

    stop = threading.Event()
    errors: list = []
    stats: dict = {}
    th = threading.Thread(target=T.background_traffic, args=(lab, stop),
                          kwargs=dict(interval=0.0, seed=1, on_error=errors.append, stats=stats))
    th.start()
    try:
        assert wait_until(lambda: stats.get("steps", 0) >= 8, timeout=30), stats  # one full cycle
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive()
    assert errors == []
    assert stats["tcp"] >= 3 and stats["udp"] >= 2 and stats["ping"] >= 2 and stats["refused"] >= 1


# ------------------------------------------------------------------------------------------------------------
# inventory, teardown, CLI


def test_write_inventory(lab, tmp_path):
    import yaml

    path = lab.write_inventory(tmp_path / "inv.yaml")
    inv = yaml.safe_load(path.read_text())
    assert inv["services"] == []
    assert inv["nodes"] == [{"name": "node", "ips": ["10.99.0.2", "fd00:99::2", "10.244.0.1", "fd00:244::1"],
                             "zone": "lab-zone-a"}]
    ep = inv["endpoints"][1]
    assert ep["ips"] == ["10.244.0.11", "fd00:244::11"]
    assert ep["namespace"] == "lab" and ep["podName"] == "pod-1" and ep["node"] == "node"
    assert ep["labels"]["lab"] == "true" and ep["labels"]["app"] == ep["workload"]["name"]
    assert ep["workload"]["kind"] == "Deployment"


def test_down_removes_everything_and_is_idempotent():
    lab = Lab(pods=1)
    with lab:
        assert len(lab_namespaces(lab.id)) == 3
        # a process left running inside the lab must not keep it alive
        lab.popen(lab.pods[0], ["sleep", "60"])
    assert lab_namespaces(lab.id) == []
    lab.down()
    assert lab_namespaces(lab.id) == []


def test_down_after_partial_failure(monkeypatch):
    lab = Lab(pods=2)

    def broken(self):
        raise LabError("injected failure after the namespaces exist")

    monkeypatch.setattr(Lab, "_configure", broken)
    with pytest.raises(LabError, match="injected"):
        lab.up()
    assert lab_namespaces(lab.id) == []
    assert not lab.is_up


def test_taken_id_is_refused_and_left_alone():
    lab_id = "t" + secrets.token_hex(4)
    first = Lab(pods=1, lab_id=lab_id).up()
    try:
        with pytest.raises(LabError, match="exists already"):
            Lab(pods=1, lab_id=lab_id).up()
        assert sorted(lab_namespaces(lab_id)) == sorted(first.namespaces)
    finally:
        first.down()
    assert lab_namespaces(lab_id) == []


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "retina_exporter.lab.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=60)


def test_cli_up_down_roundtrip(tmp_path):
    lab_id = "c" + secrets.token_hex(4)
    env = dict(os.environ, RETINA_EXPORTER_LAB_DIR=str(tmp_path / "labs"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        p = _cli("up", "--pods", "2", "--id", lab_id, "--inventory", str(tmp_path / "inv.yaml"), env=env)
        assert p.returncode == 0, p.stderr
        assert f"rxlab-{lab_id}-node" in p.stdout and "10.244.0.11" in p.stdout and "fd00:244::11" in p.stdout
        state = json.loads((tmp_path / "labs" / f"{lab_id}.json").read_text())
        assert state["id"] == lab_id and state["pods"] == 2
        assert len(lab_namespaces(lab_id)) == 4
        assert (tmp_path / "inv.yaml").exists()
        # the lab works across processes
        restored = Lab.from_state(state)
        assert restored.is_up
        r = T.ping(restored, 0, restored.pods[1], 1)
        assert r.received == 1
        p = _cli("list", env=env)
        assert lab_id in p.stdout
        p = _cli("down", "--id", lab_id, env=env)
        assert p.returncode == 0, p.stderr
        assert lab_namespaces(lab_id) == []
        assert not (tmp_path / "labs" / f"{lab_id}.json").exists()
        p = _cli("down", "--id", lab_id, env=env)  # idempotent
        assert p.returncode == 0 and "nothing" in p.stdout
    finally:
        for n in lab_namespaces(lab_id):
            subprocess.run(["ip", "netns", "del", n], check=False)


def test_cli_down_removes_stray_namespaces_of_an_id(tmp_path):
    lab_id = "s" + secrets.token_hex(4)
    env = dict(os.environ, RETINA_EXPORTER_LAB_DIR=str(tmp_path / "labs"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    stray = f"rxlab-{lab_id}-pod7"
    subprocess.run(["ip", "netns", "add", stray], check=True)
    try:
        p = _cli("down", "--id", lab_id, env=env)
        assert p.returncode == 0, p.stderr
        assert not (NETNS_DIR / stray).exists()
    finally:
        subprocess.run(["ip", "netns", "del", stray], check=False, capture_output=True)


def test_lab_dns_answers_queries_from_pods():
    """The demo's DNS (server in the world namespace, queries from the pods) answers every query it sends."""
    from retina_exporter.lab.dns import LabDns

    with Lab(pods=2) as lab:
        dns = LabDns(lab, interval_s=0.02).start()
        try:
            deadline = time.monotonic() + 10
            while dns.answers < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            dns.stop()
        # The last query may have been in flight when the server stopped.
        assert dns.answers >= 10 and dns.silent > 0 and dns.queries - dns.silent - dns.answers <= 1
