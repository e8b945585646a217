"""packetforward without the agent: the kernel program fed frames through BPF_PROG_TEST_RUN, default-route
detection on fixture trees, the plugin attached in a fresh network namespace (exact against the interface's own
counters, both attach modes, clean detach, re-attach after the interface is re-created), and failure isolation
(missing interface, verifier rejection)."""

from __future__ import annotations

import ctypes as ct
import json
import secrets
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.syscall import prog_test_run
from retina_exporter.lab.topology import in_netns
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.linuxutil.plugin import LinuxUtilPlugin
from retina_exporter.plugins.manager import PluginManager
from retina_exporter.plugins.packetforward import loader
from retina_exporter.plugins.packetforward import plugin as pf
from retina_exporter.plugins.packetforward.loader import PacketForwardError, PacketForwardProgram
from retina_exporter.datapath.tc import TcAttacher
from retina_core.telemetry import ControlPlane

TC_ACT_UNSPEC = -1
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "proc"
HAS_TCX = bpfsys.kernel_has_tcx()


@pytest.fixture(scope="module")
def program():
    prog = PacketForwardProgram()
    yield prog
    prog.close()


def wait_for(pred, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# --- the kernel program -----------------------------------------------------------------------------------------


def test_struct_layout_matches_header(program):
    leaf = program.metrics.sLeaf
    assert ct.sizeof(leaf) == ct.sizeof(loader.PfMetric) == 16
    assert [f[0] for f in leaf._fields_] == [f[0] for f in loader.PfMetric._fields_] == ["count", "bytes"]
    assert all(name.startswith(loader.PROGRAM_PREFIX) and len(name) <= 15 for name in loader.PROGRAMS.values())
    assert not loader.PROGRAM_PREFIX.startswith("retina_")  # packetparser's stale clean-up must not match ours


def test_every_frame_counted_exactly_and_verdict_unchanged(program):
    program.reset()
    frames = [
        Ether(dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"x" * 100),
        Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.9"),  # broadcast, not IP (Retina's ingress skips it)
        Ether(dst="33:33:00:00:00:01") / IPv6(dst="ff02::1") / UDP() / Raw(b"y" * 7),  # multicast
        Ether() / Dot1Q(vlan=5) / IP() / Raw(b"z" * 1000),
        Ether(type=0x88B5) / Raw(b"\0" * 46),
    ]
    want = {"ingress": [0, 0], "egress": [0, 0]}
    for i, frame in enumerate(frames):
        data = bytes(frame)
        for direction, repeat in (("ingress", i + 1), ("egress", 2 * i + 1)):
            res = prog_test_run(program.prog_fd(direction), data, repeat=repeat)
            assert res.retval == TC_ACT_UNSPEC, "packetforward must never change a packet's fate"
            want[direction][0] += repeat
            want[direction][1] += repeat * len(data)
    assert program.totals() == {d: tuple(v) for d, v in want.items()}
    program.reset()
    assert program.totals() == {"ingress": (0, 0), "egress": (0, 0)}


# --- default route ----------------------------------------------------------------------------------------------


def test_default_route_interface_from_fixtures():
    # IPv4: ens5 metric 100, ens6 metric 50, a reject default on ens7 -> ens6.
    assert pf.default_route_interface(str(FIXTURES / "node1")) == "ens6"
    # No IPv4 default: the IPv6 one with the lowest metric (lo's reject route skipped).
    assert pf.default_route_interface(str(FIXTURES / "quirks")) == "eth9"
    with pytest.raises(PacketForwardError, match="no default route.*set hostInterfaces"):
        pf.default_route_interface(str(FIXTURES / "noroute"))


# --- failures ---------------------------------------------------------------------------------------------------


def ctx_for(**cfg) -> PluginContext:
    base = {"host_interfaces": (), "enable_tcx": "auto", "metrics_interval_ns": 3600 * 10**9}
    return PluginContext(config=SimpleNamespace(**{**base, **cfg}), flow_sink=None, telemetry=ControlPlane())


def test_missing_host_interface_is_a_clear_init_error(monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("must fail before compiling")

    monkeypatch.setattr(pf, "PacketForwardProgram", no_compile)
    plugin = pf.PacketForwardPlugin()
    with pytest.raises(PacketForwardError, match=r"host interface 'nosuch0' does not exist.*hostInterfaces"):
        plugin.init(ctx_for(host_interfaces=("nosuch0",)))
    plugin.stop()  # idempotent after a failed init


BAD_SOURCE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "packetforward.h"
BPF_PERCPU_ARRAY(rpfwd_metrics, struct pf_metric, PF_DIR_COUNT);
int rpfwd_ingress(struct __sk_buff *skb)
{
	unsigned char *data = (unsigned char *)(long)skb->data;
	return data[0]; /* packet access without checking data_end: the verifier rejects this */
}
int rpfwd_egress(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
"""


def test_verifier_rejection_is_isolated_by_the_manager(tmp_path, monkeypatch):
    bad = tmp_path / "bad.bpf.c"
    bad.write_text(BAD_SOURCE)
    with pytest.raises(PacketForwardError, match="kernel rejected BPF program rpfwd_ingress"):
        PacketForwardProgram(bad)

    monkeypatch.setattr(pf, "PacketForwardProgram", lambda **kw: PacketForwardProgram(bad, **kw))
    lo_ctx = ctx_for(host_interfaces=("lo",))
    util = LinuxUtilPlugin(proc_root=str(FIXTURES / "node1"), sys_root=str(tmp_path), use_ethtool=False)
    (tmp_path / "class" / "net").mkdir(parents=True)
    manager = PluginManager([pf.PacketForwardPlugin(), util], lo_ctx, reconcile_period_s=3600)
    manager.start()
    try:
        assert [p.name for p in manager.started] == ["linuxutil"]
        assert "kernel rejected BPF program rpfwd_ingress" in manager.failures["packetforward"]
        assert lo_ctx.telemetry.failed_reconcile == {"packetforward": 1}
        assert util.snapshot.families  # the other plugin runs
    finally:
        manager.stop()


# --- attached in a namespace ------------------------------------------------------------------------------------


@pytest.fixture
def veth_ns():
    """A fresh namespace with a veth pair vxa <-> vxb, IPv6 off (no frame the test did not send)."""
    name = f"rxpf-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        make_veth(name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def make_veth(ns: str) -> None:
    ip = ["ip", "-n", ns]
    subprocess.run(ip + ["link", "add", "vxa", "type", "veth", "peer", "name", "vxb"], check=True)
    subprocess.run(ip + ["link", "set", "vxa", "up"], check=True)
    subprocess.run(ip + ["link", "set", "vxb", "up"], check=True)


def link(ns: str, ifname: str) -> dict[str, int]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname], capture_output=True,
                         text=True, check=True).stdout
    st = json.loads(out)[0]["stats64"]
    return {"rx_packets": st["rx"]["packets"], "rx_bytes": st["rx"]["bytes"],
            "tx_packets": st["tx"]["packets"], "tx_bytes": st["tx"]["bytes"]}


def send_frames(ns: str, ifname: str, sizes: list[int]) -> None:
    def send():
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
            s.bind((ifname, 0))
            for n in sizes:
                s.send(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(n - 14))

    in_netns(ns, send)


def ours(ns: str, ifname: str) -> list[tuple[str, str, str]]:
    """Every program on the interface's hooks: (direction, mode, name), in execution order per hook."""
    with TcAttacher(prefix="rpfwd_", netns=f"/run/netns/{ns}") as att:
        return [(d, a.mode, a.prog_name) for d in ("ingress", "egress") for a in att.list_attachments(ifname, d)]


def has_clsact(ns: str, ifname: str) -> bool:
    out = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", ifname], capture_output=True, text=True).stdout
    return "clsact" in out


@pytest.mark.parametrize("tcx", ["auto", "off"])
def test_plugin_exact_against_interface_counters_and_clean_detach(program, veth_ns, tcx):
    if tcx == "auto" and not HAS_TCX:
        pytest.skip("kernel without TCX")
    ns = veth_ns
    program.reset()
    # hostInterfaces empty: the plugin takes the default route's interface (vxb).
    subprocess.run(["ip", "-n", ns, "route", "add", "default", "dev", "vxb"], check=True)
    plugin = pf.PacketForwardPlugin(program=program)
    ctx = ctx_for(enable_tcx=tcx)
    in_netns(ns, plugin.init, ctx)
    try:
        assert plugin.interfaces == ("vxb",)
        in_netns(ns, plugin.start)
        mode = "tcx" if tcx == "auto" else "clsact"
        assert ours(ns, "vxb") == [("ingress", mode, "rpfwd_ingress"), ("egress", mode, "rpfwd_egress")]
        if tcx == "off":
            filters = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", "vxb", "ingress"],
                                     capture_output=True, text=True, check=True).stdout
            assert "pref 2 bpf" in filters and "handle 0x2 rpfwd_ingress" in filters
        assert list(plugin.families())[0][3] == [((("direction", "ingress"),), 0), ((("direction", "egress"),), 0)]

        before = link(ns, "vxb")
        rx_sizes, tx_sizes = [60, 61, 1514, 200, 64] * 9, [60, 999, 1500] * 5
        send_frames(ns, "vxa", rx_sizes)  # vxa -> vxb: vxb receives (ingress)
        send_frames(ns, "vxb", tx_sizes)  # vxb sends (egress)
        want = {"rx_packets": len(rx_sizes), "rx_bytes": sum(rx_sizes),
                "tx_packets": len(tx_sizes), "tx_bytes": sum(tx_sizes)}
        wait_for(lambda: {k: v - before[k] for k, v in link(ns, "vxb").items()} == want, what="the frames")
        after = link(ns, "vxb")
        totals = plugin.read_once()
        assert totals == {"ingress": (after["rx_packets"], after["rx_bytes"]),
                          "egress": (after["tx_packets"], after["tx_bytes"])}
        assert totals == {"ingress": (len(rx_sizes), sum(rx_sizes)), "egress": (len(tx_sizes), sum(tx_sizes))}
        fams = {f[0]: dict(f[3]) for f in plugin.families()}
        ing, eg = (("direction", "ingress"),), (("direction", "egress"),)
        assert fams == {pf.FORWARD_COUNT: {ing: len(rx_sizes), eg: len(tx_sizes)},
                        pf.FORWARD_BYTES: {ing: sum(rx_sizes), eg: sum(tx_sizes)}}

        # The interface is deleted and re-created: reconcile complains while it is gone, then attaches again.
        subprocess.run(["ip", "-n", ns, "link", "del", "vxa"], check=True)
        with pytest.raises(RuntimeError, match="vxb.*missing"):
            in_netns(ns, plugin.reconcile)
        make_veth(ns)
        in_netns(ns, plugin.reconcile)
        assert ours(ns, "vxb") == [("ingress", mode, "rpfwd_ingress"), ("egress", mode, "rpfwd_egress")]
        send_frames(ns, "vxa", [100] * 3)
        wait_for(lambda: link(ns, "vxb")["rx_packets"] == 3, what="3 frames on the new vxb")
        assert plugin.read_once()["ingress"] == (len(rx_sizes) + 3, sum(rx_sizes) + 300)
    finally:
        plugin.stop()
    assert ours(ns, "vxb") == []
    assert not has_clsact(ns, "vxb")  # in clsact mode we added it, and removed it again
