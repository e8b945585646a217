"""Pod-level metrics end to end: the real agent in a lab's node namespace with an inventory, real traffic, and
the pods' interface counters as ground truth.

A pod's egress is counted at its own veth (the host side's rx), its ingress at its veth too (the host side's tx),
so ``adv_forward_count``/``adv_forward_bytes`` per pod and direction must equal the veth counter deltas exactly,
in both aggregation levels; in remote context each packet is counted once, at the sender's veth."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab
from tests.support.agent_metrics import scrape

REPORT_INTERVAL_S = 1
ALL_CONTEXT = ["ip", "namespace", "podname", "workload", "service", "port", "zone"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(pods=2) as lab:
        lab.inventory_path = lab.write_inventory(tmp_path_factory.mktemp("inv") / "inventory.yaml")
        yield lab


def total(samples, **match) -> float:
    return sum(v for labels, v in samples if all(labels.get(k) == want for k, want in match.items()))


def agent_config(lab, level: str, options: list[dict], remote: bool = False, **extra) -> dict:
    return {
        "enablePodLevel": True,
        "remoteContext": remote,
        "dataAggregationLevel": level,
        "conntrackReportInterval": f"{REPORT_INTERVAL_S}s",
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": "node",
        "metricsConfiguration": {"contextOptions": options},
        **extra,
    }


def run_traffic(lab, ipv6: bool):
    p0, p1 = lab.pods
    traffic.tcp_transfer(lab, p0, p1, nbytes=150_000, port=5301, ipv6=ipv6)
    traffic.udp_burst(lab, p0, p1, count=120, payload_size=80, dport=9300, ipv6=ipv6)
    traffic.udp_burst(lab, p1, p0, count=30, payload_size=20, dport=9301, ipv6=ipv6)
    traffic.ping(lab, p1, p0.ip(ipv6), count=4, ipv6=ipv6)


def wait_equal(read, want, timeout):
    deadline = time.monotonic() + timeout
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.3)
        got = read()
    return got


@pytest.mark.parametrize("level,ipv6", [("low", False), ("high", False), ("high", True)])
def test_local_context_equals_interface_counters(lab, level, ipv6):
    options = [
        {"metricName": "forward_count", "sourceLabels": ALL_CONTEXT},
        {"metricName": "forward_bytes", "sourceLabels": ["podname"]},
        {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]},
    ]
    agent = AgentProcess(lab.node_ns, agent_config(lab, level, options))
    try:
        agent.start()
        time.sleep(2.5 * REPORT_INTERVAL_S)  # everything before the baseline is reported before it
        before_m = scrape(agent)
        before_c = {p.name: lab.host_stats(p) for p in lab.pods}
        run_traffic(lab, ipv6)
        after_c = {p.name: lab.host_stats(p) for p in lab.pods}

        want = {}
        for p in lab.pods:
            b, a = before_c[p.name], after_c[p.name]
            want[(p.name, "egress")] = (a["rx_packets"] - b["rx_packets"], a["rx_bytes"] - b["rx_bytes"])
            want[(p.name, "ingress")] = (a["tx_packets"] - b["tx_packets"], a["tx_bytes"] - b["tx_bytes"])

        def read():
            m = scrape(agent)
            out = {}
            for (pod, direction) in want:
                c = total(m["networkobservability_adv_forward_count"], podname=pod, direction=direction) - total(
                    before_m["networkobservability_adv_forward_count"], podname=pod, direction=direction)
                b = total(m["networkobservability_adv_forward_bytes"], podname=pod, direction=direction) - total(
                    before_m["networkobservability_adv_forward_bytes"], podname=pod, direction=direction)
                out[(pod, direction)] = (int(c), int(b))
            return out

        got = wait_equal(read, want, 2 * REPORT_INTERVAL_S + 4)
        assert got == want
        assert all(v[0] >= 30 for v in want.values()), want

        m = scrape(agent)
        # Labels: identity from the inventory, zone from the node, workload = the Deployment.
        p0 = lab.pods[0]
        series = [lbl for lbl, _ in m["networkobservability_adv_forward_count"]
                  if lbl["podname"] == p0.name and lbl["direction"] == "egress"]
        assert series, m["networkobservability_adv_forward_count"]
        for lbl in series:
            assert lbl["ip"] == p0.ip(ipv6)
            assert (lbl["namespace"], lbl["workload_kind"], lbl["workload_name"], lbl["zone"]) == (
                "lab", "Deployment", p0.app, "lab-zone-a")
        # TCP flags of the one connection, seen from pod 0 (it sent SYN and FIN, received SYN-ACK and FIN).
        flags = {f: total(m["networkobservability_adv_tcpflags_count"], podname=p0.name, flag=f)
                 - total(before_m["networkobservability_adv_tcpflags_count"], podname=p0.name, flag=f)
                 for f in ("SYN", "SYNACK", "FIN", "RST")}
        assert flags == {"SYN": 1, "SYNACK": 1, "FIN": 2, "RST": 0}
    finally:
        agent.close()


def test_remote_context_counts_each_packet_once(lab):
    options = [{"metricName": "forward_count", "sourceLabels": ["podname"], "destinationLabels": ["podname"]}]
    agent = AgentProcess(lab.node_ns, agent_config(lab, "high", options, remote=True))
    try:
        agent.start()
        time.sleep(2.5 * REPORT_INTERVAL_S)
        before_m = scrape(agent)
        before_c = {p.name: lab.host_stats(p) for p in lab.pods}
        run_traffic(lab, ipv6=False)
        after_c = {p.name: lab.host_stats(p) for p in lab.pods}
        # Pod-to-pod only: every packet a pod sent (its veth's rx) is counted once, under its source_podname.
        want = {p.name: after_c[p.name]["rx_packets"] - before_c[p.name]["rx_packets"] for p in lab.pods}

        def read():
            m = scrape(agent)["networkobservability_adv_forward_count"]
            b = before_m["networkobservability_adv_forward_count"]
            return {p.name: int(total(m, source_podname=p.name) - total(b, source_podname=p.name)) for p in lab.pods}

        assert wait_equal(read, want, 2 * REPORT_INTERVAL_S + 4) == want
        m = scrape(agent)["networkobservability_adv_forward_count"]
        directions = {lbl["direction"] for lbl, _ in m if lbl["source_podname"] == lab.pods[0].name}
        assert directions <= {"EGRESS", "INGRESS"} and "EGRESS" in directions
    finally:
        agent.close()


def test_inventory_changes_relabel_and_malformed_keeps_cache(lab, tmp_path):
    inv = tmp_path / "inventory.yaml"
    data = lab.inventory()
    inv.write_text(yaml.safe_dump(data))
    options = [{"metricName": "forward_count", "sourceLabels": ["podname"]}]
    cfg = agent_config(lab, "low", options)
    cfg["enrichment"]["inventoryFile"] = str(inv)
    agent = AgentProcess(lab.node_ns, cfg)
    p0, p1 = lab.pods

    def ipcache_name(ip):
        return json.loads(agent.get("/debug/ipcache")[1])["ips"].get(ip, {}).get("pod_name")

    def wait(cond, timeout=10):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.1)
        return cond()

    try:
        agent.start()
        assert ipcache_name(p0.ipv4) == p0.name
        # Rename pod 0 in the inventory: new traffic carries the new name.
        data["endpoints"][0]["podName"] = "renamed-0"
        inv.write_text(yaml.safe_dump(data))
        assert wait(lambda: ipcache_name(p0.ipv4) == "renamed-0")
        traffic.ping(lab, p0, p1.ipv4, count=3)
        assert wait(lambda: total(scrape(agent)["networkobservability_adv_forward_count"],
                                  podname="renamed-0", direction="egress") == 3)
        # A malformed inventory is reported and the last good cache stays.
        inv.write_text("endpoints: [ {ips: [not-an-ip]} ]\n")
        assert wait(lambda: total(
            scrape(agent)["controlplane_networkobservability_enrichment_reload_errors_counter"]) == 1)
        assert ipcache_name(p0.ipv4) == "renamed-0"
        assert agent.get("/readyz")[0] == 200
    finally:
        agent.close()


def test_netns_source_names_pods(lab):
    # Only this lab's pods: other labs (same address plan) may exist on a shared machine.
    cfg = {"enablePodLevel": True, "nodeName": "node",
           "enrichment": {"source": "netns", "netnsFilter": [f"rxlab-{lab.id}-pod*"]}}
    agent = AgentProcess(lab.node_ns, cfg)
    try:
        agent.start()
        deadline = time.monotonic() + 10
        ips = {}
        while time.monotonic() < deadline:
            ips = json.loads(agent.get("/debug/ipcache")[1])["ips"]
            if all(p.ipv4 in ips for p in lab.pods):
                break
            time.sleep(0.2)
        for p in lab.pods:
            assert ips[p.ipv4]["pod_name"] == p.netns
            assert ips[p.ipv6]["pod_name"] == p.netns
    finally:
        agent.close()


def test_metrics_configuration_reload_at_run_time(lab):
    options = [{"metricName": "forward_count", "sourceLabels": ["podname"]}]
    agent = AgentProcess(lab.node_ns, agent_config(lab, "low", options))
    p0, p1 = lab.pods
    path = agent._cfg.name

    def rewrite(opts):
        cfg = yaml.safe_load(open(path))
        cfg["metricsConfiguration"] = {"contextOptions": opts}
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)

    def wait(cond, timeout=10):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.1)
        return cond()

    try:
        agent.start()
        traffic.ping(lab, p0, p1.ipv4, count=2)
        assert wait(lambda: total(scrape(agent)["networkobservability_adv_forward_count"],
                                  podname=p0.name, direction="egress") == 2)
        # Same label set kept + a new metric: the count survives the reload.
        rewrite(options + [{"metricName": "forward_bytes", "sourceLabels": ["podname", "namespace"]}])
        assert wait(lambda: '"forward_bytes"' in json.dumps(json.loads(agent.get("/debug/config")[1])))
        traffic.ping(lab, p0, p1.ipv4, count=2)
        assert wait(lambda: total(scrape(agent)["networkobservability_adv_forward_count"],
                                  podname=p0.name, direction="egress") == 4)
        m = scrape(agent)
        assert {lbl["namespace"] for lbl, _ in m["networkobservability_adv_forward_bytes"]} == {"lab"}
        # An invalid configuration is rejected and counted; the running one stays.
        rewrite([{"metricName": "forward_count", "sourceLabels": ["pod"]}])
        assert wait(lambda: total(scrape(agent)["controlplane_networkobservability_config_reload_errors_counter"]) == 1)
        assert "networkobservability_adv_forward_bytes" in scrape(agent)
        assert agent.proc.poll() is None
    finally:
        agent.close()


def test_interzone_bytes_equal_the_senders_veth_counters(lab, tmp_path):
    """Pod 1 placed on a node of another zone (inventory): everything pod 0 sends goes to pod 1, so the inter-zone
    bytes and packets zone a -> zone b equal pod 0's veth rx deltas exactly; pod 1's packets are counted by its
    own node (not here)."""
    data = lab.inventory()
    data["endpoints"][1]["node"] = "node-b"
    data["nodes"].append({"name": "node-b", "zone": "lab-zone-b"})
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump(data))
    options = [{"metricName": "interzone_bytes"}, {"metricName": "interzone_count"}]
    cfg = agent_config(lab, "high", options)
    cfg["enrichment"]["inventoryFile"] = str(inv)
    agent = AgentProcess(lab.node_ns, cfg)
    p0 = lab.pods[0]
    zones = {"source_zone": "lab-zone-a", "destination_zone": "lab-zone-b"}
    try:
        agent.start()
        time.sleep(2.5 * REPORT_INTERVAL_S)
        before_m = scrape(agent)
        before_c = lab.host_stats(p0)
        run_traffic(lab, ipv6=False)
        after_c = lab.host_stats(p0)
        want = (after_c["rx_packets"] - before_c["rx_packets"], after_c["rx_bytes"] - before_c["rx_bytes"])

        def read():
            m = scrape(agent)
            return tuple(int(total(m[f], **zones) - total(before_m[f], **zones))
                         for f in ("networkobservability_adv_interzone_count", "networkobservability_adv_interzone_bytes"))

        assert wait_equal(read, want, 2 * REPORT_INTERVAL_S + 4) == want
        assert want[0] >= 100, want
        m = scrape(agent)
        assert {tuple(sorted(lbl.items())) for lbl, _ in m["networkobservability_adv_interzone_bytes"]} == {
            tuple(sorted(zones.items()))}
    finally:
        agent.close()


def test_series_leave_with_their_pod_and_a_reused_address_starts_from_zero(lab, tmp_path):
    """Inventory source: pod 1 removed from the inventory takes its series with it after podDeletionGrace; a new
    pod given pod 1's addresses counts exactly its own packets (its veth's counters since it appeared), nothing of
    the old pod's."""
    inv = tmp_path / "inventory.yaml"
    data = lab.inventory()
    inv.write_text(yaml.safe_dump(data))
    cfg = agent_config(lab, "low", [{"metricName": "forward_count", "sourceLabels": ["ip"]}])
    cfg["metricsConfiguration"]["podDeletionGrace"] = "1s"
    cfg["enrichment"]["inventoryFile"] = str(inv)
    agent = AgentProcess(lab.node_ns, cfg)
    p0, p1 = lab.pods

    def count(ip, direction):
        return int(total(scrape(agent)["networkobservability_adv_forward_count"], ip=ip, direction=direction))

    def has_series(ip):
        return any(lbl["ip"] == ip for lbl, _ in scrape(agent)["networkobservability_adv_forward_count"])

    def ipcache_name(ip):
        return json.loads(agent.get("/debug/ipcache")[1])["ips"].get(ip, {}).get("pod_name")

    try:
        agent.start()
        before = lab.host_stats(p1)
        traffic.udp_burst(lab, p0, p1, count=40, payload_size=60, dport=9310)
        want_old = lab.host_stats(p1)["tx_packets"] - before["tx_packets"]
        assert wait_equal(lambda: count(p1.ipv4, "ingress"), want_old, 10) == want_old >= 40
        egress0 = count(p0.ipv4, "egress")

        removed = {**data, "endpoints": [data["endpoints"][0]]}
        inv.write_text(yaml.safe_dump(removed))
        assert wait_equal(lambda: has_series(p1.ipv4), False, 15) is False
        assert count(p0.ipv4, "egress") == egress0  # the other pod's series stay

        reused = {**data, "endpoints": [data["endpoints"][0], {**data["endpoints"][1], "podName": "newcomer-0"}]}
        inv.write_text(yaml.safe_dump(reused))
        assert wait_equal(lambda: ipcache_name(p1.ipv4), "newcomer-0", 10) == "newcomer-0"
        before = lab.host_stats(p1)
        traffic.udp_burst(lab, p0, p1, count=25, payload_size=60, dport=9311)
        want_new = lab.host_stats(p1)["tx_packets"] - before["tx_packets"]
        assert wait_equal(lambda: count(p1.ipv4, "ingress"), want_new, 10) == want_new >= 25
    finally:
        agent.close()
