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
from tests.agent_proc import AgentProcess

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
