"""Exact pod-level counts under overload: the real agent (in-process, in a lab's node namespace, packetparser
handed the session's compiled program) is flooded through BPF_PROG_TEST_RUN far faster than its reader can
drain, with the lab pod veths' ifindexes.

The kernel's ring-buffer reservations fail (asserted: the test really overloads) and packetparser keeps the
unreported counts in its conntrack entries; user space never drops in the accounting path (the reader thread
enriches and counts each batch itself, ``retina_exporter/pipeline.py``), so after the flood and a final
conntrack sweep adv_forward_count/adv_forward_bytes per pod equal exactly what was sent -- while a slow Hubble
client on the output ring is overtaken and gets a LostEvent with the exact number of flows it missed.

The flood uses addresses of its own (pods ``flood-a``/``flood-b`` in the inventory), so the lab's own background
packets (neighbour discovery) never touch the asserted series.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest
import yaml

from retina_core.netns import enter_netns
from retina_exporter.datapath.ringreader import close_ring_consumers
from retina_exporter.datapath.syscall import prog_test_run
from retina_exporter.lab.topology import Lab
from retina_exporter.plugins.packetparser.loader import LoadOptions

FLOOD_NS = "flood"
A, B = bytes([10, 250, 0, 1]), bytes([10, 250, 0, 2])
PORTS = range(40000, 40008)
ROUNDS = 12
REPEAT = 4000
TCP_ACK, TCP_PSH, TCP_ECE = 0x10, 0x08, 0x40
SK_BUFF_IFINDEX = 40  # offsetof(struct __sk_buff, ifindex)


def frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + b"f" * payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst)
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + tcp


def skb_ctx(ifindex: int) -> bytes:
    """A ``struct __sk_buff`` prefix with only ``ifindex`` set: the kernel runs the program on that device."""
    return bytes(SK_BUFF_IFINDEX) + struct.pack("=I", ifindex) + bytes(4)


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


def inventory(lab) -> dict:
    inv = lab.inventory()
    for ip, name in ((A, "flood-a"), (B, "flood-b")):
        inv["endpoints"].append({"ips": [".".join(map(str, ip))], "namespace": FLOOD_NS, "podName": name,
                                 "labels": {"app": name}, "workload": {"kind": "Deployment", "name": name},
                                 "node": lab.node_name})
    return inv


def start_agent(lab, program, tmp_path: Path, level: str, merge: bool):
    from retina_exporter.agent import Agent
    from retina_exporter.config import load_config
    from retina_exporter.plugins.packetparser.plugin import PacketParserPlugin

    inv_path = tmp_path / "inventory.yaml"
    inv_path.write_text(yaml.safe_dump(inventory(lab)))
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "apiServer": {"host": "127.0.0.1", "port": 10093},  # in the lab's own namespace
        "enabledPlugin": ["packetparser"],
        "enablePodLevel": True,
        "dataAggregationLevel": level,
        "mergeQueuedEvents": merge,
        "outputRingCapacity": 7,  # small, so that the stalled Hubble client is surely overtaken
        "conntrackReportInterval": "1s",
        "nodeName": lab.node_name,
        "enrichment": {"source": "inventory", "inventoryFile": str(inv_path)},
        "metricsConfiguration": {"contextOptions": [
            {"metricName": m, "sourceLabels": ["namespace", "podname"]} for m in ("forward_count", "forward_bytes")]},
    }))
    with enter_netns(lab.node_ns):  # the agent's threads and sockets live in the lab's node namespace
        agent = Agent(load_config(str(cfg_path)), plugins=[PacketParserPlugin(program)])
        try:
            agent.start()
        except BaseException:
            agent.stop()
            raise
    return agent


def pod_counts(agent) -> dict[tuple[str, str, str], int]:
    """(family, direction, podname) -> value, for the flood pods."""
    out = {}
    for name, _type, _help, samples in agent.metrics_module.advanced.families():
        for labels, value in samples:
            d = dict(labels)
            if d.get("namespace") == FLOOD_NS:
                out[(name.rsplit("_", 2)[-2] + "_" + name.rsplit("_", 1)[-1], d["direction"], d["podname"])] = value
    return out


class SlowHubbleClient:
    """A Hubble ``GetFlows --follow`` stream on the agent's output ring whose client reads one flow, then stalls
    until told to go on (a slow consumer): the writer overtakes it."""

    def __init__(self, ring) -> None:
        from retina_exporter.hubble.observer import NodeInfo, ObserverService
        from retina_core.proto.observer import observer_pb2

        self.stop = threading.Event()
        self.go_on = threading.Event()
        self.first = threading.Event()
        self.flows = self.lost = 0
        service = ObserverService(ring, NodeInfo("node", "", "test", time.monotonic()), stopping=self.stop)
        self._stream = service.GetFlows(observer_pb2.GetFlowsRequest(follow=True), self)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def is_active(self) -> bool:  # the grpc.ServicerContext the stream asks
        return not self.stop.is_set()

    def abort(self, code, message):
        raise RuntimeError(message)

    def _run(self) -> None:
        try:
            for resp in self._stream:
                if resp.HasField("lost_events"):
                    self.lost += resp.lost_events.num_events_lost
                else:
                    self.flows += 1
                    if not self.first.is_set():
                        self.first.set()
                        self.go_on.wait()
        except RuntimeError:
            pass

    def close(self) -> None:
        self.go_on.set()
        self.stop.set()
        self._thread.join(10)


def flood(program, lab, packets: list[tuple[str, int, bytes]]) -> dict[tuple[str, str, str], int]:
    """Run every (hook, ifindex, frame) ``ROUNDS * REPEAT`` times; returns the expected per-pod counts."""
    want: dict[tuple[str, str, str], int] = {}
    with enter_netns(lab.node_ns):
        for _ in range(ROUNDS):
            for hook, ifindex, pkt in packets:
                res = prog_test_run(program.prog_fd(hook), pkt, repeat=REPEAT, ctx=skb_ctx(ifindex))
                assert res.retval == -1, "packetparser must never change the verdict"
    for hook, _ifindex, pkt in packets:
        direction, pod = ("egress", "flood-a") if hook == "retina_from_ep" else ("ingress", "flood-b")
        for fam, n in (("forward_count", 1), ("forward_bytes", len(pkt))):
            key = (fam, direction, pod)
            want[key] = want.get(key, 0) + ROUNDS * REPEAT * n
    return want


@pytest.mark.parametrize("level,merge", [("low", False), ("high", False), ("low", True)])
def test_pod_counts_exact_when_the_reader_is_flooded(lab, pp_program_low, tmp_path, level, merge):
    import socket

    program = pp_program_low
    with enter_netns(lab.node_ns):
        veth_a, veth_b = (socket.if_nametoindex(p.host_ifname) for p in lab.pods)
    # A -> B: sent at flood-a's veth (egress, from_ep), arriving at flood-b's veth (ingress, to_ep). ACK|PSH
    # packets accumulate between reports (high); ACK|ECE packets force a report each (both levels).
    packets = []
    for i, port in enumerate(PORTS):
        flags = TCP_ACK | (TCP_ECE if i % 2 else TCP_PSH)
        pkt = frame(A, B, port, 80, flags, 100 * i)
        packets += [("retina_from_ep", veth_a, pkt), ("retina_to_ep", veth_b, pkt)]
    close_ring_consumers(program.bpf)  # the session's program: another test's reader may have opened its ring
    agent = start_agent(lab, program, tmp_path, level, merge)
    hubble = None
    try:
        assert agent.cache is not None
        deadline = time.monotonic() + 30
        while not agent.cache.loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.cache.loaded
        hubble = SlowHubbleClient(agent.ring)
        program.conntrack.clear()
        lost0 = program.lost_counts()["ringbuf_full"]
        written0 = agent.ring.total_written
        with enter_netns(lab.node_ns):  # one flow, so the Hubble client reads once and then stalls
            prog_test_run(program.prog_fd("retina_from_ep"), frame(A, B, 39999, 80, TCP_ACK | TCP_ECE, 0),
                          ctx=skb_ctx(veth_a))
        assert hubble.first.wait(30)
        want = flood(program, lab, packets)
        want[("forward_count", "egress", "flood-a")] += 1
        want[("forward_bytes", "egress", "flood-a")] += len(frame(A, B, 39999, 80, 0, 0))
        ringbuf_full = program.lost_counts()["ringbuf_full"] - lost0
        assert ringbuf_full > 0, "the flood did not overload the kernel ring buffer: the test proves nothing"

        plugin = agent.plugins[0]
        got = pod_counts(agent)
        deadline = time.monotonic() + 120
        while got != want and time.monotonic() < deadline:
            for key, value in got.items():
                assert value <= want.get(key, 0), f"{key}: counted {value} > sent {want.get(key)}"
            plugin.flush()  # harvest what the failed reservations left in the conntrack entries
            time.sleep(0.05)
            got = pod_counts(agent)
        assert got == want
        assert agent.pipeline.errors == 0
        assert (plugin.reader.events_merged > 0) == merge
        merged = [v for name, _t, _h, samples in agent.metrics.families() for _l, v in samples
                  if name == "controlplane_networkobservability_packetparser_merged_events_counter"]
        assert merged == ([plugin.reader.events_merged] if merge else [])  # visible where it happens

        hubble.go_on.set()
        written = agent.ring.total_written - written0
        deadline = time.monotonic() + 60
        while hubble.flows + hubble.lost < written and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hubble.lost > 0, "the slow Hubble client was never overtaken"
        assert hubble.flows + hubble.lost == written  # every flow delivered or counted as lost, exactly
    finally:
        if hubble is not None:
            hubble.close()
        agent.stop()
        close_ring_consumers(program.bpf)
        program.conntrack.clear()
        program.configure(LoadOptions())


def test_merged_events_sum_exactly_and_only_identical_ones_merge(pp_program_low):
    """mergeQueuedEvents: queued events equal but for time and bytes become one record with the sums; a
    different flag set or flow stays a record of its own."""
    from retina_exporter.plugins.packetparser.reader import EventDecoder, RingBufferReader

    program = pp_program_low
    close_ring_consumers(program.bpf)
    program.configure(LoadOptions())
    program.conntrack.clear()
    records = []

    class Sink:
        def write_batch(self, batch):
            records.extend(batch)

    events = []
    reader = RingBufferReader(program.bpf, "events", EventDecoder("n"), Sink(), merge=True, on_batch=events.append)
    try:
        reader.drain()
        records.clear()
        events.clear()
        push = frame(A, B, 41000, 80, TCP_ACK | TCP_PSH, 100)
        ack = frame(A, B, 41000, 80, TCP_ACK, 100)
        other = frame(A, B, 41001, 80, TCP_ACK | TCP_PSH, 100)
        for pkt, n in ((push, 50), (ack, 30), (other, 40), (push, 10)):
            assert prog_test_run(program.prog_fd("retina_from_ep"), pkt, repeat=n).retval == -1
        reader.drain()
        got = sorted((r.src_port, r.tcp_flags, r.packets, r.bytes, r.flag_counts[3], r.flag_counts[4])
                     for r in records)
        assert got == [(41000, TCP_ACK, 30, 30 * len(ack), 0, 30),
                       (41000, TCP_ACK | TCP_PSH, 60, 60 * len(push), 60, 60),
                       (41001, TCP_ACK | TCP_PSH, 40, 40 * len(other), 40, 40)]
        assert reader.events_merged == 130 - 3
        assert sum(events) == 130  # on_batch (the parsed-events counter) counts events, not records
    finally:
        close_ring_consumers(program.bpf)
        program.conntrack.clear()
