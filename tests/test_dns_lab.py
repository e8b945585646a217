"""The dns plugin on the real kernel: its TC programs on a lab's pod veths and uplink (the plugin runs in the lab's
node namespace, in this process), a DNS server (tests/test_dns_support.py) in a pod and in the "world", clients
in other pods, on the node itself and in the world.

Every DNS message crosses two of our hooks (pod to pod: two veths; pod to world: a veth and the uplink), and the
node-level counts must still equal exactly what the clients sent and received; the pod-level records must carry
the right query, types, return code and addresses. Hostile payloads are parse errors, never messages, and the
plugin keeps working. The BPF program is compiled once for the module."""

from __future__ import annotations

import struct
import threading
from types import SimpleNamespace

import pytest

from metrics_module.registry import FamilyRegistry
from retina_core.dns.encoder import build_query
from retina_exporter.lab.topology import Lab, in_netns
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.dns.loader import DnsProgram
from retina_exporter.plugins.dns.plugin import DnsPlugin
from retina_core.telemetry import ControlPlane
from retina_exporter.plugins.dns.config import DnsLatencyConfig
from test_dns_support import DnsServer, dns_client

OBS = {0: "FROM_ENDPOINT", 1: "TO_ENDPOINT", 2: "FROM_NETWORK", 3: "TO_NETWORK"}
# Buckets far apart around the test server's delays (20 ms, 200 ms): a busy machine's scheduling delay cannot move
# an answer into a neighbouring bucket.
LATENCY = DnsLatencyConfig(unanswered_timeout_ns=1_000_000_000, buckets=(0.01, 0.1, 1.0))


class ListSink:
    def __init__(self) -> None:
        self.records: list = []
        self._lock = threading.Lock()

    def write_batch(self, items) -> None:
        with self._lock:
            self.records.extend(items)

    def take(self) -> list:
        with self._lock:
            out, self.records = self.records, []
        return out


@pytest.fixture(scope="module")
def program():
    prog = DnsProgram(1 << 20)
    yield prog
    prog.close()


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=3) as lab:
        yield lab


@pytest.fixture(scope="module")
def servers(lab):
    made = []
    try:
        made.append(DnsServer(lab, lab.pods[1]))
        made.append(DnsServer(lab, "world"))
        yield {"pod": made[0], "world": made[1]}
    finally:
        for s in made:
            s.stop()


@pytest.fixture(scope="module", params=["auto", "off"], ids=["tcx", "clsact"])
def agent(lab, program, servers, request):
    cfg = SimpleNamespace(host_interfaces=(lab.uplink,), enable_tcx=request.param, enable_pod_level=True,
                          node_name="lab", dns_latency=LATENCY)
    sink = ListSink()
    ctx = PluginContext(config=cfg, flow_sink=sink, telemetry=ControlPlane(), metrics=FamilyRegistry())
    plugin = DnsPlugin(program)

    def start():
        plugin.init(ctx)
        plugin.start()

    try:
        in_netns(lab.node_ns, start)
        mode = "tcx" if request.param == "auto" else "clsact"
        assert all(m == [mode, mode] for m in plugin.debug()["attached"].values())
        yield SimpleNamespace(plugin=plugin, sink=sink, ctx=ctx)
    finally:
        plugin.stop()
    assert not leftovers(lab)


def leftovers(lab) -> list:
    """Our programs still on any lab interface of the node namespace."""
    from retina_exporter.datapath.tc import TcAttacher

    out = []
    with TcAttacher(prefix="rdns_", netns=lab.node_ns) as att:
        for ifname in [lab.uplink, lab.bridge] + [p.host_ifname for p in lab.pods]:
            for direction in ("ingress", "egress"):
                out += [(ifname, a) for a in att.list_attachments(ifname, direction) if a.prog_name.startswith("rdns_")]
    return out


def snapshot(agent) -> tuple[int, int, int]:
    agent.plugin.flush()
    p = agent.plugin.processor
    return p.requests, p.responses, p.parse_errors_total


def delta(agent, before) -> tuple[int, int, int]:
    after = snapshot(agent)
    return tuple(a - b for a, b in zip(after, before))


def family_values(agent) -> dict:
    return {name: samples for name, _t, _h, samples in agent.ctx.metrics.families()}


