"""packetparser end to end: the real agent in a lab's node namespace, real traffic between pods, and the
interfaces' own counters as ground truth.

For each aggregation level the agent is started, left quiet for longer than the sweep needs (so every packet
before the baseline is already reported), then the pods exchange a TCP transfer with a clean close, a UDP burst,
pings and IPv6 traffic. The sums over flows of packets (1 + previously observed) and bytes, per observation point
and interface, must equal the host-side veths' counter deltas exactly; per 5-tuple they must match what the
traffic generator sent."""

from __future__ import annotations

import socket
import time
from collections import defaultdict

import pytest

from retina_exporter.lab import traffic
from retina_exporter.lab.topology import Lab
from retina_exporter.lab.agent_process import AgentProcess

REPORT_INTERVAL_S = 1


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


def flow_time(f: dict) -> float:
    t = f["time"]  # RFC 3339 with nanoseconds
    from datetime import datetime

    main, _, frac = t.rstrip("Z").partition(".")
    return datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=__import__("datetime").timezone.utc).timestamp() + float("0." + (frac or "0"))


def ext(f: dict) -> dict:
    return f.get("extensions", {}).get("value", {})


def counted(f: dict) -> tuple[int, int]:
    e = ext(f)
    return 1 + int(e.get("previously_observed_packets", 0)), int(e.get("bytes", 0)) + int(
        e.get("previously_observed_bytes", 0))


def l4_key(f: dict) -> tuple:
    l4 = f.get("l4", {})
    for proto in ("TCP", "UDP"):
        if proto in l4:
            return proto, l4[proto].get("source_port", 0), l4[proto].get("destination_port", 0)
    return tuple(l4.keys()) or ("none",)


def sums(flows, since: float):
    by_point = defaultdict(lambda: [0, 0])
    by_tuple = defaultdict(lambda: [0, 0])
    for f in flows:
        if flow_time(f) < since:
            continue
        p, b = counted(f)
        point = (f["interface"]["name"], f["trace_observation_point"])
        by_point[point][0] += p
        by_point[point][1] += b
        key = (f["IP"]["source"], f["IP"]["destination"], l4_key(f), f["trace_observation_point"])
        by_tuple[key][0] += p
        by_tuple[key][1] += b
    return by_point, by_tuple


def counter_deltas(lab, before, after):
    out = {}
    for pod in lab.pods:
        b, a = before[pod.host_ifname], after[pod.host_ifname]
        # Host side of the veth: rx = what the pod sent (TC ingress, FROM_ENDPOINT), tx = what it received.
        out[(pod.host_ifname, "FROM_ENDPOINT")] = [a["rx_packets"] - b["rx_packets"], a["rx_bytes"] - b["rx_bytes"]]
        out[(pod.host_ifname, "TO_ENDPOINT")] = [a["tx_packets"] - b["tx_packets"], a["tx_bytes"] - b["tx_bytes"]]
    return out


def host_counters(lab):
    return {p.host_ifname: lab.host_stats(p) for p in lab.pods}


