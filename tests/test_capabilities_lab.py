"""Least privilege, end to end: the real agent (``retina-exporter agent`` in a lab's node namespace) runs under
``capsh`` with exactly the capabilities its plugins declare (``Plugin.capabilities``, the table in
docs/deploy.md) and counts real lab traffic exactly; with any one of them missing it exits with status 2 and its
error line names the missing capability and the plugins that need it.

The launcher mounts tracefs and bpffs first (as the DaemonSet mounts the host's: mounting needs CAP_SYS_ADMIN),
then ``capsh --drop`` shrinks the bounding set, so the agent (uid 0) gets exactly the kept capabilities at exec.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from retina_exporter.agent import PLUGINS, build_plugins
from retina_exporter.config import Config
from retina_exporter.datapath.capabilities import CAPABILITY_BITS
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab
from test_dns_support import DnsServer, dns_client
from test_dropreason_lab import send_udp
from tests.support.agent_metrics import scrape, value, wait_equal

ROOT = Path(__file__).resolve().parents[1]
MOUNTS = "mount -t tracefs tracefs /sys/kernel/tracing && mount -t bpf bpf /sys/fs/bpf && exec \"$@\""


def declared(plugins) -> set[str]:
    return {c for p in build_plugins(Config(enabled_plugins=tuple(plugins))) for c in p.capabilities}


def bounding_set() -> list[str]:
    """This process's bounding set as capsh names (``cap_bpf`` ...)."""
    hexmask = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("CapBnd:"))
    out = subprocess.run(["capsh", f"--decode={hexmask}"], capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1].split(",")


def launcher(keep: set[str]) -> list[str]:
    """argv between ``ip netns exec NS`` and the interpreter: mount, then exec the interpreter with only ``keep``
    (``CAP_*`` names) left in the bounding set."""
    drop = [c for c in bounding_set() if c.upper() not in keep]
    return ["sh", "-c", MOUNTS, "sh", "capsh", f"--drop={','.join(drop)}", "--", "-c", 'exec "$0" "$@"']


def effective(pid: int) -> set[str]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("CapEff:"))
    mask = int(line.split()[1], 16)
    return {name for name, bit in CAPABILITY_BITS.items() if mask & (1 << bit)} | (
        {"other"} if mask & ~sum(1 << b for b in CAPABILITY_BITS.values()) else set())


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(pods=2) as lab:
        lab.inventory_path = lab.write_inventory(tmp_path_factory.mktemp("inv") / "inventory.yaml")
        yield lab


# --- what each plugin set counts, under exactly its capabilities --------------------------------------------------


def count_packetparser(lab, agent, c0):
    """adv_forward_count per pod and direction equals the pod veths' counter deltas since before the agent."""
    p0, p1 = lab.pods
    traffic.udp_burst(lab, p0, p1, count=40, payload_size=100, dport=9310)
    traffic.ping(lab, p1, p0.ipv4, count=3)
    want = {}
    for p in lab.pods:
        b, a = c0[p.name], lab.host_stats(p)
        want[(p.name, "egress")] = a["rx_packets"] - b["rx_packets"]
        want[(p.name, "ingress")] = a["tx_packets"] - b["tx_packets"]
    assert want[(p0.name, "egress")] >= 43, want

    def read():
        m = scrape(agent)
        return {k: int(value(m, "networkobservability_adv_forward_count", podname=k[0], direction=k[1]))
                for k in want}

    assert wait_equal(read, want) == want


def count_dns(lab, agent, c0):
    """4 queries between two pods: dns_request_count and dns_response_count move by exactly 4."""
    m0 = scrape(agent)
    queries = [["a.example", "A"], ["a.example", "A"], ["aaaa.example", "AAAA"], ["missing.example", "A"]]
    server = DnsServer(lab, lab.pods[1])
    try:
        got = dns_client(lab, lab.pods[0], {"server": lab.pods[1].ipv4, "proto": "udp", "queries": queries})
    finally:
        server.stop()
    assert got["received"] == 4

    def read():
        m = scrape(agent)
        return tuple(value(m, f"networkobservability_dns_{k}_count") - value(m0, f"networkobservability_dns_{k}_count")
                     for k in ("request", "response"))

    assert wait_equal(read, (4.0, 4.0)) == (4.0, 4.0)