def test_attached_and_seen_map(lab, agent):
    dbg = agent.plugin.debug()
    assert set(dbg["attached"]) == {lab.uplink} | {p.host_ifname for p in lab.pods}
    idx = in_netns(lab.node_ns, lambda: {n: __import__("socket").if_nametoindex(n)
                                         for n in [lab.uplink, lab.bridge] + [p.host_ifname for p in lab.pods]})
    # Interfaces with our ingress hook, plus the bridge the pod veths are enslaved to.
    assert set(dbg["seen_ifindex"]) == set(idx.values())


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_pod_to_pod_udp_counts_exactly(lab, agent, ipv6):
    client, server = lab.pods[0], lab.pods[1]
    queries = [["a.example", "A"], ["aaaa.example", "AAAA"], ["cname.example", "A"], ["missing.example", "A"],
               ["a.example", "AAAA"], ["missing.example", "AAAA"]]
    agent.sink.take()
    before = snapshot(agent)
    got = dns_client(lab, client, {"server": server.ip(ipv6), "proto": "udp", "queries": queries})
    assert got["sent"] == got["received"] == len(queries)
    assert delta(agent, before) == (len(queries), len(queries), 0)

    records = agent.sink.take()
    assert len(records) == 2 * len(queries)
    queries_seen = [r for r in records if not r.l7.qr]
    responses = [r for r in records if r.l7.qr]
    # Each message once, at the sender's veth.
    assert {(OBS[r.obs_point], r.ifname) for r in queries_seen} == {("FROM_ENDPOINT", client.host_ifname)}
    assert {(OBS[r.obs_point], r.ifname) for r in responses} == {("FROM_ENDPOINT", server.host_ifname)}
    assert all(r.verdict == 16 and r.ip_version == (6 if ipv6 else 4) and r.proto == 17 for r in records)
    assert [(r.l7.query, r.l7.qtypes) for r in queries_seen] == [(q + ".", (t,)) for q, t in queries]
    want = {
        ("a.example.", "A"): (0, ("10.1.0.1", "10.1.0.2"), 2),
        ("aaaa.example.", "AAAA"): (0, ("2001:db8::1",), 1),
        ("cname.example.", "A"): (0, ("10.1.0.1", "10.1.0.2"), 3),
        ("missing.example.", "A"): (3, (), 0),
        ("a.example.", "AAAA"): (0, (), 0),
        ("missing.example.", "AAAA"): (3, (), 0),
    }
    got_resp = {(r.l7.query, r.l7.qtypes[0]): (r.l7.rcode, r.l7.ips, r.l7.num_answers) for r in responses}
    assert got_resp == want
    cname = next(r for r in responses if r.l7.query == "cname.example.")
    assert cname.l7.cnames == ("a.example.",) and cname.l7.ttl == 60 and cname.l7.rrtypes == ("CNAME", "A", "A")


def test_tcp_several_messages_per_segment_and_long_response(lab, agent):
    client, server = lab.pods[2], lab.pods[1]
    queries = [["a.example", "A"], ["big.example", "A"], ["missing.example", "AAAA"]]
    agent.sink.take()
    before = snapshot(agent)
    got = dns_client(lab, client, {"server": server.ipv4, "proto": "tcp", "queries": queries, "one_write": True})
    got2 = dns_client(lab, client, {"server": server.ipv6, "proto": "tcp", "queries": queries[::-1]})
    assert got["received"] == got2["received"] == 3
    assert delta(agent, before) == (6, 6, 0)
    records = agent.sink.take()
    big = [r for r in records if r.l7.qr and r.l7.query == "big.example."]
    assert len(big) == 2 and all(r.proto == 6 and r.l7.num_answers == 120 for r in big)
    # 512 captured bytes hold only the first answers of the ~2 KB response: reported as incomplete.
    assert all(not r.l7.complete and 0 < len(r.l7.ips) < 120 for r in big)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_every_path_counts_once(lab, agent, ipv6):
    """pod -> world server (veth + uplink), node -> pod server (only the pod's veth, ingress_ifindex 0),
    node -> world (only the uplink), world -> pod server (uplink + veth)."""
    world = lab.world_ipv6 if ipv6 else lab.world_ipv4
    pod_server = lab.pods[1].ip(ipv6)
    plans = [
        (lab.pods[0], world, {("FROM_ENDPOINT", lab.pods[0].host_ifname), ("FROM_NETWORK", lab.uplink)}),
        ("node", pod_server, {("TO_ENDPOINT", lab.pods[1].host_ifname), ("FROM_ENDPOINT", lab.pods[1].host_ifname)}),
        ("node", world, {("TO_NETWORK", lab.uplink), ("FROM_NETWORK", lab.uplink)}),
        ("world", pod_server, {("FROM_NETWORK", lab.uplink), ("FROM_ENDPOINT", lab.pods[1].host_ifname)}),
    ]
    queries = [["a.example", "A"], ["aaaa.example", "AAAA"], ["nothing.example", "A"]]
    for ns, server, points in plans:
        agent.sink.take()
        before = snapshot(agent)
        got = dns_client(lab, ns, {"server": server, "proto": "udp", "queries": queries})
        assert got["received"] == 3
        assert delta(agent, before) == (3, 3, 0), (ns, server)
        records = agent.sink.take()
        assert {(OBS[r.obs_point], r.ifname) for r in records} == points, (ns, server)


