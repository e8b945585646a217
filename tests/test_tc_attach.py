"""TC attachment layer (retina_exporter.datapath.tc) and bpf() wrapper (retina_exporter.datapath.syscall) on the real
kernel. Needs root and bcc.

Isolation: every test gets its own pair of network namespaces (random suffix) joined by a veth; nothing
is ever attached outside them, and the namespaces are deleted in the fixture's ``finally`` (which destroys
the veth and everything attached to it, even if a test fails half-way).

How the code under test gets into the namespace: in-process tests switch only the pytest thread into the
namespace with ``enter_netns`` (setns(2) on the calling thread; the ``in_nsb`` fixture switches back in its
teardown), so bcc's maps and the program fds stay at hand and nothing forks. A ``TcAttacher`` is bound to the
namespace it is created in, so its clean-up also works after the thread went back. Tests that need a
process to crash (SIGKILL) or to lack capabilities start a child with ``ip netns exec NS python -c ...``,
exactly how the agent runs, and hand it the already loaded program fds (``pass_fds``): no second compile.
Traffic is ``ping`` from the other namespace; static neighbour entries make sure no ARP is needed (a drop
filter would otherwise swallow ARP and no echo request would ever be sent), and the BPF program counts only
ICMP echo requests/replies, so IPv6 noise on the veth does not matter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also when pytest is started without `python -m`
    sys.path.insert(0, str(REPO))

from retina_exporter.datapath import syscall as bpfsys  # noqa: E402
from retina_exporter.datapath.syscall import BpfError  # noqa: E402
from retina_core.netns import enter_netns  # noqa: E402
from retina_exporter.datapath.tc import AttachError, TcAttacher  # noqa: E402

PY = sys.executable
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("ping") is None, reason="needs iproute2 and ping"),
]

bcc = pytest.importorskip("bcc")

PROG_SRC = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>

/* 0: ingress echo requests, 1: ingress echo replies, 2: egress echo requests, 3: egress echo replies */
BPF_ARRAY(counts, u64, 4);

static __always_inline int count_echo(struct __sk_buff *skb, u32 base)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->protocol != 1 /* ICMP */ || ip->ihl != 5)
        return TC_ACT_UNSPEC;
    struct icmphdr *icmp = (void *)(ip + 1);
    if ((void *)(icmp + 1) > end)
        return TC_ACT_UNSPEC;
    u32 key;
    if (icmp->type == ICMP_ECHO)
        key = base;
    else if (icmp->type == ICMP_ECHOREPLY)
        key = base + 1;
    else
        return TC_ACT_UNSPEC;
    u64 *v = counts.lookup(&key);
    if (v)
        __sync_fetch_and_add(v, 1);
    return TC_ACT_UNSPEC;   /* transparent: next TCX program / legacy filters decide */
}

int retina_t_in(struct __sk_buff *skb) { return count_echo(skb, 0); }
int retina_t_eg(struct __sk_buff *skb) { return count_echo(skb, 2); }
"""

IN_REQ, IN_REP, EG_REQ, EG_REP = range(4)
# A foreign legacy tc filter that drops everything. This kernel has neither cls_matchall nor act_gact
# ("matchall action drop"), so: cls_bpf in classic-BPF mode, direct action, program "ret #2" (TC_ACT_SHOT).
FOREIGN_DROP = ("bpf", "da", "bytecode", "1,6 0 0 2")
FOREIGN_DROP_SHOWN = "bytecode '1,6 0 0 2'"
HAS_TCX = bpfsys.kernel_has_tcx() if os.geteuid() == 0 else False
needs_tcx = pytest.mark.skipif(not HAS_TCX, reason="kernel without TCX")


# --- helpers ---------------------------------------------------------------------------------------------
def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def wait_for(pred, timeout: float = 5.0, what: str = "condition", state=None):
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {state() if state else v})")
        time.sleep(0.005)


