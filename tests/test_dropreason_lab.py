"""dropreason against real drops in a lab: nftables DROP rules, closed UDP/TCP ports, IPv4 and IPv6, and the
namespace scoping. The plugin runs in-process (its tracepoint is global; ``node_netns`` names the lab's node)
with one program compiled for the module; the last test runs the real agent in the lab's node namespace.

Ground truth: what the traffic generator sent and received, and nftables' own rule counters."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest

from metrics_module.exposition import render
from metrics_module.registry import FamilyRegistry
from retina_core import record as R
from retina_core.convert import to_proto
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab, delete_namespaces, in_netns
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.dropreason.loader import DropReasonProgram, LoadOptions
from retina_exporter.plugins.dropreason.plugin import DropReasonPlugin
from retina_exporter.plugins.dropreason.reasons import kernel_table
from retina_exporter.datapath.sysfs import ensure_tracefs
from retina_core.telemetry import ControlPlane

pytestmark = pytest.mark.skipif(subprocess.run(["which", "nft"], capture_output=True).returncode != 0,
                                reason="nftables not installed (scripts/setup.sh installs it)")

UDP_IP_OVERHEAD = {False: 20 + 8, True: 40 + 8}


@pytest.fixture(scope="module")
def program():
    ensure_tracefs()
    prog = DropReasonProgram(LoadOptions(ring_buffer_bytes=1 << 20))
    yield prog
    prog.close()


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


class ListSink:
    def __init__(self):
        self.items = []

    def write_batch(self, items):
        self.items.extend(items)


@contextlib.contextmanager
def running(program, lab, scope="node", pod_level=True):
    cfg = SimpleNamespace(enable_pod_level=pod_level, host_interfaces=(lab.uplink,), node_name="lab-node")
    ctx = PluginContext(config=cfg, flow_sink=ListSink(), telemetry=ControlPlane(), metrics=FamilyRegistry())
    plugin = DropReasonPlugin(program, scope=scope, node_netns=f"/run/netns/{lab.node_ns}")
    plugin.init(ctx)
    plugin.start()
    try:
        yield plugin, ctx
    finally:
        plugin.stop()


@pytest.fixture
def node(program, lab):
    """The plugin scoped to the lab's node and pods, with pod-level events."""
    with running(program, lab) as pc:
        yield pc


@pytest.fixture
def nft(lab):
    """Load nftables rules into lab namespaces; every table added is deleted afterwards, also on failure."""
    added: list[tuple[str, str]] = []

    def load(target, table: str, body: str) -> None:
        ns = lab.ns(target)
        added.append((ns, table))
        lab.run(ns, ["nft", "-f", "-"], input=f"table inet {table} {{\n{body}\n}}\n")

    def counter(target, table: str) -> int:
        out = lab.run(lab.ns(target), ["nft", "-j", "list", "table", "inet", table]).stdout
        return sum(item["counter"]["packets"] for item in _walk(json.loads(out)) if "counter" in item)

    load.counter = counter
    yield load
    for ns, table in added:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table], capture_output=True)


def _walk(obj):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def total(plugin, reason, direction):
    return plugin.totals().get((reason, direction), (0, 0))


def delta(before, after):
    return after[0] - before[0], after[1] - before[1]


def drops_of(ctx, src, sport, dst, dport, proto):
    """DROPPED records with this 5-tuple (addresses as text)."""
    out = []
    for r in ctx.flow_sink.items:
        fam = socket.AF_INET6 if r.ip_version == 6 else socket.AF_INET
        if (r.verdict == R.VERDICT_DROPPED and r.proto == proto and r.src_port == sport and r.dst_port == dport
                and socket.inet_ntop(fam, r.src_ip) == src and socket.inet_ntop(fam, r.dst_ip) == dst):
            out.append(r)
    return out


def send_udp(lab, target, dst, dport, count, size=60, sport=None, ipv6=False):
    """``count`` datagrams from a pod to ``dst:dport`` (no receiver needed); returns the source port."""
    ep = traffic.endpoint(lab, target)
    sport = sport or traffic.next_port()

    def send():
        s = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ep.ip(ipv6), sport))
        for _ in range(count):
            s.sendto(b"d" * size, (dst, dport))
        s.close()

    in_netns(ep.netns, send)
    return sport