HOSTILE = {
    "garbage": bytes(range(7)),
    "empty": b"",
    "short_header": b"\x12\x34\x01\x00\x00\x01",
    "self_pointer": struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",
    "pointer_cycle": struct.pack("!HHHHHH", 2, 0x100, 1, 0, 0, 0) + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01",
    "oversize_name": struct.pack("!HHHHHH", 3, 0x100, 1, 0, 0, 0) + b"\x3f" + b"x" * 63 + b"\x3f" + b"y" * 63
    + b"\x3f" + b"z" * 63 + b"\x3f" + b"w" * 63 + b"\x00\x00\x01\x00\x01",
    "truncated_question": build_query("cut.example", "A")[:-3],
    "bad_label_type": struct.pack("!HHHHHH", 4, 0x100, 1, 0, 0, 0) + b"\x45abcde\x00\x00\x01\x00\x01",
}


def test_hostile_payloads_are_parse_errors(lab, agent):
    before = snapshot(agent)
    errors_before = dict(agent.plugin.processor.parse_errors)
    rounds = 20
    payloads = [p.hex() for p in HOSTILE.values()] * rounds
    got = dns_client(lab, lab.pods[0], {"server": lab.pods[1].ipv4, "proto": "raw", "payloads": payloads})
    assert got["sent"] == len(payloads)
    assert delta(agent, before) == (0, 0, len(payloads))
    errors = {k: v - errors_before.get(k, 0) for k, v in agent.plugin.processor.parse_errors.items()}
    assert errors == {"short_header": 3 * rounds, "compression_loop": 2 * rounds, "name_too_long": rounds,
                      "truncated": rounds, "bad_label_type": rounds}
    assert agent.plugin.readers_alive() and agent.plugin.reader.callback_errors == 0
    # Still counting real DNS afterwards.
    before = snapshot(agent)
    dns_client(lab, lab.pods[0], {"server": lab.pods[1].ipv4, "proto": "udp", "queries": [["a.example", "A"]]})
    assert delta(agent, before) == (1, 1, 0)
    fam = family_values(agent)
    assert fam["controlplane_networkobservability_dns_parse_errors_counter"]
    assert fam["networkobservability_dns_request_count"] == [((), agent.plugin.processor.requests)]
    assert fam["networkobservability_dns_response_count"] == [((), agent.plugin.processor.responses)]


