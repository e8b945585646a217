"""Restart without a gap (``bpfPinning``): the real agent in a lab's node namespace with packetparser (pod veths and
the uplink) and packetforward (the uplink), known UDP traffic before, during and after a restart by SIGTERM or
SIGKILL, and the interfaces' own counters as ground truth.

* one attachment per hook: before and after the restart every hook holds exactly our one program per plugin, on
  the *same* TCX link (the pinned one, adopted) running the *new* program (``BPF_LINK_UPDATE``);
* no gap: packets sent while no agent runs are still observed in the kernel (the link stays) and reported by the
  restarted agent: from the pinned conntrack (``high`` aggregation: unreported counts) or the pinned ring buffer
  (``low``: one record per packet, written while nobody read);
* exact totals: per-record packets = what the old agent had reported at its last (settled) look + what the new
  one reports, equal to the packets the pod sent (its veth's rx counter), each packet once; the kernel-held
  packetforward counters continue across the restart and equal the uplink's counter deltas since the first start;
* a changed map layout (another ``conntrackMapSize``) replaces the old pins and links cleanly; ``retina-exporter
  cleanup --pins`` detaches the pinned links and removes the pins.

Every test pins under its own bpffs mount (conftest's ``pin_root``: agents of other tests never see it), which
detaches whatever is pinned there and unmounts it, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.tc import TcAttacher
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import ROOT, AgentProcess
from retina_exporter.lab.topology import Lab, in_netns
from tests.support.restartlab import PORT, TIMEOUT_S, config, forward_counts, pod_packets, quiet_stats, wait_for

HAS_TCX = bpfsys.kernel_has_tcx()
needs_tcx = pytest.mark.skipif(not HAS_TCX, reason="TCX links need kernel >= 6.6")
PACKETS = (40, 25, 30)  # before, while down, after the restart
STREAM = 1000  # packets of the paced stream through a restart (at least 10 s)


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


@pytest.fixture
def clean_hooks(lab):
    """Whatever a test leaves on the lab's hooks (clsact filters outlive their agent on purpose) goes afterwards."""
    yield
    for ifname in interfaces(lab):
        subprocess.run(["tc", "-n", lab.node_ns, "qdisc", "del", "dev", ifname, "clsact"], capture_output=True)


def interfaces(lab: Lab) -> list[str]:
    return [lab.uplink] + [p.host_ifname for p in lab.pods]


def hooks(lab: Lab) -> dict[tuple[str, str], list[tuple[str, str, int]]]:
    """Every BPF program on the lab node's hooks: {(ifname, direction): sorted [(mode, name, prog id), ...]}."""
    with TcAttacher(netns=lab.node_ns) as att:
        return {(i, d): sorted((a.mode, a.prog_name, a.prog_id) for a in att.list_attachments(i, d))
                for i in interfaces(lab) for d in ("ingress", "egress")}


def links(lab: Lab) -> dict[tuple[str, str], list[int]]:
    """The TCX link ids on the lab node's hooks."""
    def query():
        return {(i, d): sorted(link for _, link in bpfsys.prog_query(socket.if_nametoindex(i), kind))
                for i in interfaces(lab)
                for d, kind in (("ingress", bpfsys.BPF_TCX_INGRESS), ("egress", bpfsys.BPF_TCX_EGRESS))}

    return in_netns(lab.node_ns, query)


def names(h) -> dict:
    return {hook: [(mode, name) for mode, name, _ in progs] for hook, progs in h.items()}


def expected_names(lab: Lab, mode: str) -> dict:
    want = {(lab.uplink, "ingress"): [(mode, "retina_from_net"), (mode, "rpfwd_ingress")],
            (lab.uplink, "egress"): [(mode, "retina_to_net"), (mode, "rpfwd_egress")]}
    for p in lab.pods:
        want[(p.host_ifname, "ingress")] = [(mode, "retina_from_ep")]
        want[(p.host_ifname, "egress")] = [(mode, "retina_to_ep")]
    return want


def send(lab: Lab, count: int) -> None:
    p0 = lab.pods[0]
    res = traffic.udp_burst(lab, p0, "world", count=count, payload_size=100, sport=PORT - 1, dport=PORT)
    assert res.received == count, res


def start_first(lab: Lab, root: str, level: str = "high", mode: str = "tcx", **extra):
    """Agent one, the hooks it made, its report of ``PACKETS[0]`` packets at the pod's veth."""
    agent = AgentProcess(lab.node_ns, config(lab, root, level, enableTCX="auto" if mode == "tcx" else "off", **extra))
    agent.start()
    before = hooks(lab)
    assert names(before) == expected_names(lab, mode)
    send(lab, PACKETS[0])
    reported = wait_for("the first agent's packets", lambda: pod_packets(agent, lab.pods[0].host_ifname),
                        PACKETS[0], agent)
    return agent, before, reported


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("level,mode", [pytest.param("high", "tcx", marks=needs_tcx),
                                        pytest.param("low", "tcx", marks=needs_tcx),
                                        ("high", "clsact")])