@dataclass
class Lab:
    nsa: str
    nsb: str
    va: str  # in nsa, 10.231.7.1
    vb: str  # in nsb, 10.231.7.2 — the interface the tests attach to
    ip_a: str = "10.231.7.1"
    ip_b: str = "10.231.7.2"

    def ping(self, n: int, expect_ok: bool = True) -> subprocess.CompletedProcess:
        # -i 0.01: fast (root may go below 0.2 s). Exactly n requests: with -c and no -w ping stops after n
        # (-w would keep sending until n replies came or the deadline); -W is how long it waits for the last reply.
        p = sh("ip", "netns", "exec", self.nsa, "ping", "-n", "-q", "-c", str(n), "-i", "0.01",
               "-W", "2" if expect_ok else "0.2", self.ip_b, check=False)  # fmt: skip
        if expect_ok:
            assert p.returncode == 0, f"ping failed: {p.stdout} {p.stderr}"
        else:
            assert p.returncode != 0, f"ping unexpectedly succeeded: {p.stdout}"
        return p

    def bpftool_tc(self) -> list[dict]:
        """`bpftool net show dev vb` (tc part): [{"kind": "clsact/ingress"|"tcx/ingress"|..., "name", "id"}]."""
        out = sh("ip", "netns", "exec", self.nsb, "bpftool", "net", "show", "dev", self.vb, "-j").stdout
        return json.loads(out)[0].get("tc", [])

    def tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.nsb, "tc", *args, check=check)

    def has_clsact(self) -> bool:
        return "clsact" in self.tc("qdisc", "show", "dev", self.vb).stdout


