"""A local, self-contained Kubernetes-node look-alike built from network namespaces.

Layout (``<id>`` is the lab id, 6 random hex digits unless given)::

    rxlab-<id>-pod<i>                 rxlab-<id>-node                                  rxlab-<id>-world
    eth0 10.244.0.(10+i)/24  <-veth->  vpod<i> --+
         fd00:244::(10+i)/64                      br0 10.244.0.1/24, fd00:244::1/64
         default via the gateway                  uplink0 10.99.0.2/24  <-veth->  eth0 10.99.0.1/24
                                                         fd00:99::2/64                 fd00:99::1/64
                                                  default via 10.99.0.1 / fd00:99::1   10.244.0.0/24 and
                                                  forwarding on (v4 and v6)            fd00:244::/64 via the node

The same address plan is used by every lab: the namespaces isolate them.  Nothing is created in (or changed
in) the root namespace except the named namespaces themselves (``/run/netns/rxlab-<id>-*``).

Quietness (no packet the tests did not ask for):

* Every namespace gets ``net.ipv6.conf.{all,default}`` and ``net.ipv4.conf.{all,default}`` settings *before* any
  interface exists: no DAD (``accept_dad=0``, ``dad_transmits=0``), no router solicitations, no RA/autoconf, no
  temporary addresses, no link-local addresses at all (``addr_gen_mode=1``), no unsolicited NA/gratuitous ARP
  (``ndisc_notify=0``, ``arp_notify=0``), no redirects, ``rp_filter=0``, minimal unsolicited IGMP/MLD report
  intervals and no IGMP reports for link-local groups.
* Interfaces that carry addresses are ``NOARP`` (``ip link set … arp off``): the kernel then does not join the
  solicited-node multicast groups of its IPv6 addresses, which removes the MLD reports it otherwise sends when
  an address is added or an interface comes up.  ``NOARP`` is harmless because every pair of addresses that
  talk has a PERMANENT neighbour entry (ARP and NDP) and the bridge has static FDB entries for every pod, so
  there is no ARP, no neighbour discovery and no unknown-unicast flooding either.
* The node forwards IPv6 with the per-interface ``force_forwarding`` switch (Linux >= 6.17) on ``br0`` and
  ``uplink0`` instead of ``net.ipv6.conf.all.forwarding=1``, because the latter joins the all-routers group
  ``ff02::2`` and reports it with MLD.  On older kernels the lab falls back to ``all.forwarding=1`` and the
  node's ``br0``/``uplink0`` send a couple of MLDv2 reports right after they come up (``up()`` then waits for
  them to finish).  IPv6 is disabled on the bridge ports (``vpod<i>``): an L2 port needs none.
* Bridge: no STP, forward delay 0, multicast snooping off (so it never sends queries).
* TCP: no tail-loss probes (``net.ipv4.tcp_early_retrans=0``), so a starved receiver does not make the sender probe
  with an extra segment; a test's exact packet counts do not depend on CPU scheduling.

What remains: nothing.  After ``up()`` returns, no counter of any lab interface moves on an idle lab, and
``up()`` itself sends no packet either (tests/test_lab.py checks an idle second; measured on Linux 6.18).
Without the suppression (``Lab(noarp=False)``, or the ``all.forwarding`` fallback) the kernel sends 2 MLDv2
reports per IPv6 interface within ~30 ms of it coming up (and the bridge floods the node's to every pod port);
``up()`` then waits until the node's counters have been still for 150 ms, so they never land in a measurement.
Traffic that *applications* cause (e.g. a socket joining a multicast group) is of course not suppressed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from retina_core.netns import NETNS_RUN_DIR, run_in_netns

NETNS_DIR = Path(NETNS_RUN_DIR)
NS_PREFIX = "rxlab-"

# Address plan (identical in every lab).
POD_CIDR4 = "10.244.0.0/24"
POD_CIDR6 = "fd00:244::/64"
GATEWAY4 = "10.244.0.1"
GATEWAY6 = "fd00:244::1"
NODE_UPLINK4 = "10.99.0.2"
NODE_UPLINK6 = "fd00:99::2"
WORLD4 = "10.99.0.1"
WORLD6 = "fd00:99::1"
UPLINK_PREFIX4 = 24
UPLINK_PREFIX6 = 64

BRIDGE = "br0"
UPLINK = "uplink0"
WORLD_IF = "eth0"
POD_IF = "eth0"
MAX_PODS = 240  # 10.244.0.10 … 10.244.0.249

# Deterministic, locally administered MACs (02:…): neighbour entries can be written in the same batch.
BRIDGE_MAC = "02:00:0a:f4:00:01"
UPLINK_MAC = "02:00:0a:63:00:02"
WORLD_MAC = "02:00:0a:63:00:01"


def pod_mac(i: int) -> str:
    return f"02:00:0a:f4:00:{10 + i:02x}"


def pod_host_mac(i: int) -> str:
    return f"02:01:0a:f4:00:{10 + i:02x}"


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class Pod:
    """One pod: a namespace with ``eth0``, whose veth peer ``host_ifname`` sits on the node's bridge."""

    name: str  # "pod-<i>", the Kubernetes pod name used in the inventory
    netns: str  # "rxlab-<id>-pod<i>"
    ifname: str  # "eth0"
    host_ifname: str  # "vpod<i>" in the node namespace
    ipv4: str
    ipv6: str
    mac: str
    host_mac: str = ""
    index: int = 0
    app: str = ""

    def ip(self, ipv6: bool = False) -> str:
        return self.ipv6 if ipv6 else self.ipv4


