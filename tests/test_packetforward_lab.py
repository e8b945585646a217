"""packetforward end to end: the real agent in a lab's node namespace, known traffic between pods and the world
through the node's uplink, and the uplink's own counters as ground truth (rx -> ingress, tx -> egress).

The baseline is the uplink's counters before the agent starts (nothing crosses the uplink until the test sends
traffic, so every forward_* series must be 0 then); after the traffic the test waits until the uplink is quiet and
for a read of the plugin that started after its counters were taken (``/debug/plugins`` counts reads), so no
timing is assumed.
Also: packetparser on the same interface (TCX and clsact, either plugin first) with both plugins exact, clean
detach on stop, a restart after SIGKILL, and a missing host interface that fails packetforward only.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import ROOT, AgentProcess
from retina_exporter.lab.topology import Lab
from retina_exporter.datapath.tc import TcAttacher

HAS_TCX = bpfsys.kernel_has_tcx()
INTERVAL_S = 1  # metricsInterval for these agents (Retina's key, seconds)
# Until metricsInterval is wired into the config, the plugin polls at the 10 s default: wait long enough for that.
READ_TIMEOUT_S = 25


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


def forward_metrics(agent: AgentProcess) -> dict[tuple[str, str], int]:
    status, body = agent.get("/metrics")
    assert status == 200
    out = {}
    for m in re.finditer(r'^networkobservability_forward_(count|bytes)\{direction="(\w+)"\} (\d+)$', body.decode(),
                         re.M):
        out[(m.group(1), m.group(2))] = int(m.group(3))
    return out


def plugin_debug(agent: AgentProcess) -> dict:
    status, body = agent.get("/debug/plugins")
    assert status == 200
    return json.loads(body)


def wait_quiet(lab: Lab, quiet_for: float = 0.2, timeout: float = 5.0) -> dict[str, int]:
    """Wait until the uplink's counters have not moved for ``quiet_for`` seconds; return them."""
    deadline = time.monotonic() + timeout
    last = lab.link_stats(lab.node_ns, lab.uplink)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = lab.link_stats(lab.node_ns, lab.uplink)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return now
    raise AssertionError(f"{lab.uplink} never went quiet")


def settled(lab: Lab, agent: AgentProcess) -> tuple[dict[str, int], dict]:
    """The uplink's counters and the forward metrics of a read that started after they were taken, at a quiet
    moment (checked again afterwards)."""
    counters = wait_quiet(lab)
    reads = plugin_debug(agent)["packetforward"]["reads"]
    deadline = time.monotonic() + READ_TIMEOUT_S
    while plugin_debug(agent)["packetforward"]["reads"] <= reads:
        assert time.monotonic() < deadline, "packetforward did not read again"
        time.sleep(0.05)
    metrics = forward_metrics(agent)
    assert lab.link_stats(lab.node_ns, lab.uplink) == counters, "the uplink was not quiet"
    return counters, metrics


def run_traffic(lab: Lab) -> None:
    p0, p1 = lab.pods
    tcp = traffic.tcp_transfer(lab, p0, "world", nbytes=300_000, port=5301)
    tcp_in = traffic.tcp_transfer(lab, "world", p1, nbytes=120_000, port=5302)
    udp = traffic.udp_burst(lab, p1, "world", count=150, payload_size=300, dport=9301)
    udp6 = traffic.udp_burst(lab, "world", p0, count=40, payload_size=80, dport=9302, ipv6=True)
    pings = traffic.ping(lab, p0, "world", count=5)
    assert tcp.bytes_received == 300_000 and tcp_in.bytes_received == 120_000
    assert (udp.received, udp6.received, pings.received) == (150, 40, 5)


def check_exact(lab: Lab, agent: AgentProcess, c0: dict[str, int]) -> dict[str, int]:
    """``c0``: the uplink's counters taken before the agent started. Nothing crossed the uplink since, so every
    forward_* series is 0 now, whenever the plugin read. Then the traffic runs, and the forward_* values of a read
    made after it must equal the uplink's counter deltas. Returns those deltas."""
    m0 = forward_metrics(agent)
    assert lab.link_stats(lab.node_ns, lab.uplink) == c0, "the uplink was not quiet"
    assert m0 == {(k, d): 0 for k in ("count", "bytes") for d in ("ingress", "egress")}
    run_traffic(lab)
    c1, m1 = settled(lab, agent)
    want = {k: c1[k] - c0[k] for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}
    got = {
        "rx_packets": m1[("count", "ingress")],
        "rx_bytes": m1[("bytes", "ingress")],
        "tx_packets": m1[("count", "egress")],
        "tx_bytes": m1[("bytes", "egress")],
    }
    assert got == want, f"forward metrics {got} != {lab.uplink} counters {want}"
    assert c1["rx_dropped"] == c0["rx_dropped"] and c1["tx_dropped"] == c0["tx_dropped"]
    assert want["rx_packets"] >= 50 and want["tx_packets"] >= 50 and want["tx_bytes"] > 300_000, want
    return want