@pytest.mark.parametrize("level", ["low", "high"])
def test_exact_accounting_against_interface_counters(lab, level):
    agent = AgentProcess(lab.node_ns, {
        "dataAggregationLevel": level,
        "conntrackReportInterval": f"{REPORT_INTERVAL_S}s",
        "outputRingCapacity": 65535,
        "hostInterfaces": [lab.uplink],
        "nodeName": "lab-node",
    })
    try:
        agent.start()
        # Quiet for longer than a sweep needs: everything before the baseline is reported before it.
        time.sleep(2.5 * REPORT_INTERVAL_S)
        since = time.time()
        before = host_counters(lab)
        p0, p1 = lab.pods
        tcp = traffic.tcp_transfer(lab, p0, p1, nbytes=200_000, port=5201)
        udp = traffic.udp_burst(lab, p0, p1, count=300, payload_size=100, sport=40001, dport=9000)
        pings = traffic.ping(lab, p1, p0.ipv4, count=5)
        udp6 = traffic.udp_burst(lab, p1, p0, count=40, payload_size=60, sport=40002, dport=9001, ipv6=True)
        pings6 = traffic.ping(lab, p0, p1.ipv6, count=3, ipv6=True)
        after = host_counters(lab)
        want = counter_deltas(lab, before, after)

        deadline = time.monotonic() + 2 * REPORT_INTERVAL_S + 3
        while True:
            flows = agent.flows(65535, since=since)
            by_point, by_tuple = sums(flows, since)
            got = {k: by_point.get(k, [0, 0]) for k in want}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert got == want, f"{level}: flows {got} != interface counters {want}"
        # The traffic above is hundreds of packets one way and dozens the other (TCP with GSO): the comparison
        # is not between zeros.
        assert all(v[0] >= 50 for v in want.values()), want

        # Per 5-tuple: UDP datagrams as sent (frame = payload + 8 UDP + 20 IPv4 + 14 Ethernet), at both veths.
        udp_key = (p0.ipv4, p1.ipv4, ("UDP", 40001, 9000))
        assert by_tuple[udp_key + ("FROM_ENDPOINT",)] == [300, 300 * (100 + 42)]
        assert by_tuple[udp_key + ("TO_ENDPOINT",)] == [300, 300 * (100 + 42)]
        udp6_key = (p1.ipv6, p0.ipv6, ("UDP", 40002, 9001))
        assert by_tuple[udp6_key + ("FROM_ENDPOINT",)] == [40, 40 * (60 + 62)]
        assert udp.received == 300 and udp6.received == 40
        assert pings.received == 5 and pings6.received == 3

        # TCP: exactly one SYN, one SYN-ACK and two FINs per observation point; is_reply and direction right.
        tcp_flows = [f for f in flows if flow_time(f) >= since and "TCP" in f.get("l4", {})
                     and 5201 in (f["l4"]["TCP"].get("destination_port"), f["l4"]["TCP"].get("source_port"))]
        for point, ifname in (("FROM_ENDPOINT", p0.host_ifname), ("TO_ENDPOINT", p1.host_ifname)):
            fl = [f for f in tcp_flows if f["interface"]["name"] == ifname]
            flags = defaultdict(int)
            for f in fl:
                own = f["l4"]["TCP"].get("flags", {})
                if own.get("SYN") and own.get("ACK"):
                    flags["SYNACK"] += 1
                elif own.get("SYN"):
                    flags["SYN"] += 1
                flags["FIN"] += 1 if own.get("FIN") else 0
                prev = ext(f).get("previously_observed_tcp_flags", {})
                flags["FIN"] += int(prev.get("FIN", 0))
                flags["SYN"] += int(prev.get("SYN", 0)) - int(prev.get("SYNACK", 0))
                flags["SYNACK"] += int(prev.get("SYNACK", 0))
            assert (flags["SYN"], flags["SYNACK"], flags["FIN"]) == (1, 1, 2), (ifname, dict(flags))
            for f in fl:
                from_client = f["IP"]["source"] == p0.ipv4
                assert f["is_reply"] is (not from_client)
            # The client (pod 0) opened the connection: egress at its veth, ingress at the server's.
            assert {f["traffic_direction"] for f in fl} == {"EGRESS" if ifname == p0.host_ifname else "INGRESS"}
        assert tcp.bytes_received == 200_000

        if level == "high":
            # High aggregation reports far fewer events than packets.
            n_events = sum(1 for f in flows if flow_time(f) >= since)
            total = sum(v[0] for v in want.values())
            assert n_events < total
    finally:
        agent.close()


def attachments(lab, ifname: str) -> list[tuple[str, str, str]]:
    """Our programs on an interface's hooks as the kernel lists them: (direction, mode, program name).

    (Debian's bpftool 7.1 does not list TCX programs, so this asks the kernel with BPF_PROG_QUERY and netlink.)"""
    from retina_exporter.datapath.tc import TcAttacher

    with TcAttacher(prefix="retina_", netns=lab.node_ns) as att:
        return sorted((d, a.mode, a.prog_name) for d in ("ingress", "egress")
                      for a in att.list_attachments(ifname, d) if a.prog_name.startswith("retina_"))