# --------------------------------------------------------------------------------------------------------------
# Helpers that run inside a namespace without a process: a throw-away thread enters the namespace (see
# retina_core.netns); the rest of the process is not affected. ``in_netns(ns, fn, *args)`` returns fn's result.
in_netns = run_in_netns


def _write_sysctls(settings: Sequence[tuple[str, str | int]], optional: Iterable[str] = ()) -> list[str]:
    """Write ``net.*`` sysctls in the calling thread's namespace. Returns the keys that do not exist."""
    optional = set(optional)
    missing = []
    for key, value in settings:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        except FileNotFoundError:
            if key not in optional:
                raise LabError(f"sysctl {key} does not exist")
            missing.append(key)
    return missing


def _sysctl_exists(key: str) -> bool:
    return os.path.exists("/proc/sys/" + key.replace(".", "/"))


def _read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


# SIOCETHTOOL with the legacy one-feature commands: works without the ethtool binary.
_SIOCETHTOOL = 0x8946
_ETHTOOL_CMDS = {  # feature: (get, set)
    "tso": (0x0000001E, 0x0000001F),
    "gso": (0x00000023, 0x00000024),
    "gro": (0x0000002B, 0x0000002C),
}


class _EthtoolValue(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32)]


def _ethtool_ioctl(ifname: str, cmd: int, data: int = 0) -> int:
    val = _EthtoolValue(cmd, data)
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(val)) + b"\0" * 16
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), _SIOCETHTOOL, bytearray(ifr))
    return val.data


def _ioctl_set_offloads(ifnames: Sequence[str], wanted: dict[str, bool]) -> None:
    for ifname in ifnames:
        for feat, on in wanted.items():
            _ethtool_ioctl(ifname, _ETHTOOL_CMDS[feat][1], 1 if on else 0)


def _ioctl_get_offloads(ifname: str) -> dict[str, bool]:
    return {feat: bool(_ethtool_ioctl(ifname, cmds[0])) for feat, cmds in _ETHTOOL_CMDS.items()}