def count_drops(lab, agent, c0):
    """4 datagrams to a closed port of a pod: drop_count{reason=NO_SOCKET, direction=ingress} moves by exactly 4."""
    p0, p1 = lab.pods
    name = "networkobservability_drop_count"
    before = value(scrape(agent), name, reason="NO_SOCKET", direction="ingress")
    send_udp(lab, p0, p1.ipv4, 9211, count=4)
    assert wait_equal(lambda: value(scrape(agent), name, reason="NO_SOCKET", direction="ingress") - before,
                      4.0) == 4.0


def count_linuxutil(lab, agent, c0):
    """No capability at all: linuxutil still reads the node's sockets (the agent's own listener among them)."""
    assert value(scrape(agent), "networkobservability_tcp_state", state="LISTEN") >= 1


CASES = {
    "packetparser": (["packetparser"], count_packetparser),
    "dns+packetforward": (["dns", "packetforward"], count_dns),
    "dropreason+tcpretrans": (["dropreason", "tcpretrans"], count_drops),
    "linuxutil": (["linuxutil"], count_linuxutil),
}
PORTS = iter(range(10310, 10400))


def agent_config(lab, plugins) -> dict:
    return {
        "enabledPlugin": plugins,
        "enablePodLevel": True,
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": "node",
        "conntrackReportInterval": "1s",
        "dropReason": {"scope": "node"},  # drops of this lab only, whatever runs next to it
        "metricsConfiguration": {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"]}]},
    }


def test_the_documented_table_is_what_the_plugins_declare():
    """docs/deploy.md's capability column is Plugin.capabilities, for every plugin."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    documented = {}
    for m in re.finditer(r"^\| (\w+) \| [^|]+ \| ([^|]+) \|", text, re.M):
        if m.group(1) in PLUGINS:
            documented[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    assert documented == {name: {c.removeprefix("CAP_") for c in declared([name])} for name in PLUGINS}


def test_the_chart_grants_what_its_default_plugins_declare():
    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    plugins = values["agent"]["config"]["enabledPlugin"]
    assert set(values["agent"]["capabilities"]) == {c.removeprefix("CAP_") for c in declared(plugins)}


@pytest.mark.parametrize("case", list(CASES))
def test_exactly_the_declared_capabilities_suffice(lab, case):
    plugins, count = CASES[case]
    keep = declared(plugins)
    lab.wait_quiet()
    c0 = {p.name: lab.host_stats(p) for p in lab.pods}
    agent = AgentProcess(lab.node_ns, agent_config(lab, plugins), port=next(PORTS), prefix=launcher(keep))
    try:
        agent.start(timeout=120)  # ready: every plugin started (/readyz is 503 when one failed)
        assert effective(agent.proc.pid) == keep
        count(lab, agent, c0)
        assert agent.stop() == 0, agent.log()[-3000:]
    finally:
        agent.close()


@pytest.mark.parametrize("case,missing", [(c, cap) for c, (plugins, _) in CASES.items()
                                          for cap in sorted(declared(plugins))])
def test_one_missing_capability_exits_2_naming_it(lab, case, missing):
    plugins, _ = CASES[case]
    keep = declared(plugins) - {missing}
    agent = AgentProcess(lab.node_ns, agent_config(lab, plugins), port=next(PORTS), prefix=launcher(keep))
    try:
        with pytest.raises(RuntimeError, match="agent exited with 2"):
            agent.start(timeout=120)
        line = agent.log().strip().splitlines()[-1]
        needing = [p for p in plugins if missing in declared([p])]
        alt = " (or CAP_SYS_ADMIN)" if missing in ("CAP_BPF", "CAP_PERFMON") else ""
        assert line.startswith("retina-exporter: error: missing capabilities"), line
        assert f"{missing}{alt} for {', '.join(needing)}" in line, line
        assert set(re.findall(r"CAP_\w+", line)) == ({missing, "CAP_SYS_ADMIN"} if alt else {missing}), line
    finally:
        agent.close()
