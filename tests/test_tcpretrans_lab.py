"""The tcpretrans plugin on the real kernel: deterministic loss on a lab link makes TCP retransmit, and the plugin's
counts must equal the kernel's own ``Tcp: RetransSegs`` deltas (``/proc/net/snmp`` in each namespace).

Loss: this kernel has no ``sch_netem`` (nor act_gact/matchall), so the test drops packets itself with a small
TC program (compiled with bcc here, once per module) on the node side of the sender's veth: every Nth TCP
segment that carries data towards the test port (retransmissions included), or SYN-ACKs. Counting is exact
with segmentation offloads off and on: the plugin reads each retransmitted skb's segment count from the kernel
through BTF. Offloads off does not mean one segment per retransmission: TCP builds GSO skbs whatever the device
offers (sk_setup_caps() forces NETIF_F_GSO for TCP sockets), the device only segments them in software. A
retransmission is one skb of the retransmit queue: one segment when a single dropped segment was SACKed around,
several when a run of not-yet-SACKed segments is marked lost at once (an RTO after a dropped retransmission while
a slow receiver keeps the window closed, or RACK when delivery is delayed on a busy machine)."""

from __future__ import annotations

import socket
import threading

import pytest

from metrics_module.registry import FamilyRegistry
from retina_exporter.lab import traffic
from retina_exporter.lab.topology import Lab
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.tcpretrans.loader import TcpRetransProgram
from retina_exporter.plugins.tcpretrans.plugin import RETRANS_METRIC, TcpRetransPlugin
from retina_exporter.datapath.tc import TcAttacher
from retina_core.telemetry import ControlPlane
from types import SimpleNamespace

DROP_SRC = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

BPF_ARRAY(drop_cfg, u32, 4);   /* [0] port (0: off), [1] every Nth data segment, [2] SYN-ACKs to drop */
BPF_ARRAY(drop_count, u64, 3); /* [0] data segments seen, [1] dropped data segments, [2] dropped SYN-ACKs */

static __always_inline u32 cfg(int i) { u32 *v = drop_cfg.lookup(&i); return v ? *v : 0; }

int rtest_drop(struct __sk_buff *skb)
{
    u16 proto;
    u32 l4, ip_end;
    if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0)
        return TC_ACT_UNSPEC;
    if (proto == bpf_htons(ETH_P_IP)) {
        u8 ip4[20];
        if (bpf_skb_load_bytes(skb, 14, ip4, 20) < 0 || ip4[9] != 6)
            return TC_ACT_UNSPEC;
        l4 = 14 + (ip4[0] & 0xF) * 4;
        ip_end = 14 + (((u32)ip4[2] << 8) | ip4[3]);
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        u8 ip6[8];
        if (bpf_skb_load_bytes(skb, 14, ip6, 8) < 0 || ip6[6] != 6)
            return TC_ACT_UNSPEC;
        l4 = 14 + 40;
        ip_end = 14 + 40 + (((u32)ip6[4] << 8) | ip6[5]);
    } else {
        return TC_ACT_UNSPEC;
    }
    u8 th[14];
    if (bpf_skb_load_bytes(skb, l4, th, 14) < 0)
        return TC_ACT_UNSPEC;
    u32 port = cfg(0);
    u16 sport = ((u16)th[0] << 8) | th[1], dport = ((u16)th[2] << 8) | th[3];
    if (!port || (sport != port && dport != port))
        return TC_ACT_UNSPEC;
    int k;
    if ((th[13] & 0x12) == 0x12) { /* SYN-ACK */
        k = 2;
        u64 *d = drop_count.lookup(&k);
        if (d && *d < cfg(2)) {
            __sync_fetch_and_add(d, 1);
            return TC_ACT_SHOT;
        }
        return TC_ACT_UNSPEC;
    }
    u32 payload = ip_end - l4 - (th[12] >> 4) * 4;
    u32 every = cfg(1);
    if (dport != port || payload == 0 || every == 0)
        return TC_ACT_UNSPEC;
    k = 0;
    u64 *seen = drop_count.lookup(&k);
    if (!seen)
        return TC_ACT_UNSPEC;
    u64 n = __sync_fetch_and_add(seen, 1);
    if (n % every == every - 1) {
        k = 1;
        u64 *d = drop_count.lookup(&k);
        if (d)
            __sync_fetch_and_add(d, 1);
        return TC_ACT_SHOT;
    }
    return TC_ACT_UNSPEC;
}
"""


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


class Dropper:
    """The drop program on one interface's ingress (TCX or clsact, our own prefix and priority)."""

    def __init__(self, bpf) -> None:
        from bcc import BPF

        self.bpf = bpf
        self.fn = bpf.load_func(b"rtest_drop", BPF.SCHED_CLS)
        self.cfg = bpf[b"drop_cfg"]
        self.counts = bpf[b"drop_count"]

    def set(self, port: int, every: int = 0, synacks: int = 0) -> None:
        import ctypes as ct

        for i, v in enumerate((port, every, synacks, 0)):
            self.cfg[ct.c_int(i)] = ct.c_uint32(v)
        for i in range(3):
            self.counts[ct.c_int(i)] = ct.c_uint64(0)

    def dropped(self) -> tuple[int, int]:
        import ctypes as ct

        return int(self.counts[ct.c_int(1)].value), int(self.counts[ct.c_int(2)].value)


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