def _run(argv: Sequence[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True)
    if check and p.returncode != 0:
        detail = (p.stderr or p.stdout).strip()
        raise LabError(f"{' '.join(argv)} failed ({p.returncode}): {detail}")
    return p


def _ip_batch(ns: str | None, lines: Sequence[str], tool: str = "ip") -> None:
    if not lines:
        return
    argv = [tool] + (["-n", ns] if ns else []) + ["-batch", "-"]
    _run(argv, input="\n".join(lines) + "\n")


def existing_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Names under /run/netns starting with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    p = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def delete_namespaces(names: Iterable[str], kill_processes: bool = True) -> list[str]:
    """Delete the named namespaces (those that exist); first kill processes still running inside them (they
    were started by a lab and would otherwise keep the namespace, and its interfaces, alive).  Returns the
    names that were deleted."""
    names = [n for n in names if (NETNS_DIR / n).exists()]
    if not names:
        return []
    if kill_processes:
        me = os.getpid()
        pids = {pid for n in names for pid in netns_pids(n) if pid != me}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 2.0
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if os.path.exists(f"/proc/{pid}")
                    and _proc_state(pid) not in ("Z", "X", None)}
            if pids:
                time.sleep(0.01)
    p = _run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names), check=False)
    left = [n for n in names if (NETNS_DIR / n).exists()]
    if left:  # retry one by one to report the actual error
        errors = []
        for n in left:
            q = _run(["ip", "netns", "del", n], check=False)
            if q.returncode != 0 and (NETNS_DIR / n).exists():
                errors.append(f"{n}: {q.stderr.strip() or p.stderr.strip()}")
        if errors:
            raise LabError("could not delete namespaces: " + "; ".join(errors))
    return names


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


# --------------------------------------------------------------------------------------------------------------


def _common_sysctls() -> list[tuple[str, str | int]]:
    s: list[tuple[str, str | int]] = []
    for scope in ("all", "default"):
        v6 = f"net.ipv6.conf.{scope}."
        s += [
            (v6 + "accept_dad", 0),
            (v6 + "dad_transmits", 0),
            (v6 + "optimistic_dad", 0),
            (v6 + "enhanced_dad", 0),
            (v6 + "router_solicitations", 0),
            (v6 + "accept_ra", 0),
            (v6 + "autoconf", 0),
            (v6 + "use_tempaddr", 0),
            (v6 + "accept_redirects", 0),
            (v6 + "ndisc_notify", 0),
            (v6 + "addr_gen_mode", 1),  # no link-local address: nothing to defend, no group to report
            (v6 + "mldv1_unsolicited_report_interval", 1),  # ms; any unavoidable report goes out at once
            (v6 + "mldv2_unsolicited_report_interval", 1),
        ]
        v4 = f"net.ipv4.conf.{scope}."
        s += [
            (v4 + "arp_notify", 0),
            (v4 + "send_redirects", 0),
            (v4 + "accept_redirects", 0),
            (v4 + "rp_filter", 0),
            (v4 + "igmpv2_unsolicited_report_interval", 1),
            (v4 + "igmpv3_unsolicited_report_interval", 1),
        ]
    s.append(("net.ipv4.igmp_link_local_mcast_reports", 0))
    # No tail-loss probes (TCP's early retransmit): on a busy machine a probe fires whenever the receiver's ACK waits
    # for a CPU longer than ~2 RTTs, and the probe is an extra packet on the wire (a second FIN, a duplicate
    # segment) that the lab's exact counts would then depend on. Real losses (the tests' droppers) are still
    # recovered by fast retransmit and RTO. Per network namespace (IPv4 and IPv6 TCP alike).
    s.append(("net.ipv4.tcp_early_retrans", 0))
    return s


_OPTIONAL_SYSCTLS = {f"net.ipv6.conf.{s}.{k}" for s in ("all", "default")
                     for k in ("enhanced_dad", "optimistic_dad", "addr_gen_mode")} | {"net.ipv4.tcp_early_retrans"}