def test_restart_keeps_attachments_and_counts(lab, pin_root, clean_hooks, level, mode, sig):
    veth = lab.pods[0].host_ifname
    v0, u0 = quiet_stats(lab, veth), quiet_stats(lab, lab.uplink)
    second = AgentProcess(lab.node_ns, config(lab, pin_root, level, enableTCX="auto" if mode == "tcx" else "off"))
    first = None
    try:
        first, before, reported_first = start_first(lab, pin_root, level, mode)
        links_before = links(lab) if mode == "tcx" else None
        assert first.stop(sig) == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        assert hooks(lab) == before  # still attached, still the first agent's programs: observing

        send(lab, PACKETS[1])  # nobody reads: the kernel keeps them (conntrack or ring buffer)
        second.start()
        after = hooks(lab)
        assert names(after) == expected_names(lab, mode)  # exactly one of ours per hook
        for hook, progs in after.items():  # running the new programs
            assert not {p for _, _, p in progs} & {p for _, _, p in before[hook]}, hook
        if mode == "tcx":
            assert links(lab) == links_before  # on the pinned links
        assert "removed stale" not in second.log()  # taken over (link update, filter replaced in place)

        send(lab, PACKETS[2])
        reported_second = wait_for("the second agent's packets", lambda: pod_packets(second, veth),
                                   PACKETS[1] + PACKETS[2], second)
        v1 = quiet_stats(lab, veth)
        assert reported_first + reported_second == sum(PACKETS) == v1["rx_packets"] - v0["rx_packets"]

        u1 = quiet_stats(lab, lab.uplink)
        want = {"ingress": u1["rx_packets"] - u0["rx_packets"], "egress": u1["tx_packets"] - u0["tx_packets"]}
        assert want["egress"] == sum(PACKETS)
        wait_for("packetforward's counters (kernel-held, across the restart)", lambda: forward_counts(second), want,
                 second)
        assert pod_packets(second, veth) == PACKETS[1] + PACKETS[2]  # nothing reported twice, late
    finally:
        if first is not None:
            first.close()
        second.close()


def pin_dirs(root: str) -> dict[str, list[str]]:
    return {plugin: sorted(os.listdir(os.path.join(root, plugin))) for plugin in sorted(os.listdir(root))}


@needs_tcx
def test_layout_change_replaces_the_pins(lab, pin_root):
    """Another conntrackMapSize is another packetparser map layout: the restarted agent removes the old pins and
    links (its unreported counts go with them) and starts fresh, one attachment per hook; packetforward's layout
    did not change, so its pins are taken over as in any restart."""
    veth = lab.pods[0].host_ifname
    second = AgentProcess(lab.node_ns, config(lab, pin_root, conntrackMapSize=8192))
    first = None
    try:
        first, before, _ = start_first(lab, pin_root, conntrackMapSize=4096)
        dirs_before, links_before = pin_dirs(pin_root), links(lab)
        first.stop(signal.SIGKILL)
        send(lab, PACKETS[1])  # counted in the old conntrack, which the new layout discards
        second.start()
        dirs_after, links_after = pin_dirs(pin_root), links(lab)
        assert names(hooks(lab)) == expected_names(lab, "tcx")
        assert dirs_after["packetforward"] == dirs_before["packetforward"]
        assert len(dirs_after["packetparser"]) == 1 and dirs_after["packetparser"] != dirs_before["packetparser"]
        assert "pinned objects of another program layout" in second.log()
        for hook, ids in links_after.items():
            old_parser = [i for i in links_before[hook] if i not in links_after[hook]]
            if hook[0] == lab.uplink:  # packetforward kept its link, packetparser's was replaced
                assert len(old_parser) == 1 and len(set(ids) & set(links_before[hook])) == 1, hook
            else:
                assert len(old_parser) == 1 and not set(ids) & set(links_before[hook]), hook
        send(lab, PACKETS[2])
        wait_for("the new layout's packets", lambda: pod_packets(second, veth), PACKETS[2], second)
    finally:
        if first is not None:
            first.close()
        second.close()


