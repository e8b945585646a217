"""Pod churn without leaks: the real agent (packetparser and dns, both with programs on every pod veth) in a lab's
node namespace while 500 pod veths are created and deleted in batches of 100, a little traffic on one "real" pod
of each batch. Afterwards:

* attachments: the lab's two pod veths carry exactly one program of each plugin per hook; the agent holds one BPF
  link fd per live hook (none for the 500 deleted veths) and its plugins list only the live veths; dns's
  ``seen_ifindex`` map holds only live interfaces (and their bridge);
* file descriptors and threads of the agent process are back to their baseline (taken once the agent was ready
  and idle) within ``FD_SLACK`` / ``THREAD_SLACK``;
* packetparser's conntrack map is empty once the (short, configured) lifetimes have passed;
* no ``adv_*`` series of a deleted pod is left once the (short) TTL has passed.

Each waits on its condition with a deadline (no sleeps).
"""

from __future__ import annotations

import json
import re
from collections import Counter
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from retina_exporter.datapath.tc import TcAttacher
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import BRIDGE, BRIDGE_MAC, GATEWAY4, Lab, delete_namespaces
from tests.support.agent_metrics import scrape, wait_equal
from tests.support.kube_fixtures import wait_for

VETHS = 500
BATCH = 100
TTL = "3s"
PLUGINS = {"packetparser": ("retina_from_ep", "retina_to_ep"), "dns": ("rdns_from_ep", "rdns_to_ep")}
#: Descriptors and threads the agent may hold above its baseline after the churn. pyroute2 (0.9) gives every thread
#: that uses an ``IPRoute`` its own netlink socket, kept until the ``IPRoute`` is closed: each TC attacher's clsact
#: socket (used for every pod veth) gets one in each thread that handles a veth. The baseline is taken after one
#: warm-up veth came and went, which covers the veth watchers' threads; the reconcile thread gets its own only when
#: its rescan finds a veth before the watcher does (a race under load): at most one per plugin, bounded, never
#: per veth.
FD_SLACK = len(PLUGINS)
THREAD_SLACK = 0


def ip_batch(ns: str, lines: list[str], tool: str = "ip") -> None:
    subprocess.run([tool, "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                   capture_output=True)


def fdinfo(pid: int) -> list[dict[str, str]]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        out.append({k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())})
    return out


def link_fds(pid: int) -> int:
    """TCX link descriptors the process holds (its attachments; tracepoint links such as packetparser's tcp_probe
    are not counted)."""
    return sum(1 for info in fdinfo(pid) if "link_id" in info and info.get("link_type") == "tcx")


def conntrack_entries(pid: int) -> int:
    """Entries of the process's packetparser conntrack map (found by name among the maps it holds)."""
    for info in fdinfo(pid):
        if "map_id" not in info:
            continue
        show = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", info["map_id"]],
                                         capture_output=True, text=True, check=True).stdout)
        if show.get("name") == "conntrack":
            dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", info["map_id"]], capture_output=True,
                                  text=True, check=True).stdout
            return len(json.loads(dump))
    raise AssertionError("the agent holds no conntrack map")