def attachments(lab: Lab, ifname: str) -> dict[str, list[tuple[str, str]]]:
    """Every BPF program on the interface's hooks, in execution order: {direction: [(mode, name), ...]}."""
    with TcAttacher(prefix="rpfwd_", netns=lab.node_ns) as att:
        return {d: [(a.mode, a.prog_name) for a in att.list_attachments(ifname, d)] for d in ("ingress", "egress")}


def has_clsact(lab: Lab, ifname: str) -> bool:
    out = subprocess.run(["tc", "-n", lab.node_ns, "qdisc", "show", "dev", ifname], capture_output=True,
                         text=True, check=True).stdout
    return "clsact" in out


def test_forward_metrics_equal_uplink_counters(lab):
    agent = AgentProcess(lab.node_ns, {"enabledPlugin": ["packetforward"], "hostInterfaces": [lab.uplink],
                                       "metricsInterval": INTERVAL_S})
    try:
        c0 = wait_quiet(lab)
        agent.start()
        mode = "tcx" if HAS_TCX else "clsact"
        assert attachments(lab, lab.uplink) == {"ingress": [(mode, "rpfwd_ingress")],
                                                "egress": [(mode, "rpfwd_egress")]}
        assert plugin_debug(agent)["packetforward"]["interfaces"] == {lab.uplink: [mode, mode]}
        check_exact(lab, agent, c0)
    finally:
        agent.close()
    assert attachments(lab, lab.uplink) == {"ingress": [], "egress": []}
    assert not has_clsact(lab, lab.uplink)


def flow_sums(agent: AgentProcess, ifname: str, since: float) -> dict[str, list[int]]:
    """packetparser's packets and bytes (reported + previously observed) per observation point on ``ifname``."""
    out = {"FROM_NETWORK": [0, 0], "TO_NETWORK": [0, 0]}
    for f in agent.flows(65535, since=since):
        if f.get("interface", {}).get("name") != ifname:
            continue
        ext = f.get("extensions", {}).get("value", {})
        point = out.setdefault(f["trace_observation_point"], [0, 0])
        point[0] += 1 + int(ext.get("previously_observed_packets", 0))
        point[1] += int(ext.get("bytes", 0)) + int(ext.get("previously_observed_bytes", 0))
    return out


@pytest.mark.parametrize("tcx,order", [
    ("auto", ["packetparser", "packetforward"]),
    ("off", ["packetparser", "packetforward"]),
    ("off", ["packetforward", "packetparser"]),
])
def test_coexists_with_packetparser_on_the_uplink(lab, tcx, order):
    if tcx == "auto" and not HAS_TCX:
        pytest.skip("kernel without TCX")
    had_clsact = has_clsact(lab, lab.uplink)
    agent = AgentProcess(lab.node_ns, {"enabledPlugin": order, "enableTCX": tcx, "hostInterfaces": [lab.uplink],
                                       "metricsInterval": INTERVAL_S, "outputRingCapacity": 65535})
    try:
        c0 = wait_quiet(lab)
        agent.start()
        got = attachments(lab, lab.uplink)
        if tcx == "auto":
            # TCX: each attaches at the head of the chain, so the later one runs first; both return "next".
            pp = {"ingress": ("tcx", "retina_from_net"), "egress": ("tcx", "retina_to_net")}
            fw = {"ingress": ("tcx", "rpfwd_ingress"), "egress": ("tcx", "rpfwd_egress")}
            first, second = (fw, pp) if order[0] == "packetparser" else (pp, fw)
            assert got == {d: [first[d], second[d]] for d in ("ingress", "egress")}
        else:
            # clsact: packetparser at priority 1 runs before packetforward at priority 2, whoever came first.
            assert got == {"ingress": [("clsact", "retina_from_net"), ("clsact", "rpfwd_ingress")],
                           "egress": [("clsact", "retina_to_net"), ("clsact", "rpfwd_egress")]}
            filters = subprocess.run(["tc", "-n", lab.node_ns, "filter", "show", "dev", lab.uplink, "egress"],
                                     capture_output=True, text=True, check=True).stdout
            assert re.search(r"pref 1 bpf .*handle 0x1 retina_to_net", filters, re.S)
            assert re.search(r"pref 2 bpf .*handle 0x2 rpfwd_egress", filters, re.S)

        since = time.time()
        want = check_exact(lab, agent, c0)
        # packetparser saw the same packets (all of this traffic is IP): neither program hides packets from the other.
        expect = {"FROM_NETWORK": [want["rx_packets"], want["rx_bytes"]],
                  "TO_NETWORK": [want["tx_packets"], want["tx_bytes"]]}
        deadline = time.monotonic() + 10
        while (sums := flow_sums(agent, lab.uplink, since)) != expect and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sums == expect
    finally:
        agent.close()
    # Both detached everything; a clsact qdisc one of them added is gone as well.
    assert attachments(lab, lab.uplink) == {"ingress": [], "egress": []}
    assert has_clsact(lab, lab.uplink) == had_clsact