# --- node level: exact counts ------------------------------------------------------------------------------


def test_nft_drop_rule_in_a_pod_counts_exactly_k_ingress(lab, node, nft):
    plugin, ctx = node
    pod0, pod1 = lab.pods
    # Every third datagram to port 9100 is dropped by a rule in pod-1's input hook.
    nft(pod1, "rxdrop_in", "chain input { type filter hook input priority 0; "
                           "udp dport 9100 numgen inc mod 3 0 counter drop; }")
    before = total(plugin, "NETFILTER_DROP", "ingress")
    res = traffic.udp_burst(lab, pod0, pod1, count=30, payload_size=100, dport=9100, drain_timeout=1)
    k = res.sent - res.received
    assert res.sent == 30 and k == 10 == nft.counter(pod1, "rxdrop_in")
    wait_for(lambda: total(plugin, "NETFILTER_DROP", "ingress")[0] - before[0] >= k, what="drop counts")
    assert delta(before, total(plugin, "NETFILTER_DROP", "ingress")) == (k, k * (100 + UDP_IP_OVERHEAD[False]))
    # The exposition carries the kernel's reason name.
    text = render(ctx.metrics.families())
    assert re.search(r'^networkobservability_drop_count\{reason="NETFILTER_DROP",direction="ingress"\} \d+$',
                     text, re.M)
    assert "# TYPE networkobservability_drop_bytes gauge" in text

    # Pod level: exactly k DROPPED records with the 5-tuple.
    nf = kernel_table().code("NETFILTER_DROP")
    recs = wait_for(lambda: (r := drops_of(ctx, pod0.ipv4, res.sport, pod1.ipv4, 9100, R.IPPROTO_UDP)) and
                    len(r) >= k and r, what="drop flows")
    time.sleep(0.1)
    recs = drops_of(ctx, pod0.ipv4, res.sport, pod1.ipv4, 9100, R.IPPROTO_UDP)
    assert len(recs) == k
    for r in recs:
        assert (r.drop_reason, r.direction, r.packets, r.bytes, r.ip_version) == (nf, R.DIR_INGRESS, 1, 128, 4)
        assert r.ifindex != 0 and r.node_name == "lab-node"
    f = to_proto(recs[0])
    assert f.verdict == R.VERDICT_DROPPED and f.event_type.type == 1 and f.drop_reason == nf
    assert (f.IP.source, f.IP.destination, f.l4.UDP.destination_port) == (pod0.ipv4, pod1.ipv4, 9100)


def test_nft_output_drop_is_egress(lab, node, nft):
    plugin, ctx = node
    pod0, pod1 = lab.pods
    nft(pod0, "rxdrop_out", "chain output { type filter hook output priority 0; udp dport 9101 counter drop; }")
    before = total(plugin, "NETFILTER_DROP", "egress")
    res = traffic.udp_burst(lab, pod0, pod1, count=5, payload_size=50, dport=9101, drain_timeout=0.5)
    assert res.send_errors == 5 and res.received == 0 == res.sent  # EPERM from the OUTPUT hook
    assert delta(before, total(plugin, "NETFILTER_DROP", "egress")) == (5, 5 * 78)
    recs = wait_for(lambda: len(drops_of(ctx, pod0.ipv4, res.sport, pod1.ipv4, 9101, R.IPPROTO_UDP)) >= 5
                    and drops_of(ctx, pod0.ipv4, res.sport, pod1.ipv4, 9101, R.IPPROTO_UDP), what="egress flows")
    assert len(recs) == 5 and all(r.direction == R.DIR_EGRESS for r in recs)