@pytest.fixture(scope="module")
def program():
    prog = TcpRetransProgram()
    yield prog
    prog.close()


@pytest.fixture(scope="module")
def dropper(lab):
    from bcc import BPF

    bpf = BPF(text=DROP_SRC.encode())
    drop = Dropper(bpf)
    attacher = TcAttacher(prefix="rtest_", netns=lab.node_ns, priority=9, handle=9)
    try:
        # The sender's data (pod0 -> pod1) and the server's SYN-ACKs (pod1 -> pod0) enter the node here and there.
        for pod in lab.pods:
            attacher.attach(pod.host_ifname, "ingress", drop.fn.fd, "rtest_drop")
        yield drop
    finally:
        drop.set(0)
        attacher.close()
        bpf.cleanup()


@pytest.fixture(scope="module")
def plugin(lab, program):
    cfg = SimpleNamespace(enable_pod_level=True, node_name="lab", host_interfaces=(lab.uplink,))
    sink = ListSink()
    ctx = PluginContext(config=cfg, flow_sink=sink, telemetry=ControlPlane(), metrics=FamilyRegistry())
    p = TcpRetransPlugin(program, scope="node", node_netns=f"/run/netns/{lab.node_ns}")
    p.init(ctx)
    p.start()
    try:
        yield SimpleNamespace(plugin=p, sink=sink, ctx=ctx)
    finally:
        p.stop()