def test_restart_after_sigkill_default_route_interface(lab):
    """hostInterfaces empty: the default route's interface (the uplink). clsact filters outlive a SIGKILLed agent;
    the next one removes them (our prefix) and attaches exactly one program per hook."""
    cfg = {"enabledPlugin": ["packetforward"], "enableTCX": "off", "metricsInterval": INTERVAL_S}
    first, second = AgentProcess(lab.node_ns, cfg), AgentProcess(lab.node_ns, cfg)
    ours = {"ingress": [("clsact", "rpfwd_ingress")], "egress": [("clsact", "rpfwd_egress")]}
    try:
        first.start()
        assert plugin_debug(first)["packetforward"]["interfaces"] == {lab.uplink: ["clsact", "clsact"]}
        first.stop(signal.SIGKILL)
        assert attachments(lab, lab.uplink) == ours  # left behind
        c0 = wait_quiet(lab)
        second.start()
        assert attachments(lab, lab.uplink) == ours  # replaced, not doubled
        check_exact(lab, second, c0)
    finally:
        first.close()
        second.close()
    assert attachments(lab, lab.uplink) == {"ingress": [], "egress": []}
    assert not has_clsact(lab, lab.uplink)


class ServingAgent(AgentProcess):
    """Started until /metrics answers (``/readyz`` stays 503 while a plugin has failed)."""

    def start(self, timeout: float = 60.0) -> "ServingAgent":
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "retina_exporter.cli", "agent",
                "--config", self._cfg.name]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, body = self.get("/readyz", timeout=1)
                if status == 200 or b"packetforward" in body:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent not serving within {timeout}s:\n{self.log()}")


def test_attach_conflict_fails_packetforward_only(lab):
    """A foreign clsact filter already holding packetforward's priority on the uplink makes packetforward fail to
    attach; linuxutil keeps running and the failure shows in /readyz and the control-plane metric. (A host
    interface that does not exist is a configuration error instead: the agent exits with status 2.)"""
    import subprocess

    node = ["ip", "netns", "exec", lab.node_ns]
    subprocess.run(node + ["tc", "qdisc", "add", "dev", lab.uplink, "clsact"], check=True)
    # A harmless classic-BPF filter (returns -1, "no verdict") at packetforward's clsact priority and handle.
    subprocess.run(node + ["tc", "filter", "add", "dev", lab.uplink, "ingress", "prio", "2", "handle", "2",
                           "bpf", "da", "bytecode", "1,6 0 0 4294967295"], check=True)
    agent = ServingAgent(lab.node_ns, {"enabledPlugin": ["packetforward", "linuxutil"], "enableTCX": "off",
                                       "hostInterfaces": [lab.uplink], "metricsInterval": INTERVAL_S})
    try:
        agent.start()
        status, body = agent.get("/readyz")
        assert status == 503
        assert "plugin packetforward failed" in body.decode()
        assert "linuxutil" not in body.decode()
        status, body = agent.get("/metrics")
        text = body.decode()
        assert status == 200
        assert 'networkobservability_tcp_state{state="LISTEN"}' in text  # linuxutil runs
        assert "networkobservability_forward_count" not in text
        assert 'plugin_manager_failed_to_reconcile{reason="packetforward"} 1' in text
        assert list(plugin_debug(agent)) == ["linuxutil"]
    finally:
        agent.close()
        subprocess.run(node + ["tc", "qdisc", "del", "dev", lab.uplink, "clsact"], check=False)
    assert attachments(lab, lab.uplink) == {"ingress": [], "egress": []}