def socket_kinds(pid: int) -> dict[str, str]:
    """Socket inode -> its table in the process's namespace (``netlink/0`` with the netlink protocol, ``tcp``...)."""
    kinds = {}
    for table in ("netlink", "unix", "tcp", "tcp6", "udp", "udp6", "raw", "packet"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            inode = cols[-1] if table in ("netlink", "packet") else cols[9 if table.startswith(("tcp", "udp", "raw"))
                                                                              else 6]
            kinds[inode] = f"{table}/{cols[1]}" if table == "netlink" else table
    return kinds


def fd_targets(pid: int) -> Counter:
    """What the process's descriptors point at (``anon_inode:bpf-map``, ``socket:netlink/0`` ...), counted."""
    out: Counter = Counter()
    kinds = socket_kinds(pid)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        out[f"socket:{kinds.get(m.group(1), '?')}" if m else re.sub(r"\[\d+\]", "", target)] += 1
    return out


def counts(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    return len(os.listdir(f"/proc/{pid}/fd")), threads


def debug_plugins(agent) -> dict | None:
    """``/debug/plugins``; None when the agent did not answer 200 (a busy machine: the caller waits again)."""
    status, body = agent.get("/debug/plugins")
    return json.loads(body) if status == 200 else None


class TrafficPod:
    """One pod of a batch with an address, bridged like the lab's pods, that the node pings."""

    def __init__(self, lab: Lab, b: int) -> None:
        self.ns = f"rxlab-{lab.id}-tp{b}"
        self.ifname = f"ctp{b}"
        self.ip = f"10.244.0.{230 + b}"
        self.mac = f"02:00:0a:f4:00:{230 + b:02x}"
        self.name = f"churn-{b}"

    def endpoint(self, node: str) -> dict:
        return {"ips": [self.ip], "namespace": "lab", "podName": self.name, "labels": {"app": "churn"},
                "workload": {"kind": "Deployment", "name": "churn"}, "node": node}

    def create(self, lab: Lab) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        ip_batch(lab.node_ns, [f"link add {self.ifname} type veth peer name eth0 address {self.mac} netns {self.ns}",
                               f"link set {self.ifname} master {BRIDGE}", f"link set {self.ifname} up",
                               f"neigh replace {self.ip} lladdr {self.mac} dev {BRIDGE} nud permanent"])
        ip_batch(lab.node_ns, [f"fdb replace {self.mac} dev {self.ifname} master static"], tool="bridge")
        ip_batch(self.ns, ["link set lo up", "link set eth0 arp off", f"addr add {self.ip}/24 dev eth0",
                           "link set eth0 up", f"neigh replace {GATEWAY4} lladdr {BRIDGE_MAC} dev eth0 nud permanent",
                           f"route add default via {GATEWAY4} dev eth0"])

    def ping(self, lab: Lab) -> None:
        subprocess.run(["ip", "netns", "exec", lab.node_ns, "ping", "-q", "-c", "3", "-i", "0.05", "-W", "2",
                        self.ip], check=True, capture_output=True)


@pytest.fixture
def lab(tmp_path):
    with Lab(pods=2) as lab:
        pods = [TrafficPod(lab, b) for b in range(VETHS // BATCH)]
        inventory = lab.inventory()
        inventory["endpoints"] += [p.endpoint(lab.node_name) for p in pods]
        lab.inventory_path = tmp_path / "inventory.yaml"
        lab.inventory_path.write_text(yaml.safe_dump(inventory))
        lab.churn_ns = f"rxlab-{lab.id}-churn"
        lab.traffic_pods = pods
        subprocess.run(["ip", "netns", "add", lab.churn_ns], check=True)
        try:
            yield lab
        finally:
            delete_namespaces([lab.churn_ns] + [p.ns for p in pods])


def hooks(lab: Lab, ifname: str) -> dict[str, list[str]]:
    with TcAttacher(prefix="retina_", netns=lab.node_ns) as att:
        return {d: sorted(a.prog_name for a in att.list_attachments(ifname, d)) for d in ("ingress", "egress")}


def test_500_pod_veths_leave_nothing_behind(lab):
    t0 = time.monotonic()
    agent = AgentProcess(lab.node_ns, {
        "enabledPlugin": list(PLUGINS),
        "enablePodLevel": True,
        "dataAggregationLevel": "high",
        "conntrackReportInterval": "1s",
        "conntrackMapSize": 4096,
        "conntrackLifetimes": {"tcp": "2s", "synTimeout": "2s", "timeWait": "2s", "other": "2s"},
        "tcpMetrics": {"connectTimeout": "1s"},  # below synTimeout (the config check)
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "nodeName": lab.node_name,
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "forward_count", "sourceLabels": ["podname"], "ttl": TTL}]},
    }, port=10121)
    live = {p.host_ifname for p in lab.pods} | {lab.uplink}  # uplink0: a veth to the world namespace
    try:
        agent.start(timeout=120)
        pid = agent.proc.pid

        def attached() -> dict[str, set[str]] | None:
            dbg = debug_plugins(agent)
            return {name: set(dbg[name]["attached"]) for name in PLUGINS} if dbg is not None else None

        wait_for(lambda: attached() == {n: live for n in PLUGINS}, 30, "the lab's pod veths attached", interval_s=0.2)
        ip_batch(lab.node_ns, [f"link add warm0 type veth peer name warm1 netns {lab.churn_ns}"])
        wait_for(lambda: attached() == {n: live | {"warm0"} for n in PLUGINS}, 30, "the warm-up veth attached",
                 interval_s=0.2)
        ip_batch(lab.node_ns, ["link del warm0"])
        wait_for(lambda: attached() == {n: live for n in PLUGINS}, 30, "the warm-up veth forgotten", interval_s=0.2)
        base_fds, base_threads = counts(pid)
        base_targets = fd_targets(pid)
        base_links = link_fds(pid)
        assert base_links == len(live) * 2 * len(PLUGINS)

        for b, pod in enumerate(lab.traffic_pods):
            names = [f"c{b}x{i}" for i in range(BATCH - 1)]
            ip_batch(lab.node_ns, [f"link add {n} type veth peer name p{b}x{i} netns {lab.churn_ns}"
                                   for i, n in enumerate(names)] + [f"link set {n} up" for n in names])
            pod.create(lab)
            batch = live | set(names) | {pod.ifname}
            wait_for(lambda: attached() == {n: batch for n in PLUGINS}, 60, f"batch {b} attached", interval_s=0.5)
            assert link_fds(pid) == len(batch) * 2 * len(PLUGINS)
            pod.ping(lab)
            wait_for(lambda: any(s["podname"] == pod.name for s, _ in
                                   scrape(agent)["networkobservability_adv_forward_count"]),
                       20, f"{pod.name}'s series", interval_s=0.2)
            ip_batch(lab.node_ns, [f"link del {n}" for n in names])
            delete_namespaces([pod.ns])  # the pod goes, and its veth with it
            wait_for(lambda: attached() == {n: live for n in PLUGINS}, 60, f"batch {b} forgotten", interval_s=0.5)

        # Attachments: one program per plugin per hook on the live veths, a link fd for each, nothing else.
        for ifname in live:
            assert hooks(lab, ifname) == {"ingress": sorted(p[0] for p in PLUGINS.values()),
                                          "egress": sorted(p[1] for p in PLUGINS.values())}
        assert link_fds(pid) == base_links
        dns = wait_for(lambda: debug_plugins(agent), 10, "/debug/plugins", interval_s=0.2)["dns"]
        links = subprocess.run(["ip", "-n", lab.node_ns, "-j", "link", "show"], capture_output=True, text=True,
                               check=True).stdout
        index = {link["ifname"]: link["ifindex"] for link in json.loads(links)}
        assert set(dns["seen_ifindex"]) == {index[n] for n in live} | {index[BRIDGE]}

        # Descriptors and threads back to the idle baseline.
        got = wait_equal(lambda: tuple(min(0, base - now) for now, base in
                                       zip(counts(pid), (base_fds + FD_SLACK, base_threads + THREAD_SLACK))),
                         (0, 0), timeout=20)
        assert got == (0, 0), (counts(pid), base_fds, base_threads, fd_targets(pid) - base_targets)

        # Conntrack entries expire (2 s lifetimes, swept every 0.5 s) and the deleted pods' series (TTL 3 s).
        assert wait_equal(lambda: conntrack_entries(pid), 0, timeout=20) == 0
        gone = {p.name for p in lab.traffic_pods}
        assert wait_equal(lambda: sorted({s.get("podname") for name, samples in scrape(agent).items()
                                          if name.startswith("networkobservability_adv_") for s, _ in samples}
                                         & gone), [], timeout=20) == []
        assert agent.stop() == 0, agent.log()[-3000:]
        print(f"churn of {VETHS} veths: {time.monotonic() - t0:.1f} s")
    finally:
        agent.close()