def _operstate_up(ns: str, dev: str) -> bool:
    out = sh("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout
    return json.loads(out)[0].get("operstate") == "UP"


@pytest.fixture
def lab():
    sfx = secrets.token_hex(3)
    lab = Lab(nsa=f"rxt-a-{sfx}", nsb=f"rxt-b-{sfx}", va=f"rxa{sfx}", vb=f"rxb{sfx}")
    mac_a, mac_b = "02:52:58:00:00:0a", "02:52:58:00:00:0b"
    try:
        sh("ip", "netns", "add", lab.nsa)
        sh("ip", "netns", "add", lab.nsb)
        # created inside nsa, peer straight into nsb: the veth never exists in the root namespace
        sh("ip", "-n", lab.nsa, "link", "add", lab.va, "address", mac_a, "type", "veth",
           "peer", "name", lab.vb, "address", mac_b, "netns", lab.nsb)  # fmt: skip
        for ns, dev, ip, peer_ip, peer_mac in (
            (lab.nsa, lab.va, lab.ip_a, lab.ip_b, mac_b),
            (lab.nsb, lab.vb, lab.ip_b, lab.ip_a, mac_a),
        ):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", dev, "nud", "permanent")
        wait_for(lambda: _operstate_up(lab.nsa, lab.va) and _operstate_up(lab.nsb, lab.vb), what="veth up")
        yield lab
    finally:
        sh("ip", "netns", "del", lab.nsb, check=False)
        sh("ip", "netns", "del", lab.nsa, check=False)


@pytest.fixture
def in_nsb(lab):
    """Run the test body with the pytest thread inside lab.nsb."""
    with enter_netns(lab.nsb):
        yield lab


@dataclass
class Progs:
    bpf: object
    fd_in: int
    fd_eg: int
    id_in: int
    id_eg: int

    def count(self, key: int) -> int:
        return self.bpf[b"counts"][ctypes.c_int(key)].value

    def counts(self) -> list[int]:
        return [self.count(k) for k in range(4)]

    def reset(self) -> None:
        t = self.bpf[b"counts"]
        for k in range(4):
            t[ctypes.c_int(k)] = ctypes.c_ulonglong(0)


@pytest.fixture(scope="session")
def progs_session():
    b = bcc.BPF(text=PROG_SRC.encode())
    fi = b.load_func(b"retina_t_in", bcc.BPF.SCHED_CLS)
    fe = b.load_func(b"retina_t_eg", bcc.BPF.SCHED_CLS)
    assert fi.name == b"retina_t_in"
    p = Progs(b, fi.fd, fe.fd, bpfsys.prog_get_info(fi.fd).id, bpfsys.prog_get_info(fe.fd).id)
    yield p
    b.cleanup()


@pytest.fixture
def progs(progs_session):
    progs_session.reset()
    return progs_session


@pytest.fixture
def attachers():
    """Factory of TcAttacher objects that are all closed (= everything detached) after the test."""
    made: list[TcAttacher] = []

    def make(**kw) -> TcAttacher:
        t = TcAttacher(**kw)
        made.append(t)
        return t

    yield make
    for t in made:
        with contextlib.suppress(Exception):
            t.close()


@pytest.fixture
def fds():
    """Collects extra fds (foreign links/progs) to close after the test."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        with contextlib.suppress(OSError):
            os.close(fd)


def ours(entries, prefix="retina_"):
    return [e for e in entries if e.prog_name.startswith(prefix)]


def tcx_links_of(prog_ids: set[int]) -> list[dict]:
    """Independent check through bpftool: TCX links (type 11) of these programs, machine-wide."""
    links = json.loads(sh("bpftool", "link", "show", "-j").stdout)
    return [lk for lk in links if lk.get("prog_id") in prog_ids and lk.get("type") in (11, "tcx")]


def echo_request_frame() -> bytes:
    eth = bytes.fromhex("02525800000b" "02525800000a") + struct.pack("!H", 0x0800)
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"retina-test!"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                     bytes([10, 231, 7, 1]), bytes([10, 231, 7, 2]))  # fmt: skip
    return eth + ip + icmp


# --- bpf() wrapper ---------------------------------------------------------------------------------------
def test_kernel_probe_and_version():
    assert bpfsys.kernel_version("6.18.44-fc-v669") == (6, 18, 44)
    assert bpfsys.kernel_version("5.14.0-362.el9.x86_64") == (5, 14, 0)
    if bpfsys.kernel_version() >= (6, 6):
        assert HAS_TCX


def test_prog_test_run_retval_and_repeat(progs):
    r = bpfsys.prog_test_run(progs.fd_in, echo_request_frame(), repeat=7)
    assert r.retval == bpfsys.TC_ACT_UNSPEC == -1
    assert r.duration_ns >= 0 and r.data_out == b"" and r.ctx_out is None
    assert progs.counts() == [7, 0, 0, 0]
    r = bpfsys.prog_test_run(progs.fd_in, echo_request_frame(), repeat=1, data_out_size=256)
    assert progs.count(IN_REQ) == 8
    assert r.data_out == echo_request_frame()  # program does not touch the packet


def test_prog_test_run_constant_prog_and_ctx(fds):
    fd = bpfsys.load_constant_prog(bpfsys.TC_ACT_SHOT, "foreign_shot")
    fds.append(fd)
    ctx = bytes(4 * 6)  # struct __sk_buff prefix: len, pkt_type, mark, queue_mapping, protocol, vlan_present
    r = bpfsys.prog_test_run(fd, echo_request_frame(), repeat=3, ctx=ctx)
    assert r.retval == bpfsys.TC_ACT_SHOT
    assert r.ctx_out is not None and len(r.ctx_out) >= len(ctx)


def test_prog_get_info_matches_bpftool(progs, fds):
    info = bpfsys.prog_get_info(progs.fd_in)
    assert info.type == bpfsys.BPF_PROG_TYPE_SCHED_CLS and info.name == "retina_t_in"
    tool = json.loads(sh("bpftool", "prog", "show", "id", str(info.id), "-j").stdout)
    assert (tool["id"], tool["name"], tool["tag"]) == (info.id, info.name, info.tag)
    assert bpfsys.prog_get_info(prog_id=info.id) == info
    fd = bpfsys.prog_get_fd_by_id(info.id)
    fds.append(fd)
    assert bpfsys.prog_get_info(fd).id == info.id


def test_syscall_errors_name_the_command(progs):
    with pytest.raises(BpfError) as ei:
        bpfsys.link_create_tcx(progs.fd_in, 0x7FFFFFF0, bpfsys.BPF_TCX_INGRESS)
    assert ei.value.errno in (errno.ENODEV, errno.EINVAL) and "BPF_LINK_CREATE" in str(ei.value)
    with pytest.raises(BpfError) as ei:
        bpfsys.prog_get_fd_by_id(0x7FFFFFF0)
    assert ei.value.errno == errno.ENOENT and "BPF_PROG_GET_FD_BY_ID" in str(ei.value)
    with pytest.raises(BpfError) as ei:
        bpfsys.obj_get("/nonexistent/pin")
    assert "BPF_OBJ_GET" in str(ei.value)


# --- TCX -------------------------------------------------------------------------------------------------
@needs_tcx
def test_tcx_counts_both_directions(in_nsb, progs, attachers):
    lab = in_nsb
    t = attachers(enable_tcx="on")
    assert t.mode == "tcx"
    a_in = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    a_eg = t.attach(lab.vb, "egress", progs.fd_eg, b"retina_t_eg")
    assert a_in.mode == a_eg.mode == "tcx" and a_in.link_fd >= 0
    ifindex = a_in.ifindex

    lab.ping(5)
    wait_for(lambda: progs.counts() == [5, 0, 0, 5], what="5 requests in, 5 replies out")

    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS) == [(progs.id_in, a_in.link_id)]
    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_EGRESS) == [(progs.id_eg, a_eg.link_id)]
    assert t.list_attachments(lab.vb, "ingress") == [("tcx", "retina_t_in", progs.id_in)]
    assert t.list_attachments(ifindex, "egress") == [("tcx", "retina_t_eg", progs.id_eg)]
    # independent view: one TCX link per program; bpftool net show has no legacy tc entry (bpftool >= 7.3
    # would list the TCX programs there too: then exactly ours)
    assert len(tcx_links_of({progs.id_in})) == 1 and len(tcx_links_of({progs.id_eg})) == 1
    tool = lab.bpftool_tc()
    assert not [e for e in tool if e["kind"].startswith("clsact")]
    assert sorted((e["kind"], e["id"]) for e in tool) in (
        [],
        [("tcx/egress", progs.id_eg), ("tcx/ingress", progs.id_in)],
    )
    assert not lab.has_clsact()

    t.detach(a_in)
    t.detach(a_in)  # idempotent
    t.detach_all()
    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS) == []
    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_EGRESS) == []
    assert tcx_links_of({progs.id_in, progs.id_eg}) == []
    lab.ping(2)
    assert progs.counts() == [5, 0, 0, 5]


@needs_tcx
def test_tcx_head_of_chain_before_foreign_tcx_drop(in_nsb, progs, attachers, fds):
    lab = in_nsb
    ifindex = socket.if_nametoindex(lab.vb)
    shot = bpfsys.load_constant_prog(bpfsys.TC_ACT_SHOT, "foreign_shot")
    fds.append(shot)
    foreign_link = bpfsys.link_create_tcx(shot, ifindex, bpfsys.BPF_TCX_INGRESS)  # foreign, at the head
    fds.append(foreign_link)
    shot_id = bpfsys.prog_get_info(shot).id

    t = attachers()
    a = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    assert a.mode == "tcx"
    chain = bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS)
    assert [p for p, _ in chain] == [progs.id_in, shot_id]  # ours first, foreign kept
    assert [e.prog_name for e in t.list_attachments(lab.vb, "ingress")] == ["retina_t_in", "foreign_shot"]

    lab.ping(3, expect_ok=False)  # the foreign program still drops ...
    wait_for(lambda: progs.count(IN_REQ) == 3, what="our program saw all 3 requests")  # ... after we counted
    assert progs.count(EG_REP) == 0

    t.detach(a)
    assert [p for p, _ in bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS)] == [shot_id]  # foreign untouched


@needs_tcx
def test_tcx_runs_before_foreign_clsact_drop(in_nsb, progs, attachers):
    lab = in_nsb
    lab.tc("qdisc", "add", "dev", lab.vb, "clsact")
    lab.tc("filter", "add", "dev", lab.vb, "ingress", "prio", "1", *FOREIGN_DROP)
    t = attachers()
    a = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    assert a.mode == "tcx"
    lab.ping(3, expect_ok=False)
    wait_for(lambda: progs.count(IN_REQ) == 3, what="our program saw all 3 requests")
    t.detach_all()
    assert FOREIGN_DROP_SHOWN in lab.tc("filter", "show", "dev", lab.vb, "ingress").stdout
    assert lab.has_clsact()


# --- clsact ----------------------------------------------------------------------------------------------
def test_clsact_counts_and_cleans_up(in_nsb, progs, attachers):
    lab = in_nsb
    t = attachers(enable_tcx="off")
    assert t.mode == "clsact"
    assert not lab.has_clsact()
    a_in = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    a_eg = t.attach(lab.vb, "egress", progs.fd_eg, "retina_t_eg")
    assert a_in.mode == a_eg.mode == "clsact" and lab.has_clsact()

    lab.ping(4)
    wait_for(lambda: progs.counts() == [4, 0, 0, 4], what="4 requests in, 4 replies out")

    assert t.list_attachments(lab.vb, "ingress") == [("clsact", "retina_t_in", progs.id_in)]
    assert t.list_attachments(lab.vb, "egress") == [("clsact", "retina_t_eg", progs.id_eg)]
    tool = sorted((e["kind"], e["name"], e["id"]) for e in lab.bpftool_tc())
    assert tool == [("clsact/egress", "retina_t_eg", progs.id_eg), ("clsact/ingress", "retina_t_in", progs.id_in)]
    if HAS_TCX:
        assert bpfsys.prog_query(a_in.ifindex, bpfsys.BPF_TCX_INGRESS) == []

    t.detach(a_in)
    assert lab.has_clsact()  # our egress filter still needs it
    t.detach(a_eg)
    assert lab.bpftool_tc() == []
    assert not lab.has_clsact()  # we created it, nothing left: removed


def test_clsact_keeps_foreign_qdisc_and_filters_and_runs_first(in_nsb, progs, attachers):
    lab = in_nsb
    lab.tc("qdisc", "add", "dev", lab.vb, "clsact")
    lab.tc("filter", "add", "dev", lab.vb, "ingress", "prio", "2", *FOREIGN_DROP)
    t = attachers(enable_tcx="off")
    a = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    b = t.attach(lab.vb, "egress", progs.fd_eg, "retina_t_eg")
    assert a.priority == 1
    lab.ping(3, expect_ok=False)
    wait_for(lambda: progs.count(IN_REQ) == 3, what="prio-1 program counted before the prio-2 drop")
    t.detach(a)
    t.detach(b)
    assert lab.has_clsact()  # not ours: kept
    shown = lab.tc("filter", "show", "dev", lab.vb, "ingress").stdout
    assert FOREIGN_DROP_SHOWN in shown and "retina_" not in shown
    assert [e for e in lab.bpftool_tc() if e.get("name", "").startswith("retina_")] == []


def test_clsact_priority_conflict_is_explained(in_nsb, progs, attachers):
    lab = in_nsb
    lab.tc("qdisc", "add", "dev", lab.vb, "clsact")
    lab.tc("filter", "add", "dev", lab.vb, "ingress", "prio", "1", "protocol", "ip", "u32", "match", "u32", "0", "0", "classid", "1:1")
    t = attachers(enable_tcx="off")
    with pytest.raises(AttachError, match="priority 1.*u32"):
        t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    assert lab.has_clsact()  # pre-existing: untouched
    assert t.attachments == []


# --- stale attachments after a crash ---------------------------------------------------------------------
CHILD = r"""
import sys
from retina_exporter.datapath.tc import TcAttacher
mode, dev, fd_in, fd_eg = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = TcAttacher(enable_tcx=mode)
t.attach(dev, "ingress", fd_in, "retina_t_in")
t.attach(dev, "egress", fd_eg, "retina_t_eg")
print("ready", t.attachments[0].mode, flush=True)
sys.stdin.read()   # until killed
"""


def run_child_and_kill(lab: Lab, progs: Progs, mode: str) -> str:
    """Attach from a child process (under `ip netns exec`, like the agent), then SIGKILL it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.nsb, PY, "-c", CHILD, mode, lab.vb, str(progs.fd_in), str(progs.fd_eg)],
        pass_fds=(progs.fd_in, progs.fd_eg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=15):
            raise AssertionError("child did not attach in time")
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"child failed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        return line.split()[1]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # `ip netns exec` execs: this pid is the python child
        proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("new_mode", ["off", "auto"])