class Lab:
    """A node with pods, a bridge and an uplink to a "world" namespace.  Use as a context manager::

        with Lab(pods=2) as lab:
            lab.run(lab.pods[0], ["ping", "-c1", lab.pods[1].ipv4])
    """

    def __init__(self, pods: int = 2, lab_id: str | None = None, *, offloads: bool = True,
                 noarp: bool = True, apps: Sequence[str] | None = None, node_name: str = "node"):
        if not 1 <= pods <= MAX_PODS:
            raise ValueError(f"pods must be 1..{MAX_PODS}")
        if lab_id is not None:
            # letters and digits only: "rxlab-<id>-" is then an unambiguous prefix of this lab's namespaces
            if not lab_id or len(lab_id) > 20 or not (lab_id.isascii() and lab_id.isalnum()):
                raise ValueError("lab id: 1-20 letters or digits")
        self.id = lab_id or secrets.token_hex(3)
        self._id_given = lab_id is not None
        self.n_pods = pods
        self.offloads = offloads
        self.noarp = noarp
        self.node_name = node_name
        self._apps = list(apps) if apps else None
        self._made: list[str] = []
        self.is_up = False
        self.ipv6_forwarding_mode = ""  # "force_forwarding" or "all.forwarding" after up()
        self.offload_method = ""  # "ethtool" or "ioctl" when offloads were changed
        self.up_seconds = 0.0
        self._build_model()

    # ----- model -------------------------------------------------------------------------------------------

    def _build_model(self) -> None:
        p = f"{NS_PREFIX}{self.id}-"
        self.node_ns = p + "node"
        self.world_ns = p + "world"
        self.pods: list[Pod] = [
            Pod(name=f"pod-{i}", netns=f"{p}pod{i}", ifname=POD_IF, host_ifname=f"vpod{i}",
                ipv4=f"10.244.0.{10 + i}", ipv6=f"fd00:244::{10 + i}", mac=pod_mac(i),
                host_mac=pod_host_mac(i), index=i,
                app=(self._apps[i % len(self._apps)] if self._apps else f"app-{i}"))
            for i in range(self.n_pods)
        ]
        self.gateway4, self.gateway6 = GATEWAY4, GATEWAY6
        self.node_ipv4, self.node_ipv6 = NODE_UPLINK4, NODE_UPLINK6
        self.world_ipv4, self.world_ipv6 = WORLD4, WORLD6
        self.bridge, self.uplink, self.world_ifname = BRIDGE, UPLINK, WORLD_IF

    @property
    def namespaces(self) -> list[str]:
        return [self.node_ns, self.world_ns] + [p.netns for p in self.pods]

    def pod(self, key: int | str | Pod) -> Pod:
        """A pod by index, name ("pod-1"), namespace-style name ("pod1") or the Pod itself."""
        if isinstance(key, Pod):
            return key
        if isinstance(key, int):
            return self.pods[key]
        for p in self.pods:
            if key in (p.name, p.netns, f"pod{p.index}", p.ipv4, p.ipv6):
                return p
        raise KeyError(f"no pod {key!r} in lab {self.id}")

    def ns(self, target: str | int | Pod) -> str:
        """Namespace name for a Pod, a pod index, "node", "world", "pod<i>"/"pod-<i>" or a full name."""
        if isinstance(target, (Pod, int)):
            return self.pod(target).netns
        if target == "node":
            return self.node_ns
        if target == "world":
            return self.world_ns
        if target in self.namespaces:
            return target
        return self.pod(target).netns

    # ----- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        if not self.is_up:
            self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "Lab":
        if self.is_up:
            return self
        t0 = time.monotonic()
        try:
            self._create_namespaces()
            self._configure()
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        self.is_up = True
        self.up_seconds = time.monotonic() - t0
        return self

    def down(self) -> None:
        """Remove every namespace this lab made (idempotent; also after a partial ``up()``).  A Lab rebuilt
        from a state file (``from_state``) owns all of its namespaces."""
        names = list(self._made)
        try:
            delete_namespaces(names)
        finally:
            self._made = [n for n in names if (NETNS_DIR / n).exists()]
            self.is_up = False

    def _create_namespaces(self) -> None:
        for attempt in range(20):
            taken = [n for n in self.namespaces if (NETNS_DIR / n).exists()]
            if not taken:
                break
            if self._id_given:
                raise LabError(f"lab {self.id} exists already ({', '.join(taken)}); "
                               f"remove it with `retina-exporter lab down --id {self.id}`")
            self.id = secrets.token_hex(3)
            self._build_model()
        # Record before creating: a partial failure still leaves a complete list for down().
        self._made = list(self.namespaces)
        _ip_batch(None, [f"netns add {n}" for n in self.namespaces])

    def _configure(self) -> None:
        common = _common_sysctls()
        # 1. namespace-wide sysctls, before any interface exists (new interfaces copy "default").
        for ns in self.namespaces:
            extra: list[tuple[str, str | int]] = []
            if ns == self.node_ns:
                extra = [("net.ipv4.ip_forward", 1),
                         ("net.ipv6.conf.default.disable_ipv6", 1)]  # bridge ports: L2 only
            in_netns(ns, _write_sysctls, common + extra, _OPTIONAL_SYSCTLS)

        # 2. node links (the peers are created directly in the world/pod namespaces).
        node1 = ["link set lo up",
                 f"link add {BRIDGE} address {BRIDGE_MAC} type bridge stp_state 0 forward_delay 0 "
                 f"mcast_snooping 0",
                 f"link add {UPLINK} address {UPLINK_MAC} type veth peer name {WORLD_IF} address {WORLD_MAC} "
                 f"netns {self.world_ns}"]
        for p in self.pods:
            node1.append(f"link add {p.host_ifname} address {p.host_mac} type veth peer name {p.ifname} "
                         f"address {p.mac} netns {p.netns}")
        _ip_batch(self.node_ns, node1)

        # 3. per-interface IPv6 switches in the node: IPv6 on br0/uplink0 only, forwarding per interface.
        def node_dev_sysctls() -> str:
            s: list[tuple[str, str | int]] = []
            for dev in (BRIDGE, UPLINK):
                s.append((f"net.ipv6.conf.{dev}.disable_ipv6", 0))
            if _sysctl_exists(f"net.ipv6.conf.{BRIDGE}.force_forwarding"):
                s += [(f"net.ipv6.conf.{dev}.force_forwarding", 1) for dev in (BRIDGE, UPLINK)]
                mode = "force_forwarding"
            else:
                s.append(("net.ipv6.conf.all.forwarding", 1))
                mode = "all.forwarding"
            _write_sysctls(s)
            return mode

        self.ipv6_forwarding_mode = in_netns(self.node_ns, node_dev_sysctls)

        arp = "arp off" if self.noarp else "arp on"
        node2 = [f"link set {BRIDGE} {arp}", f"link set {UPLINK} {arp}"]
        for p in self.pods:
            node2 += [f"link set {p.host_ifname} master {BRIDGE}", f"link set {p.host_ifname} up"]
        node2 += [f"addr add {GATEWAY4}/24 dev {BRIDGE}",
                  f"addr add {GATEWAY6}/64 dev {BRIDGE} nodad",
                  f"addr add {NODE_UPLINK4}/{UPLINK_PREFIX4} dev {UPLINK}",
                  f"addr add {NODE_UPLINK6}/{UPLINK_PREFIX6} dev {UPLINK} nodad",
                  f"link set {BRIDGE} up", f"link set {UPLINK} up"]
        for p in self.pods:
            node2 += [f"neigh replace {p.ipv4} lladdr {p.mac} dev {BRIDGE} nud permanent",
                      f"neigh replace {p.ipv6} lladdr {p.mac} dev {BRIDGE} nud permanent"]
        node2 += [f"neigh replace {WORLD4} lladdr {WORLD_MAC} dev {UPLINK} nud permanent",
                  f"neigh replace {WORLD6} lladdr {WORLD_MAC} dev {UPLINK} nud permanent",
                  f"route add default via {WORLD4} dev {UPLINK}",
                  f"route add ::/0 via {WORLD6} dev {UPLINK}"]

        world = ["link set lo up", f"link set {WORLD_IF} {arp}",
                 f"addr add {WORLD4}/{UPLINK_PREFIX4} dev {WORLD_IF}",
                 f"addr add {WORLD6}/{UPLINK_PREFIX6} dev {WORLD_IF} nodad",
                 f"link set {WORLD_IF} up",
                 f"neigh replace {NODE_UPLINK4} lladdr {UPLINK_MAC} dev {WORLD_IF} nud permanent",
                 f"neigh replace {NODE_UPLINK6} lladdr {UPLINK_MAC} dev {WORLD_IF} nud permanent",
                 f"route add {POD_CIDR4} via {NODE_UPLINK4} dev {WORLD_IF}",
                 f"route add {POD_CIDR6} via {NODE_UPLINK6} dev {WORLD_IF}"]

        pod_batches = {}
        for p in self.pods:
            lines = ["link set lo up", f"link set {p.ifname} {arp}",
                     f"addr add {p.ipv4}/24 dev {p.ifname}",
                     f"addr add {p.ipv6}/64 dev {p.ifname} nodad",
                     f"link set {p.ifname} up",
                     f"neigh replace {GATEWAY4} lladdr {BRIDGE_MAC} dev {p.ifname} nud permanent",
                     f"neigh replace {GATEWAY6} lladdr {BRIDGE_MAC} dev {p.ifname} nud permanent"]
            for q in self.pods:
                if q is not p:
                    lines += [f"neigh replace {q.ipv4} lladdr {q.mac} dev {p.ifname} nud permanent",
                              f"neigh replace {q.ipv6} lladdr {q.mac} dev {p.ifname} nud permanent"]
            lines += [f"route add default via {GATEWAY4} dev {p.ifname}",
                      f"route add ::/0 via {GATEWAY6} dev {p.ifname}"]
            pod_batches[p.netns] = lines

        fdb = [f"fdb replace {p.mac} dev {p.host_ifname} master static" for p in self.pods]

        # 4. run the independent batches in parallel.
        jobs: list[tuple[list[str], str]] = [
            (["ip", "-n", self.node_ns, "-batch", "-"], "\n".join(node2) + "\n"),
            (["ip", "-n", self.world_ns, "-batch", "-"], "\n".join(world) + "\n"),
            (["bridge", "-n", self.node_ns, "-batch", "-"], "\n".join(fdb) + "\n"),
        ] + [(["ip", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n") for ns, lines in pod_batches.items()]
        # The bridge FDB needs the ports enslaved first: run node2 alone, then the rest together.
        _run(jobs[0][0], input=jobs[0][1])
        procs = [(argv, subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)) for argv, _ in jobs[1:]]
        errors = []
        for (argv, proc), (_, text) in zip(procs, jobs[1:]):
            out, err = proc.communicate(text)
            if proc.returncode != 0:
                errors.append(f"{' '.join(argv)}: {(err or out).strip()}")
        if errors:
            raise LabError("lab configuration failed: " + "; ".join(errors))

        if not self.offloads:
            self.disable_offloads()

        if self.ipv6_forwarding_mode == "all.forwarding" or not self.noarp:
            # Older kernels (all.forwarding: br0/uplink0 report ff02::2) or noarp=False (every address's
            # solicited-node group): the kernel sends 2 MLDv2 reports per interface within ~30 ms of coming
            # up.  Let them pass now rather than during someone's measurement.  (The node namespace sees all
            # of them: the pods' on the vpod ports, the world's on uplink0.)
            self.wait_quiet(quiet_for=0.15, timeout=2.0)

    def wait_quiet(self, quiet_for: float = 0.15, timeout: float = 2.0) -> bool:
        """Wait until no counter in the node namespace moved for ``quiet_for`` seconds.  False on timeout."""
        deadline = time.monotonic() + timeout
        last = self.all_link_stats(self.node_ns)
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.01)
            now = self.all_link_stats(self.node_ns)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return True
        return False

    def interfaces(self) -> list[tuple[str, str]]:
        """Every (namespace, ifname) the lab made, loopbacks excluded."""
        out = [(self.node_ns, BRIDGE), (self.node_ns, UPLINK), (self.world_ns, WORLD_IF)]
        for p in self.pods:
            out += [(self.node_ns, p.host_ifname), (p.netns, p.ifname)]
        return out

    # ----- running things ------------------------------------------------------------------------------------

    def cmd(self, ns: str | int | Pod, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` in namespace ``ns`` (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.ns(ns), *map(str, argv)]

    def run(self, ns: str | int | Pod, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """``subprocess.run`` in a namespace.  Defaults: capture_output=True, text=True, check=True."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", True)
        return subprocess.run(self.cmd(ns, argv), **kw)

    def popen(self, ns: str | int | Pod, argv: Sequence[str], **kw) -> subprocess.Popen:
        """``subprocess.Popen`` in a namespace."""
        return subprocess.Popen(self.cmd(ns, argv), **kw)

    # ----- counters and offloads -----------------------------------------------------------------------------

    def link_stats(self, ns: str | int | Pod, ifname: str | None = None) -> dict[str, int]:
        """Kernel counters (IFLA_STATS64) of one interface: rx/tx packets and bytes (+ drops and errors).
        For a Pod without ``ifname``: the pod's ``eth0``."""
        if ifname is None:
            ifname = self.pod(ns).ifname  # type: ignore[arg-type]
        p = _run(["ip", "-n", self.ns(ns), "-j", "-s", "link", "show", "dev", ifname])
        return _stats_from_json(json.loads(p.stdout)[0])

    def all_link_stats(self, ns: str | int | Pod) -> dict[str, dict[str, int]]:
        """Counters of every interface in a namespace, by name (one netlink dump)."""
        p = _run(["ip", "-n", self.ns(ns), "-j", "-s", "link", "show"])
        return {e["ifname"]: _stats_from_json(e) for e in json.loads(p.stdout)}

    def host_stats(self, pod: int | str | Pod) -> dict[str, int]:
        """Counters of the pod's host-side veth (in the node namespace): rx = sent by the pod."""
        return self.link_stats(self.node_ns, self.pod(pod).host_ifname)

    def set_offloads(self, ns: str | int | Pod, ifname: str | Sequence[str], tso: bool | None = False,
                     gso: bool | None = False, gro: bool | None = False, method: str | None = None) -> str:
        """Switch TSO/GSO/GRO on or off (None: leave alone) on one or more interfaces of a namespace.

        Uses ``ethtool -K`` when the binary is installed, else the SIOCETHTOOL ioctl (legacy per-feature
        commands) from a thread inside the namespace; ``method`` ("ethtool"/"ioctl") forces one.  Returns the
        method used."""
        ifnames = [ifname] if isinstance(ifname, str) else list(ifname)
        wanted = {k: v for k, v in (("tso", tso), ("gso", gso), ("gro", gro)) if v is not None}
        if not wanted or not ifnames:
            return ""
        method = method or ("ethtool" if shutil.which("ethtool") else "ioctl")
        if method == "ethtool":
            args = " ".join(f"{k} {'on' if v else 'off'}" for k, v in wanted.items())
            script = " && ".join(f"ethtool -K {i} {args}" for i in ifnames)
            self.run(ns, ["sh", "-c", script])
        elif method == "ioctl":
            in_netns(self.ns(ns), _ioctl_set_offloads, ifnames, wanted)
        else:
            raise ValueError(f"unknown offload method {method!r}")
        return method

    def get_offloads(self, ns: str | int | Pod, ifname: str) -> dict[str, bool]:
        """Current TSO/GSO/GRO state of an interface (SIOCETHTOOL)."""
        return in_netns(self.ns(ns), _ioctl_get_offloads, ifname)

    def disable_offloads(self, method: str | None = None) -> None:
        """TSO, GSO and GRO off on every lab interface: one skb per wire packet everywhere."""
        by_ns: dict[str, list[str]] = {}
        for ns, ifname in self.interfaces():
            by_ns.setdefault(ns, []).append(ifname)
        for ns, ifnames in by_ns.items():
            self.offload_method = self.set_offloads(ns, ifnames, False, False, False, method=method)
        self.offloads = False

    # ----- persistence and inventory -------------------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "id": self.id,
            "pods": self.n_pods,
            "offloads": self.offloads,
            "noarp": self.noarp,
            "apps": self._apps,
            "node_name": self.node_name,
            "namespaces": {"node": self.node_ns, "world": self.world_ns},
            "endpoints": [asdict(p) for p in self.pods],
            "node": {"ns": self.node_ns, "bridge": BRIDGE, "uplink": UPLINK, "gateway4": GATEWAY4,
                     "gateway6": GATEWAY6, "ipv4": NODE_UPLINK4, "ipv6": NODE_UPLINK6},
            "world": {"ns": self.world_ns, "ifname": WORLD_IF, "ipv4": WORLD4, "ipv6": WORLD6},
            "ipv6_forwarding_mode": self.ipv6_forwarding_mode,
            "created_by_pid": os.getpid(),
            "created_at": time.time(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "Lab":
        lab = cls(pods=int(state["pods"]), lab_id=state["id"], offloads=state.get("offloads", True),
                  noarp=state.get("noarp", True), apps=state.get("apps"),
                  node_name=state.get("node_name", "node"))
        lab._made = [n for n in lab.namespaces]
        lab.is_up = all((NETNS_DIR / n).exists() for n in lab.namespaces)
        lab.ipv6_forwarding_mode = state.get("ipv6_forwarding_mode", "")
        return lab

    def save_state(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_state(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def inventory(self) -> dict:
        endpoints = []
        for p in self.pods:
            endpoints.append({
                "ips": [p.ipv4, p.ipv6],
                "namespace": "lab",
                "podName": p.name,
                "labels": {"app": p.app, "lab": "true"},
                "workload": {"kind": "Deployment", "name": p.app},
                "node": self.node_name,
            })
        return {
            "endpoints": endpoints,
            "services": [],
            "nodes": [{"name": self.node_name, "ips": [NODE_UPLINK4, NODE_UPLINK6, GATEWAY4, GATEWAY6],
                       "zone": "lab-zone-a"}],
        }

    def write_inventory(self, path: str | os.PathLike) -> Path:
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.inventory(), sort_keys=False))
        return path

    def describe(self) -> str:
        lines = [f"lab {self.id}",
                 f"  node   {self.node_ns}: {BRIDGE} {GATEWAY4}/24 {GATEWAY6}/64, "
                 f"{UPLINK} {NODE_UPLINK4}/{UPLINK_PREFIX4} {NODE_UPLINK6}/{UPLINK_PREFIX6}",
                 f"  world  {self.world_ns}: {WORLD_IF} {WORLD4}/{UPLINK_PREFIX4} {WORLD6}/{UPLINK_PREFIX6}"]
        for p in self.pods:
            lines.append(f"  {p.name:<6} {p.netns}: {p.ifname} {p.ipv4} {p.ipv6} {p.mac} "
                         f"(host side {p.host_ifname})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Lab(id={self.id!r}, pods={self.n_pods}, up={self.is_up})"


def _stats_from_json(entry: dict) -> dict[str, int]:
    st = entry.get("stats64") or entry.get("stats") or {}
    rx, tx = st.get("rx", {}), st.get("tx", {})
    return {
        "rx_packets": int(rx.get("packets", 0)),
        "tx_packets": int(tx.get("packets", 0)),
        "rx_bytes": int(rx.get("bytes", 0)),
        "tx_bytes": int(tx.get("bytes", 0)),
        "rx_dropped": int(rx.get("dropped", 0)),
        "tx_dropped": int(tx.get("dropped", 0)),
        "rx_errors": int(rx.get("errors", 0)),
        "tx_errors": int(tx.get("errors", 0)),
    }


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}
