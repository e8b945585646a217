"""dns and tcpretrans in the real agent (``retina-exporter agent`` in a lab's node namespace): node-level counters on
/metrics, pod-level adv_dns_* series through the enricher and the metrics module, L7 DNS flows on /debug/flows,
and the plugins' TC programs gone after the agent stops. One agent start for the module (it compiles the BPF)."""

from __future__ import annotations

import json
import time

import pytest

from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab
from test_dns_support import DnsServer, dns_client
from tests.support.agent_metrics import scrape, value


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(pods=2) as lab:
        lab.inventory_path = lab.write_inventory(tmp_path_factory.mktemp("inv") / "inventory.yaml")
        yield lab


@pytest.fixture(scope="module")
def server(lab):
    s = DnsServer(lab, lab.pods[1])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def agent(lab, server):
    agent = AgentProcess(lab.node_ns, {
        "enabledPlugin": ["dns", "tcpretrans"],
        "enablePodLevel": True,
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": "node",
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "dns_request_count", "sourceLabels": ["podname"]},
            {"metricName": "dns_response_count", "sourceLabels": ["podname"]},
        ]},
    })
    try:
        agent.start()
        yield agent
    finally:
        rc = agent.stop()
        log = agent.log()
        agent.close()
    assert rc == 0, log
    from test_dns_lab import leftovers

    assert not leftovers(lab)  # the agent removed its TC programs


