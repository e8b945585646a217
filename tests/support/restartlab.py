"""The restart lab's pieces, shared by tests/test_restart_lab.py and bench/bench_restart.py: the agent's config with
``bpfPinning``, the packets of the test's UDP flow packetparser reported at a pod's veth, packetforward's counters,
quiet interface counters and a condition wait."""

from __future__ import annotations

import re
import time

from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab

PORT = 9411  # the UDP flow's destination port (its source port is PORT - 1)
TIMEOUT_S = 60


def config(lab: Lab, root: str, level: str = "high", **extra) -> dict:
    return {
        "enabledPlugin": ["packetparser", "packetforward"],
        "hostInterfaces": [lab.uplink],
        "dataAggregationLevel": level,
        "conntrackReportInterval": "1s",
        "metricsIntervalDuration": "200ms",
        "bpfPinning": True,
        "bpfPinPath": root,
        **extra,
    }


def pod_packets(agent: AgentProcess, ifname: str) -> int:
    """Packets of our UDP flow that packetparser reported at the pod's veth (records + previously observed)."""
    n = 0
    for f in agent.flows(4095):
        if f.get("interface", {}).get("name") != ifname or f.get("l4", {}).get("UDP", {}).get("destination_port") != PORT:
            continue
        n += 1 + int(f.get("extensions", {}).get("value", {}).get("previously_observed_packets", 0))
    return n


def wait_for(what: str, fn, want, agent: AgentProcess):
    deadline = time.monotonic() + TIMEOUT_S
    while (got := fn()) != want:
        assert time.monotonic() < deadline, (f"{what}: {got} != {want}\n{agent.get('/debug/plugins')[1].decode()}\n"
                                             f"{agent.log()[-6000:]}")
        time.sleep(0.1)
    return got


def forward_counts(agent: AgentProcess) -> dict[str, int]:
    status, body = agent.get("/metrics")
    assert status == 200
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r'^networkobservability_forward_count\{direction="(\w+)"\} (\d+)$', body.decode(), re.M)}


def quiet_stats(lab: Lab, ifname: str) -> dict[str, int]:
    """The counters of ``ifname`` in the lab's node once they stood still for 0.3 s."""
    deadline = time.monotonic() + TIMEOUT_S
    last = lab.link_stats(lab.node_ns, ifname)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = lab.link_stats(lab.node_ns, ifname)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{ifname} never went quiet")