def test_stale_clsact_after_sigkill(in_nsb, progs, attachers, new_mode):
    lab = in_nsb
    if new_mode == "auto" and not HAS_TCX:
        pytest.skip("kernel without TCX")
    assert run_child_and_kill(lab, progs, "off") == "clsact"
    # the kernel keeps clsact filters of a dead process
    probe = attachers(enable_tcx="off")
    assert ours(probe.list_attachments(lab.vb, "ingress")) == [("clsact", "retina_t_in", progs.id_in)]
    assert ours(probe.list_attachments(lab.vb, "egress")) == [("clsact", "retina_t_eg", progs.id_eg)]

    t = attachers(enable_tcx=new_mode)
    t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    t.attach(lab.vb, "egress", progs.fd_eg, "retina_t_eg")
    want_mode = "clsact" if new_mode == "off" else "tcx"
    assert t.list_attachments(lab.vb, "ingress") == [(want_mode, "retina_t_in", progs.id_in)]
    assert t.list_attachments(lab.vb, "egress") == [(want_mode, "retina_t_eg", progs.id_eg)]
    n_clsact = len([e for e in lab.bpftool_tc() if e["kind"].startswith("clsact")])
    assert n_clsact == (2 if new_mode == "off" else 0)
    lab.ping(2)
    wait_for(lambda: progs.counts() == [2, 0, 0, 2], what="counted exactly once per hook")

    t.detach_all()
    assert t.list_attachments(lab.vb, "ingress") == [] and t.list_attachments(lab.vb, "egress") == []
    assert not lab.has_clsact()  # the crashed run's qdisc went with its filters