def retrans_segs(lab, ns) -> int:
    """``Tcp: RetransSegs`` of a namespace."""
    lines = [ln.split() for ln in lab.run(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


def all_retrans(lab) -> dict[str, int]:
    return {ns: retrans_segs(lab, ns) for ns in [lab.node_ns] + [p.netns for p in lab.pods]}


def node_counter(agent) -> int:
    fams = {name: samples for name, _t, _h, samples in agent.ctx.metrics.families()}
    return fams[RETRANS_METRIC][0][1]


def test_program_facts(program):
    assert program.has_err and program.has_synack and program.has_kernel_offsets
    assert {"TP_SKB_OFF_SADDR_V6", "OFF_SK_NET", "OFF_TCB_GSO_SEGS"} <= set(program.defines)


@pytest.mark.parametrize("ipv6,offloads", [(False, False), (True, False), (False, True)],
                         ids=["ipv4", "ipv6", "ipv4-offloads-on"])
def test_counts_equal_kernel_retranssegs(lab, plugin, dropper, ipv6, offloads):
    p0, p1 = lab.pods
    for pod in (p0, p1):
        lab.set_offloads(pod, pod.ifname, tso=offloads, gso=offloads, gro=offloads)
        lab.set_offloads("node", pod.host_ifname, tso=offloads, gso=offloads, gro=offloads)
    port = traffic.next_port()
    dropper.set(port, every=3 if offloads else 25)  # with offloads one skb carries up to 45 segments
    plugin.sink.take()
    before, counter_before = all_retrans(lab), node_counter(plugin)
    events_before = plugin.plugin.program.stats()["events"]
    res = traffic.tcp_transfer(lab, p0, p1, nbytes=600_000, port=port, ipv6=ipv6, timeout=60)
    after = all_retrans(lab)
    assert res.bytes_received == 600_000
    deltas = {ns: after[ns] - before[ns] for ns in after}
    sender = deltas[p0.netns]
    assert dropper.dropped()[0] > 0 and sender > 0, (dropper.dropped(), deltas)
    assert sender == res.client_retrans  # the socket's own count agrees with the namespace's
    plugin.plugin.flush()
    taken = plugin.sink.take()
    # One record per retransmission the kernel program counted (nothing lost or duplicated on the way).
    assert len(taken) == plugin.plugin.program.stats()["events"] - events_before
    records = [r for r in taken if r.src_port == res.client_port and r.dst_port == port]
    fam = socket.AF_INET6 if ipv6 else socket.AF_INET
    assert all(r.verdict == 15 and r.proto == 6 and r.ip_version == (6 if ipv6 else 4) for r in records)
    assert {(socket.inet_ntop(fam, r.src_ip), socket.inet_ntop(fam, r.dst_ip)) for r in records} == {
        (p0.ip(ipv6), p1.ip(ipv6))}
    assert sum(r.packets for r in records) == sender
    assert all(r.packets >= 1 for r in records) and len(records) <= sender
    if offloads:  # retransmitted TSO skbs of several segments: counted by segment, like RetransSegs
        assert len(records) < sender
    # The node-level counter covers every namespace of the node: exactly the kernel's total there.
    assert node_counter(plugin) - counter_before == sum(deltas.values())


def test_synack_retransmission(lab, plugin, dropper):
    p0, p1 = lab.pods
    port = traffic.next_port()
    dropper.set(port, synacks=1)
    plugin.sink.take()
    before, counter_before = all_retrans(lab), node_counter(plugin)
    res = traffic.tcp_transfer(lab, p0, p1, nbytes=1000, port=port, timeout=30)
    after = all_retrans(lab)
    deltas = {ns: after[ns] - before[ns] for ns in after}
    assert dropper.dropped()[1] == 1 and deltas[p1.netns] >= 1, deltas
    plugin.plugin.flush()
    records = [r for r in plugin.sink.take() if port in (r.src_port, r.dst_port)]
    synacks = [r for r in records if r.src_port == port]
    assert len(synacks) == deltas[p1.netns] and all(r.tcp_flags == 0 for r in synacks)  # SYN-ACK: no skb flags
    assert sum(r.packets for r in records) == sum(deltas.values()) == node_counter(plugin) - counter_before
    assert res.bytes_received == 1000


def test_out_of_scope_namespace_is_not_counted(lab, plugin, dropper, tmp_path):
    """A namespace that is not the node's nor one of its pods' (the lab's "world"): its retransmissions are
    counted as out of scope, not in the node counter."""
    w = lab.world_ns
    port = traffic.next_port()
    dropper.set(0)
    before_counter = node_counter(plugin)
    oos = plugin.plugin.program.stats()["out_of_scope"]
    # A TCP connection inside the world namespace to an address nobody answers: SYN retransmissions there.
    lab.run(w, ["ip", "route", "add", "192.0.2.0/24", "dev", lab.world_ifname], check=False)
    try:
        script = ("import socket\ns=socket.socket()\ns.settimeout(1.5)\n"
                  f"try:\n    s.connect(('192.0.2.77', {port}))\nexcept OSError:\n    pass\n")
        before_w = retrans_segs(lab, w)
        lab.run(w, ["python3", "-c", script], check=False, timeout=20)
        assert retrans_segs(lab, w) - before_w >= 1
    finally:
        lab.run(w, ["ip", "route", "del", "192.0.2.0/24"], check=False)
    assert plugin.plugin.program.stats()["out_of_scope"] > oos
    assert node_counter(plugin) == before_counter