def tc_qdiscs(lab, ifname: str) -> str:
    import subprocess

    return subprocess.run(["ip", "netns", "exec", lab.node_ns, "tc", "qdisc", "show", "dev", ifname],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("tcx", ["auto", "off"])
def test_foreign_drop_filter_still_drops_and_we_run_first(lab, tcx):
    """A foreign TC filter that drops everything from pod 1 keeps dropping with the agent attached, and the
    agent's program sees (counts) the packets before they are dropped."""
    import subprocess

    p0, p1 = lab.pods
    agent = AgentProcess(lab.node_ns, {"enableTCX": tcx, "outputRingCapacity": 16383})
    node = ["ip", "netns", "exec", lab.node_ns]
    had_clsact = "clsact" in tc_qdiscs(lab, p1.host_ifname)
    try:
        agent.start()
        if not had_clsact and "clsact" not in tc_qdiscs(lab, p1.host_ifname):
            subprocess.run(node + ["tc", "qdisc", "add", "dev", p1.host_ifname, "clsact"], check=True)
        # A classic-BPF filter returning TC_ACT_SHOT (2) in direct-action mode: drop everything.
        subprocess.run(node + ["tc", "filter", "add", "dev", p1.host_ifname, "ingress", "prio", "10", "protocol",
                               "all", "bpf", "da", "bytecode", "1,6 0 0 2"], check=True)
        since = time.time()
        udp = traffic.udp_burst(lab, p1, p0, count=25, payload_size=20, sport=40100, dport=9100, timeout=2)
        assert udp.sent == 25 and udp.received == 0  # still dropped
        key = (p1.ipv4, p0.ipv4, ("UDP", 40100, 9100), "FROM_ENDPOINT")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, by_tuple = sums(agent.flows(16383, since=since), since)
            if by_tuple.get(key, [0])[0] >= 25:
                break
            time.sleep(0.2)
        assert by_tuple[key] == [25, 25 * (20 + 42)]
        assert by_tuple.get(key[:3] + ("TO_ENDPOINT",)) is None  # never reached pod 0's veth
    finally:
        subprocess.run(node + ["tc", "filter", "del", "dev", p1.host_ifname, "ingress", "prio", "10"], check=False)
        agent.close()
        if not had_clsact and tcx == "auto":
            subprocess.run(node + ["tc", "qdisc", "del", "dev", p1.host_ifname, "clsact"], check=False)
    # Stop left nothing of ours; in clsact mode the qdisc it added is gone too.
    for pod in lab.pods:
        assert attachments(lab, pod.host_ifname) == []
    if tcx == "off" and not had_clsact:
        assert "clsact" not in tc_qdiscs(lab, p0.host_ifname)


@pytest.mark.parametrize("tcx", ["auto", "off"])
def test_restart_after_sigkill_leaves_one_attachment_per_hook(lab, tcx):
    import signal

    cfg = {"enableTCX": tcx, "hostInterfaces": [lab.uplink]}
    first = AgentProcess(lab.node_ns, cfg)
    second = AgentProcess(lab.node_ns, cfg)
    ifaces = [p.host_ifname for p in lab.pods] + [lab.uplink]
    try:
        first.start()
        for ifname in ifaces:
            assert len(attachments(lab, ifname)) == 2, ifname
        first.stop(signal.SIGKILL)
        stale = {ifname: len(attachments(lab, ifname)) for ifname in ifaces}
        # TCX links die with the process's file descriptors; cls_bpf filters outlive it.
        assert stale == {ifname: (0 if tcx == "auto" else 2) for ifname in ifaces}
        second.start()
        mode = "tcx" if tcx == "auto" else "clsact"
        for ifname in ifaces:
            got = [(d, m) for d, m, _ in attachments(lab, ifname)]
            assert got == [("egress", mode), ("ingress", mode)], (ifname, got)
        # And the restarted agent works: a ping shows up.
        since = time.time()
        traffic.ping(lab, lab.pods[0], lab.pods[1].ipv4, count=2)
        deadline = time.monotonic() + 10
        n = 0
        while time.monotonic() < deadline:
            n = sum(1 for f in second.flows(1000, since=since) if f.get("Summary") == "ICMPv4 EchoRequest")
            if n >= 4:
                break
            time.sleep(0.1)
        assert n == 4  # two requests, each at pod 0's and pod 1's veth
    finally:
        first.close()
        second.close()
    for ifname in ifaces:
        assert attachments(lab, ifname) == []


def test_conntrack_metrics(tmp_path):
    """enableConntrackMetrics: gauges summed over live conntrack entries, refreshed by the sweep. A fresh lab with
    one UDP exchange: two entries (one per veth), exact packets and bytes each way."""
    from prometheus_client.parser import text_string_to_metric_families

    with Lab(pods=2) as lab:
        p0, p1 = lab.pods
        agent = AgentProcess(lab.node_ns, {"enableConntrackMetrics": True, "conntrackReportInterval": "1s"})
        try:
            agent.start()
            traffic.udp_burst(lab, p0, p1, count=12, payload_size=30, sport=41000, dport=9500)

            def read():
                body = agent.get("/metrics")[1].decode()
                return {f.name.removeprefix("networkobservability_conntrack_"): f.samples[0].value
                        for f in text_string_to_metric_families(body) if f.name.startswith("networkobservability_conntrack_")}

            want = {"packets_tx": 24, "packets_rx": 0, "bytes_tx": 24 * (30 + 42), "bytes_rx": 0,
                    "total_connections": 2}
            deadline = time.monotonic() + 5
            got = read()
            while got != want and time.monotonic() < deadline:
                time.sleep(0.2)
                got = read()
            assert got == want
        finally:
            agent.close()