@needs_tcx
def test_stale_tcx_after_sigkill(in_nsb, progs, attachers):
    lab = in_nsb
    ifindex = socket.if_nametoindex(lab.vb)
    assert run_child_and_kill(lab, progs, "on") == "tcx"
    # links die with the process's fds: nothing of ours remains
    wait_for(lambda: bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS) == [], what="TCX ingress empty after SIGKILL")
    wait_for(lambda: bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_EGRESS) == [], what="TCX egress empty after SIGKILL")
    assert not lab.has_clsact()

    t = attachers()
    t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    t.attach(lab.vb, "egress", progs.fd_eg, "retina_t_eg")
    assert t.list_attachments(lab.vb, "ingress") == [("tcx", "retina_t_in", progs.id_in)]
    assert t.list_attachments(lab.vb, "egress") == [("tcx", "retina_t_eg", progs.id_eg)]


@pytest.fixture
def bpffs():
    """A private bpffs mount (not the machine's /sys/fs/bpf), unmounted afterwards."""
    d = tempfile.mkdtemp(prefix="rxt-bpffs-")
    try:
        r = sh("mount", "-t", "bpf", "bpf", d, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount bpffs: {r.stderr.strip()}")
        try:
            yield d
        finally:
            sh("umount", d, check=False)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(d)


@needs_tcx
def test_stale_tcx_pinned_and_linkless_are_removed_foreign_kept(in_nsb, progs, attachers, bpffs, fds):
    lab = in_nsb
    ifindex = socket.if_nametoindex(lab.vb)
    # an "older run" left: a pinned TCX link (survives its process) on ingress, a link-less attach on egress
    old = bpfsys.link_create_tcx(progs.fd_in, ifindex, bpfsys.BPF_TCX_INGRESS)
    bpfsys.obj_pin(old, f"{bpffs}/old_link")
    os.close(old)
    bpfsys.prog_attach(progs.fd_eg, ifindex, bpfsys.BPF_TCX_EGRESS)
    # and someone else's program, which must stay
    other = bpfsys.load_constant_prog(bpfsys.TC_ACT_UNSPEC, "cilium_like")
    fds.append(other)
    other_link = bpfsys.link_create_tcx(other, ifindex, bpfsys.BPF_TCX_INGRESS, bpfsys.BPF_F_AFTER)
    fds.append(other_link)
    other_id, other_link_id = bpfsys.prog_get_info(other).id, bpfsys.link_get_info(other_link).id
    pinned = bpfsys.obj_get(f"{bpffs}/old_link")
    fds.append(pinned)
    assert bpfsys.link_get_info(pinned).prog_id == progs.id_in
    assert len(bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS)) == 2
    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_EGRESS) == [(progs.id_eg, 0)]

    t = attachers()
    a_in = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    a_eg = t.attach(lab.vb, "egress", progs.fd_eg, "retina_t_eg")
    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS) == [(progs.id_in, a_in.link_id), (other_id, other_link_id)]
    assert bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_EGRESS) == [(progs.id_eg, a_eg.link_id)]
    assert bpfsys.link_get_info(pinned).ifindex == 0  # the pinned link still exists, but is defunct

    lab.ping(2)
    wait_for(lambda: progs.counts() == [2, 0, 0, 2], what="counted exactly once per hook")
    t.detach_all()
    assert [p for p, _ in bpfsys.prog_query(ifindex, bpfsys.BPF_TCX_INGRESS)] == [other_id]