def test_new_pod_veth_is_attached_and_detached(lab, agent):
    """A veth that appears while the plugin runs is attached (the watcher), and forgotten when it goes."""
    import subprocess
    import time

    ns = lab.node_ns
    subprocess.run(["ip", "netns", "add", f"{ns}-x"], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "vpodx", "type", "veth", "peer", "name", "eth0", "netns",
                        f"{ns}-x"], check=True)
        deadline = time.monotonic() + 5
        while "vpodx" not in agent.plugin.debug()["attached"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "vpodx" in agent.plugin.debug()["attached"]
        subprocess.run(["ip", "-n", ns, "link", "del", "vpodx"], check=True)
        deadline = time.monotonic() + 5
        while "vpodx" in agent.plugin.debug()["attached"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "vpodx" not in agent.plugin.debug()["attached"]
    finally:
        subprocess.run(["ip", "netns", "del", f"{ns}-x"], check=False)


def latency_state(agent) -> tuple[dict, dict]:
    """({(query_type, return_code): bucket counts}, {query_type: unanswered}) from the plugin's families."""
    agent.plugin.flush()
    fams = family_values(agent)
    hist = {tuple(v for _, v in labels): h.counts
            for labels, h in fams["networkobservability_dns_latency_seconds"]}
    unanswered = {labels[0][1]: n for labels, n in fams["networkobservability_dns_unanswered_queries"]}
    return hist, unanswered


def wait_for(fn, timeout: float = 20.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["pod", "world"])
def test_latency_buckets_and_unanswered_exact(lab, agent, servers, where):
    """20 ms and 200 ms answers land in (0.01, 0.1] and (0.1, 1]; a never-answered name counts once per query after
    the 1 s timeout. The world server's messages cross two of our hooks (the pod's veth and the uplink): each query
    is still one observation."""
    client = lab.pods[0] if where == "pod" else lab.pods[2]
    server = lab.pods[1].ipv4 if where == "pod" else lab.world_ipv4
    agent.sink.take()
    hist0, unanswered0 = latency_state(agent)
    latency_before = hist0.pop(("A", "NOERROR"), (0, 0, 0, 0))
    queries = [["slow20.example", "A"], ["slow200.example", "A"], ["silent.example", "A"], ["slow20.example", "A"],
               ["slow200.example", "A"], ["silent.example", "AAAA"], ["slow20.example", "A"]]
    got = dns_client(lab, client, {"server": server, "proto": "udp", "queries": queries,
                                   "silent": ["silent.example"]})
    assert got["received"] == 5

    def grown():
        hist, unanswered = latency_state(agent)
        d_un = {k: n - unanswered0.get(k, 0) for k, n in unanswered.items() if n != unanswered0.get(k, 0)}
        return (hist, d_un) if d_un == {"A": 1, "AAAA": 1} else None

    state = wait_for(grown)
    assert state is not None, latency_state(agent)
    hist, _ = state
    before = latency_before
    assert tuple(a - b for a, b in zip(hist[("A", "NOERROR")], before)) == (0, 3, 2, 0)
    assert {k: v for k, v in hist.items() if k != ("A", "NOERROR")} == hist0  # nothing else moved
    dbg = agent.plugin.debug()
    assert dbg["latency_pending"] == 0 and dbg["latency_overflow"] == 0 and dbg["latency_duplicates"] == 0

    # Pod level: the same records, enriched by address, through the metrics module's families.
    import socket

    from metrics_module.advanced import AdvancedMetrics
    from retina_core.identity import WORLD, Identity
    from retina_core.metricsconfig import parse_metrics_configuration

    idents = {socket.inet_aton(p.ipv4): Identity("pod", namespace="lab", pod_name=p.name, node_name="lab")
              for p in lab.pods}
    records = agent.sink.take()
    for r in records:
        r.source, r.destination = idents.get(r.src_ip, WORLD), idents.get(r.dst_ip, WORLD)
    adv = AdvancedMetrics(parse_metrics_configuration({"contextOptions": [
        {"metricName": "dns_latency_seconds", "sourceLabels": ["podname"]},
        {"metricName": "dns_unanswered_queries", "sourceLabels": ["podname"]}]}),
        node_name="lab", host_interfaces_observed=True)
    adv.dns_latency_buckets = LATENCY.buckets
    adv.process(records)
    adv.sweep()
    fams = {name: samples for name, _t, _h, samples in adv.families()}
    assert [(labels, h.counts) for labels, h in fams["networkobservability_adv_dns_latency_seconds"]] == [
        ((("query_type", "A"), ("return_code", "NOERROR"), ("podname", client.name)), (0, 3, 2, 0))]
    assert sorted(fams["networkobservability_adv_dns_unanswered_queries"]) == [
        ((("query_type", "A"), ("podname", client.name)), 1), ((("query_type", "AAAA"), ("podname", client.name)), 1)]


def test_latency_through_a_service_vip_and_snat(lab, agent, servers):
    """A pod queries a Service-like VIP that the node DNATs to the world server, SNATed on the uplink (nftables in
    the node namespace): the response arrives on the uplink from the real server to the node's address (its
    counted observation matches no query), and is reported again, latency only, at the pod's veth from the VIP:
    each query still lands in its bucket, the counts are unchanged, and the response flows carry latency_ns."""
    vip = "10.96.0.10"
    rules = f"""table ip rxdnslat {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept; ip daddr {vip} udp dport 53 dnat to {lab.world_ipv4}; }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept; oifname "{lab.uplink}" ip daddr {lab.world_ipv4} masquerade; }}
}}
"""
    lab.run("node", ["nft", "-f", "-"], input=rules)
    try:
        agent.sink.take()
        hist0, unanswered0 = latency_state(agent)
        before_counts = snapshot(agent)
        latency_before = hist0.pop(("A", "NOERROR"), (0, 0, 0, 0))
        queries = [["slow20.example", "A"], ["slow200.example", "A"], ["silent.example", "A"]]
        got = dns_client(lab, lab.pods[0], {"server": vip, "proto": "udp", "queries": queries,
                                            "silent": ["silent.example"]})
        assert got["received"] == 2

        def grown():
            hist, unanswered = latency_state(agent)
            return hist if unanswered.get("A", 0) - unanswered0.get("A", 0) == 1 else None

        hist = wait_for(grown)
        assert hist is not None, latency_state(agent)
        assert tuple(a - b for a, b in zip(hist[("A", "NOERROR")], latency_before)) == (0, 1, 1, 0)
        assert delta(agent, before_counts) == (3, 2, 0)  # latency-only reports are not counted
        responses = [r for r in agent.sink.take() if r.l7.qr]
        assert len(responses) == 2 and all(OBS[r.obs_point] == "FROM_NETWORK" for r in responses)
        lat = {r.l7.query: r.l7.latency_ns for r in responses}
        assert 20_000_000 <= lat["slow20.example."] < 100_000_000 <= 200_000_000 <= lat["slow200.example."] < 10**9
        assert agent.plugin.debug()["latency_only_events"] >= 2
    finally:
        lab.run("node", ["nft", "delete", "table", "ip", "rxdnslat"], check=False)