@pytest.mark.parametrize("where,family,chain,dst,direction", [
    ("node", "inet", "type filter hook forward priority 0;", "world", "ingress"),  # routed by the node
    ("node", "bridge", "type filter hook forward priority 0;", 1, "ingress"),  # bridged by the node's br0
    ("node", "ip", "type filter hook prerouting priority -300;", "world", "ingress"),
    (0, "netdev", "type filter hook egress device eth0 priority 0;", 1, "egress"),  # the sender's own device
    (1, "netdev", "type filter hook ingress device eth0 priority 0;", 1, "ingress"),
], ids=["inet-forward", "bridge-forward", "ip-prerouting", "netdev-egress", "netdev-ingress"])
def test_every_netfilter_hook_reports_netfilter_drop(lab, node, where, family, chain, dst, direction):
    """Drops in any netfilter hook (nf_hook_slow) carry NETFILTER_DROP: no kprobe on nf_hook_slow is needed."""
    plugin, ctx = node
    ns = lab.ns(where)
    port = 9610 + ["inet", "bridge", "ip", "netdev"].index(family) * 2 + (where == 1)
    lab.run(ns, ["nft", "-f", "-"], input=f"table {family} rxdrop_hook {{\nchain c {{ {chain} "
                                              f"udp dport {port} counter drop;\n}}\n}}\n")
    try:
        before = total(plugin, "NETFILTER_DROP", direction)
        res = traffic.udp_burst(lab, 0, dst, count=4, payload_size=50, dport=port, drain_timeout=0.3)
        assert res.sent == 4 and res.received == 0
        assert delta(before, total(plugin, "NETFILTER_DROP", direction)) == (4, 4 * 78)
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", family, "rxdrop_hook"],
                       capture_output=True)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_to_a_closed_port_is_no_socket(lab, node, ipv6):
    plugin, ctx = node
    pod0, pod1 = lab.pods
    before = total(plugin, "NO_SOCKET", "ingress")
    sport = send_udp(lab, pod0, pod1.ip(ipv6), 9200, count=4, size=60, ipv6=ipv6)
    size = 60 + UDP_IP_OVERHEAD[ipv6]
    wait_for(lambda: total(plugin, "NO_SOCKET", "ingress")[0] - before[0] >= 4, what="NO_SOCKET counts")
    assert delta(before, total(plugin, "NO_SOCKET", "ingress")) == (4, 4 * size)
    recs = wait_for(lambda: len(drops_of(ctx, pod0.ip(ipv6), sport, pod1.ip(ipv6), 9200, R.IPPROTO_UDP)) >= 4
                    and drops_of(ctx, pod0.ip(ipv6), sport, pod1.ip(ipv6), 9200, R.IPPROTO_UDP), what="flows")
    assert len(recs) == 4
    assert {(r.drop_reason, r.ip_version, r.bytes) for r in recs} == {
        (kernel_table().code("NO_SOCKET"), 6 if ipv6 else 4, size)}


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_syn_to_a_closed_port(lab, node, ipv6):
    plugin, ctx = node
    pod0, pod1 = lab.pods
    before = total(plugin, "NO_SOCKET", "ingress")
    cport = traffic.next_port()
    assert traffic.tcp_connect_refused(lab, pod0, pod1, 9300, ipv6=ipv6, client_port=cport)
    recs = wait_for(lambda: drops_of(ctx, pod0.ip(ipv6), cport, pod1.ip(ipv6), 9300, R.IPPROTO_TCP),
                    what="SYN drop flow")
    assert len(recs) == 1
    r = recs[0]
    assert kernel_table().name(r.drop_reason) == "NO_SOCKET"
    assert r.tcp_flags & R.TCP_SYN and not r.tcp_flags & R.TCP_ACK and r.direction == R.DIR_INGRESS
    assert total(plugin, "NO_SOCKET", "ingress")[0] - before[0] == 1