# --- errors, fallback, namespaces ------------------------------------------------------------------------
def test_missing_interface_names_it(in_nsb, progs, attachers):
    t = attachers()
    with pytest.raises(AttachError) as ei:
        t.attach("rxnosuch0", "ingress", progs.fd_in, "retina_t_in")
    msg = str(ei.value)
    assert "'rxnosuch0'" in msg and "ip link show" in msg and "ip netns exec" in msg
    with pytest.raises(AttachError, match="999999"):
        t.attach(999999, "egress", progs.fd_eg, "retina_t_eg")


def test_second_attach_to_same_hook_is_refused(in_nsb, progs, attachers):
    t = attachers()
    t.attach(in_nsb.vb, "ingress", progs.fd_in, "retina_t_in")
    with pytest.raises(AttachError, match="already has our program"):
        t.attach(in_nsb.vb, "ingress", progs.fd_eg, "retina_t_eg")
    assert ours(t.list_attachments(in_nsb.vb, "ingress")) == [(t.mode, "retina_t_in", progs.id_in)]


@pytest.mark.parametrize("mode", ["on", "off"])
def test_interface_deleted_and_ifindex_reused(in_nsb, progs, attachers, mode):
    """A pod veth disappears (taking our attachment with it), and a new one gets the same ifindex and name."""
    if mode == "on" and not HAS_TCX:
        pytest.skip("kernel without TCX")
    lab = in_nsb
    t = attachers(enable_tcx=mode)
    old = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    ifindex = old.ifindex
    sh("ip", "-n", lab.nsb, "link", "del", lab.vb)
    sh("ip", "-n", lab.nsb, "link", "add", lab.vb, "index", str(ifindex), "type", "veth", "peer", "name", lab.vb + "p")
    assert socket.if_nametoindex(lab.vb) == ifindex
    new = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")  # the dead attachment is forgotten, not in the way
    assert t.attachments == [new] and not old.active
    t.detach(old)  # a no-op: must not remove the new attachment
    assert t.list_attachments(lab.vb, "ingress") == [(new.mode, "retina_t_in", progs.id_in)]
    sh("ip", "-n", lab.nsb, "link", "del", lab.vb)
    t.detach_all()  # interface gone: counts as detached, no error
    assert t.attachments == []