@needs_tcx
def test_cleanup_removes_links_and_pins(lab, pin_root):
    """SIGTERM leaves the pinned links attached; ``retina-exporter cleanup --pins`` detaches them and removes the
    pins, and says how many."""
    first = None
    try:
        first, before, _ = start_first(lab, pin_root)
        assert first.stop(signal.SIGTERM) == 0
        assert hooks(lab) == before
        n_links = sum(len(v) for v in links(lab).values())
        out = subprocess.run([sys.executable, "-m", "retina_exporter.cli", "cleanup", "--pins", "--bpf-pin-path",
                              pin_root], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{pin_root}: {n_links} pinned links detached, ")
        assert n_links == 8
        assert all(progs == [] for progs in hooks(lab).values())
        assert not os.path.exists(pin_root)
    finally:
        if first is not None:
            first.close()


def conntrack_gauges(agent: AgentProcess) -> dict[str, int]:
    status, body = agent.get("/metrics")
    assert status == 200
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(
        r'^networkobservability_conntrack_(packets_tx|packets_rx|total_connections) (\S+)$', body.decode(), re.M)}


def sweeps(agent: AgentProcess) -> int:
    status, body = agent.get("/debug/plugins")
    assert status == 200
    return json.loads(body)["packetparser"]["sweeps"]


@needs_tcx
def test_traffic_through_a_sigkill(lab, pin_root):
    """A paced UDP stream runs while the agent is killed and another one starts. Kernel-held totals are exact:
    packetforward's counters and the conntrack totals equal the interfaces' counters. Per record: nothing is
    reported twice (the old agent's last look + the new agent's reports <= the packets sent), and every packet
    after the old agent died is reported by the new one; only records the old agent read after its last look
    can be missing (docs/architecture.md, "Restarts")."""
    veth = lab.pods[0].host_ifname
    v0, u0 = quiet_stats(lab, veth), quiet_stats(lab, lab.uplink)
    cfg = config(lab, pin_root, enableConntrackMetrics=True)
    first, second = AgentProcess(lab.node_ns, cfg), AgentProcess(lab.node_ns, cfg)
    stream = {}
    sender = threading.Thread(target=lambda: stream.update(r=traffic.udp_burst(
        lab, lab.pods[0], "world", count=STREAM, payload_size=100, sport=PORT - 1, dport=PORT, interval=0.01)))
    try:
        first.start()
        sender.start()
        wait_for("the stream at the first agent", lambda: pod_packets(first, veth) > 0, True, first)
        last_look = pod_packets(first, veth)
        first.stop(signal.SIGKILL)
        v_kill = lab.link_stats(lab.node_ns, veth)["rx_packets"] - v0["rx_packets"]
        second.start()
        sender.join(timeout=TIMEOUT_S)
        assert stream["r"].received == STREAM, stream
        assert v_kill < STREAM, "the stream ended before the agent was killed: make it longer"
        v1, u1 = quiet_stats(lab, veth), quiet_stats(lab, lab.uplink)
        sent = v1["rx_packets"] - v0["rx_packets"]
        assert sent == STREAM == u1["tx_packets"] - u0["tx_packets"]
        want = {"ingress": u1["rx_packets"] - u0["rx_packets"], "egress": sent}
        wait_for("packetforward's counters", lambda: forward_counts(second), want, second)
        done = sweeps(second) + 3  # quiet for > conntrackReportInterval: a sweep harvests everything
        wait_for("three more sweeps", lambda: sweeps(second) >= done, True, second)
        # one entry per interface the stream crossed (the pod's veth, the uplink), each counting every packet
        assert conntrack_gauges(second) == {"packets_tx": 2 * sent, "packets_rx": 0, "total_connections": 2}
        reported = pod_packets(second, veth)
        assert last_look + reported <= sent
        assert reported >= sent - v_kill
    finally:
        first.close()
        second.close()


@needs_tcx
def test_switching_pinning_off_removes_the_pins(lab, pin_root):
    """An agent with bpfPinning off finds the pins a pinned run left (SIGKILL) at its bpfPinPath: it detaches those
    links and removes the pins, attaches as usual (one of ours per hook), and its stop leaves nothing behind."""
    unpinned = AgentProcess(lab.node_ns, config(lab, pin_root, bpfPinning=False))
    first = None
    try:
        first, before, _ = start_first(lab, pin_root)
        first.stop(signal.SIGKILL)
        assert hooks(lab) == before
        unpinned.start()
        assert names(hooks(lab)) == expected_names(lab, "tcx")
        assert os.listdir(pin_root) == []
        assert "bpfPinning is off: removed the pins" in unpinned.log()
        assert unpinned.stop(signal.SIGTERM) == 0
        assert all(progs == [] for progs in hooks(lab).values())
    finally:
        if first is not None:
            first.close()
        unpinned.close()