@pytest.mark.parametrize("ipv6", [False, True], ids=["icmp", "icmpv6"])
def test_icmp_echo_dropped_by_rule(lab, node, nft, ipv6):
    plugin, ctx = node
    pod0, pod1 = lab.pods
    match = "icmpv6 type echo-request" if ipv6 else "icmp type echo-request"
    nft(pod1, "rxdrop_icmp", f"chain input {{ type filter hook input priority 0; {match} counter drop; }}")
    res = traffic.ping(lab, pod0, pod1.ip(ipv6), 3, ipv6=ipv6, wait=0.2)
    assert res.sent == 3 and res.received == 0
    proto, echo = (R.IPPROTO_ICMPV6, 128) if ipv6 else (R.IPPROTO_ICMP, 8)
    recs = wait_for(lambda: len(drops_of(ctx, pod0.ip(ipv6), 0, pod1.ip(ipv6), 0, proto)) >= 3
                    and drops_of(ctx, pod0.ip(ipv6), 0, pod1.ip(ipv6), 0, proto), what="ICMP drop flows")
    assert len(recs) == 3
    assert {(kernel_table().name(r.drop_reason), r.icmp_type, r.icmp_code) for r in recs} == {
        ("NETFILTER_DROP", echo, 0)}


# --- scoping -----------------------------------------------------------------------------------------------


@pytest.fixture
def outside_ns():
    """A namespace that belongs to neither the lab's node nor its pods (only lo)."""
    name = f"rxdrout-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        delete_namespaces([name])


def closed_port_drops(ns: str, count: int) -> None:
    def send():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(count):
            s.sendto(b"x" * 10, ("127.0.0.1", 9400))
        s.close()

    in_netns(ns, send)


def test_node_scope_counts_node_and_pods_only(lab, program, outside_ns):
    with running(program, lab, scope="node", pod_level=False) as (plugin, _ctx):
        inodes = {os.stat(f"/run/netns/{n}").st_ino for n in [lab.node_ns] + [p.netns for p in lab.pods]}
        assert plugin.netns == inodes  # the world (peer of the host interface uplink0) is not a pod
        before = total(plugin, "NO_SOCKET", "ingress")
        oos = program.read_stats()["out_of_scope"]
        closed_port_drops(outside_ns, 3)
        closed_port_drops(lab.world_ns, 2)
        closed_port_drops(lab.node_ns, 1)
        assert total(plugin, "NO_SOCKET", "ingress")[0] - before[0] == 1
        assert program.read_stats()["out_of_scope"] - oos >= 5


def test_all_scope_counts_every_namespace(lab, program, outside_ns):
    with running(program, lab, scope="all", pod_level=False) as (plugin, _ctx):
        assert plugin.netns is None
        before = total(plugin, "NO_SOCKET", "ingress")
        closed_port_drops(outside_ns, 3)
        # Other namespaces on the host may drop too: at least ours are counted.
        assert total(plugin, "NO_SOCKET", "ingress")[0] - before[0] >= 3


def test_a_new_pod_enters_node_scope_on_reconcile(lab, program):
    extra = f"rxdrpod-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", extra], check=True)
    try:
        with running(program, lab, scope="node", pod_level=False) as (plugin, _ctx):
            subprocess.run(["ip", "-n", lab.node_ns, "link", "add", "vextra", "type", "veth", "peer", "name",
                            "eth0", "netns", extra], check=True)
            subprocess.run(["ip", "-n", extra, "link", "set", "lo", "up"], check=True)
            before = total(plugin, "NO_SOCKET", "ingress")
            closed_port_drops(extra, 2)
            assert total(plugin, "NO_SOCKET", "ingress") == before  # not yet in scope
            plugin.reconcile()
            assert os.stat(f"/run/netns/{extra}").st_ino in plugin.netns
            closed_port_drops(extra, 2)
            assert total(plugin, "NO_SOCKET", "ingress")[0] - before[0] == 2
    finally:
        subprocess.run(["ip", "-n", lab.node_ns, "link", "del", "vextra"], capture_output=True)
        delete_namespaces([extra])


# --- the real agent ----------------------------------------------------------------------------------------