def test_bad_arguments(in_nsb, progs, attachers):
    t = attachers()
    with pytest.raises(ValueError, match="prefix"):
        t.attach(in_nsb.vb, "ingress", progs.fd_in, "other_name")
    with pytest.raises(ValueError):
        t.attach(in_nsb.vb, "sideways", progs.fd_in, "retina_t_in")
    with pytest.raises(ValueError):
        TcAttacher(prefix="a_prefix_that_is_too_long")
    with pytest.raises(AttachError, match="not found"):
        TcAttacher(netns="rxt-no-such-ns")


CHILD_NOCAPS = r"""
import sys
from retina_exporter.datapath.tc import TcAttacher, AttachError
try:
    TcAttacher(enable_tcx=sys.argv[1]).attach(sys.argv[2], "ingress", int(sys.argv[3]), "retina_t_in")
except AttachError as e:
    print("ERR", e)
else:
    print("OK")
"""


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_permission_error_names_capabilities(lab, progs, mode):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        ["ip", "netns", "exec", lab.nsb, "setpriv", "--bounding-set=-all", "--inh-caps=-all",
         PY, "-c", CHILD_NOCAPS, mode, lab.vb, str(progs.fd_in)],
        pass_fds=(progs.fd_in,), capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert p.stdout.startswith("ERR"), p.stdout + p.stderr
    assert "CAP_BPF" in p.stdout and "CAP_NET_ADMIN" in p.stdout
    assert lab.bpftool_tc() == []