def wait_for(read, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = read()
    return got


def test_node_counters_pod_metrics_and_flows(lab, agent):
    p0, p1 = lab.pods
    since = time.time()
    m0 = scrape(agent)
    queries = [["a.example", "A"], ["a.example", "A"], ["aaaa.example", "AAAA"], ["missing.example", "A"]]
    got = dns_client(lab, p0, {"server": p1.ipv4, "proto": "udp", "queries": queries})
    assert got["received"] == 4

    def node():
        m = scrape(agent)
        return (value(m, "networkobservability_dns_request_count") - value(m0, "networkobservability_dns_request_count"),
                value(m, "networkobservability_dns_response_count") - value(m0, "networkobservability_dns_response_count"))

    assert wait_for(node, (4.0, 4.0)) == (4.0, 4.0)

    def adv():
        m = scrape(agent)
        return (value(m, "networkobservability_adv_dns_request_count", query="a.example.", query_type="A"),
                value(m, "networkobservability_adv_dns_response_count", query="a.example.", query_type="A",
                      return_code="NOERROR", response="10.1.0.1,10.1.0.2", num_response="2"),
                value(m, "networkobservability_adv_dns_response_count", query="missing.example.",
                      return_code="NXDOMAIN"))

    assert wait_for(adv, (2.0, 2.0, 1.0)) == (2.0, 2.0, 1.0), dict(scrape(agent))

    flows = [f for f in agent.flows(last=4000, since=since) if f.get("Type") == "L7"]
    assert len(flows) == 8, json.dumps(flows[:2], indent=1)
    summaries = sorted(f["Summary"] for f in flows)
    assert summaries.count("DNS Query a.example. A") == 2
    assert 'DNS Answer "10.1.0.1,10.1.0.2" TTL: 60 (Query a.example. A)' in summaries
    assert "DNS Answer RCode: NXDOMAIN (Query missing.example. A)" in summaries
    assert all(f["verdict"] == "FORWARDED" and f["event_type"] == {"type": 129} for f in flows)
    q = next(f for f in flows if f["l7"]["type"] == "REQUEST")
    assert q["source"]["pod_name"] == p0.name and q["destination"]["pod_name"] == p1.name
    assert q["extensions"]["value"]["dns_type"] == "QUERY"


def test_plugins_healthy_and_debug(agent):
    status, body = agent.get("/debug/plugins")
    assert status == 200
    dbg = json.loads(body)
    assert set(dbg["dns"]["attached"]) >= {"uplink0", "vpod0", "vpod1"}
    assert dbg["tcpretrans"]["attached"] == ["tcp:tcp_retransmit_skb", "tcp:tcp_retransmit_synack"]
    m = scrape(agent)
    assert "networkobservability_tcp_retransmission_count" in m
    # how long each plugin took to start: init compiles (never instant), start attaches; the same on /metrics
    for name in ("dns", "tcpretrans"):
        d = dbg[name]["start_durations"]
        assert set(d) == {"init_s", "start_s"} and d["init_s"] > 0 and d["start_s"] >= 0, d
    starts = {(labels["plugin"], labels["stage"]): v
              for labels, v in m["controlplane_networkobservability_plugin_start_seconds"]}
    assert starts == {(p, s[:-2]): dbg[p]["start_durations"][s] for p in ("dns", "tcpretrans")
                      for s in ("init_s", "start_s")}
    assert agent.get("/readyz")[0] == 200 and agent.get("/healthz")[0] == 200


def test_with_packetparser_in_clsact_mode():
    """dns next to packetparser on the same hooks (clsact: priorities 1 and 3): packetparser's clean-up of stale
    "retina_" programs leaves ours alone, and both see the traffic."""
    with Lab(pods=2) as lab2:
        server = DnsServer(lab2, lab2.pods[1])
        agent = AgentProcess(lab2.node_ns, {"enabledPlugin": ["packetparser", "dns"], "enableTCX": "off",
                                            "hostInterfaces": [lab2.uplink], "nodeName": "node2"}, port=10094)
        try:
            agent.start()
            from retina_exporter.datapath.tc import TcAttacher

            with TcAttacher(prefix="rdns_", netns=lab2.node_ns) as att:
                names = [(a.mode, a.prog_name) for a in att.list_attachments(lab2.pods[0].host_ifname, "ingress")]
            assert names == [("clsact", "retina_from_ep"), ("clsact", "rdns_from_ep")], names
            m0 = scrape(agent)
            got = dns_client(lab2, lab2.pods[0], {"server": lab2.pods[1].ipv6, "proto": "udp",
                                                  "queries": [["a.example", "A"], ["x.example", "A"]]})
            assert got["received"] == 2

            def node():
                m = scrape(agent)
                return tuple(value(m, n) - value(m0, n) for n in ("networkobservability_dns_request_count",
                                                                  "networkobservability_dns_response_count"))

            assert wait_for(node, (2.0, 2.0)) == (2.0, 2.0)
            assert value(scrape(agent), "controlplane_networkobservability_parsed_packets_counter") > 0
        finally:
            agent.stop()
            agent.close()
            server.stop()


def test_latency_on_metrics_and_flows(lab, agent):
    """The agent's own DNS latency: answers after 20 ms and 200 ms give two observations in
    dns_latency_seconds, and their response flows carry Hubble's l7.latency_ns (the queries' flows none)."""
    p0, p1 = lab.pods
    since = time.time()
    m0 = scrape(agent)
    got = dns_client(lab, p0, {"server": p1.ipv4, "proto": "udp",
                               "queries": [["slow20.example", "A"], ["slow200.example", "A"]]})
    assert got["received"] == 2

    def count():
        m = scrape(agent)
        return tuple(value(m, "networkobservability_dns_latency_seconds_bucket", le=le)
                     - value(m0, "networkobservability_dns_latency_seconds_bucket", le=le) for le in ("0.01", "0.1",
                                                                                                       "1.0", "+Inf"))

    # default buckets; 20 ms lands in (0.01, 0.1], 200 ms in (0.1, 1]
    assert wait_for(count, (0.0, 1.0, 2.0, 2.0)) == (0.0, 1.0, 2.0, 2.0)
    flows = [f for f in agent.flows(last=4000, since=since) if f.get("Type") == "L7"]
    latency = {f["l7"]["dns"]["query"]: int(f["l7"].get("latency_ns", 0)) for f in flows
               if f["l7"]["type"] == "RESPONSE"}
    assert set(latency) == {"slow20.example.", "slow200.example."}
    assert 20_000_000 <= latency["slow20.example."] < 100_000_000
    assert 200_000_000 <= latency["slow200.example."] < 1_000_000_000
    assert all("latency_ns" not in f["l7"] for f in flows if f["l7"]["type"] == "REQUEST")