def scrape(agent) -> dict[tuple[str, str, str], float]:
    status, body = agent.get("/metrics")
    assert status == 200
    out = {}
    for m in re.finditer(r'^(networkobservability_drop_(?:count|bytes))\{reason="([^"]+)",direction="([^"]+)"\} (\S+)$',
                         body.decode(), re.M):
        out[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return out


def test_agent_in_the_node_namespace(lab, nft, program):
    # The module's program is detached here: the agent compiles and attaches its own.
    pod0, pod1 = lab.pods
    agent = AgentProcess(lab.node_ns, {"enabledPlugin": ["dropreason"], "enablePodLevel": True,
                                       "nodeName": "lab-node"}, port=10093)
    try:
        agent.start()
        nft(pod1, "rxdrop_agent", "chain input { type filter hook input priority 0; udp dport 9500 counter drop; }")
        key = ("networkobservability_drop_count", "NETFILTER_DROP", "ingress")
        before = scrape(agent).get(key, 0)
        res = traffic.udp_burst(lab, pod0, pod1, count=7, payload_size=64, dport=9500, drain_timeout=0.5)
        assert res.sent == 7 and res.received == 0
        wait_for(lambda: scrape(agent).get(key, 0) - before >= 7, what="agent drop_count")

        def ours():
            return [f for f in agent.flows(last=4095) if f.get("verdict") == "DROPPED"
                    and f.get("l4", {}).get("UDP", {}).get("source_port") == res.sport]

        flows = wait_for(lambda: len(ours()) >= 7 and ours(), what="agent drop flows")
        assert len(flows) == 7
        f = flows[0]
        assert (f["IP"]["source"], f["IP"]["destination"], f["l4"]["UDP"]["destination_port"]) == (
            pod0.ipv4, pod1.ipv4, 9500)
        assert f["drop_reason"] == kernel_table().code("NETFILTER_DROP") and f["node_name"] == "lab-node"
        assert f["traffic_direction"] == "INGRESS"
    finally:
        agent.close()


def test_agent_pod_level_drop_metrics_with_pod_labels(lab, nft, program, tmp_path):
    """K netfilter drops in pod-1 give adv_drop_count/adv_drop_bytes{reason="NETFILTER_DROP"} of exactly K with the
    pods' inventory labels (local context: the sending and the receiving pod each get a series)."""
    pod0, pod1 = lab.pods
    inv = lab.write_inventory(tmp_path / "inventory.yaml")
    context = ["namespace", "podname", "workload"]
    agent = AgentProcess(lab.node_ns, {
        "enabledPlugin": ["dropreason"], "enablePodLevel": True, "nodeName": "lab-node",
        "enrichment": {"source": "inventory", "inventoryFile": str(inv)},
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "drop_count", "sourceLabels": context},
            {"metricName": "drop_bytes", "sourceLabels": context}]},
    }, port=10093)
    k, payload = 9, 50
    try:
        agent.start()
        nft(pod1, "rxdrop_pod", "chain input { type filter hook input priority 0; udp dport 9600 counter drop; }")
        res = traffic.udp_burst(lab, pod0, pod1, count=k, payload_size=payload, dport=9600, drain_timeout=0.5)
        assert res.sent == k and res.received == 0 and nft.counter(pod1, "rxdrop_pod") == k

        def adv():
            from prometheus_client.parser import text_string_to_metric_families

            out = {}
            for fam in text_string_to_metric_families(agent.get("/metrics")[1].decode()):
                if fam.name in ("networkobservability_adv_drop_count", "networkobservability_adv_drop_bytes"):
                    for s in fam.samples:
                        if s.labels.get("reason") == "NETFILTER_DROP":
                            key = (fam.name.rsplit("_", 1)[1], s.labels["podname"], s.labels["namespace"],
                                   s.labels["workload_kind"], s.labels["workload_name"])
                            out[key] = out.get(key, 0) + s.value
            return out

        want = {
            ("count", pod0.name, "lab", "Deployment", pod0.app): k,
            ("count", pod1.name, "lab", "Deployment", pod1.app): k,
            ("bytes", pod0.name, "lab", "Deployment", pod0.app): k * (payload + UDP_IP_OVERHEAD[False]),
            ("bytes", pod1.name, "lab", "Deployment", pod1.app): k * (payload + UDP_IP_OVERHEAD[False]),
        }
        deadline = time.monotonic() + 10
        got = adv()
        while got != want and time.monotonic() < deadline:
            time.sleep(0.1)
            got = adv()
        assert got == want
    finally:
        agent.close()