def test_fallback_to_clsact_when_no_tcx(in_nsb, progs, attachers, monkeypatch, caplog):
    monkeypatch.setattr(bpfsys, "kernel_has_tcx", lambda: False)
    t = attachers(enable_tcx="auto")
    with caplog.at_level(logging.INFO, logger="retina_exporter.datapath.tc"):
        a = t.attach(in_nsb.vb, "ingress", progs.fd_in, "retina_t_in")
    assert a.mode == "clsact"
    assert any("no TCX" in r.getMessage() and "clsact" in r.getMessage() for r in caplog.records)
    with pytest.raises(AttachError, match="enableTCX=on"):
        attachers(enable_tcx="on").attach(in_nsb.vb, "egress", progs.fd_eg, "retina_t_eg")


def test_netns_argument_from_another_namespace(lab, progs, attachers):
    """The pytest thread stays in its own namespace; the attacher works in lab.nsb."""
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(AttachError):  # the veth is not visible here
        attachers(enable_tcx="off").attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
    for mode in (["on", "off"] if HAS_TCX else ["off"]):
        progs.reset()
        t = attachers(netns=lab.nsb, enable_tcx=mode)
        a = t.attach(lab.vb, "ingress", progs.fd_in, "retina_t_in")
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
        assert t.list_attachments(lab.vb, "ingress") == [(a.mode, "retina_t_in", progs.id_in)]
        lab.ping(3)
        wait_for(lambda: progs.count(IN_REQ) == 3, what="3 requests counted")
        t.close()
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
        assert lab.bpftool_tc() == [] and not lab.has_clsact()
