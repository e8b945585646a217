"""Which network namespaces' drops the dropreason plugin counts.

``skb:kfree_skb`` is global: it fires for every network namespace on the host. Two scopes:

* ``all`` (default): every namespace. On a Kubernetes node the agent runs in the host namespace and every other
  namespace is a pod's (or the node's own infrastructure), so all of them are this node's drops; it costs
  nothing per drop and misses nothing, including pods created a moment ago.
* ``node``: the agent's own namespace plus the namespaces at the other end of its pod veths (a ``veth`` with
  ``IFLA_LINK_NETNSID``, as the packetparser's veth watcher defines a pod veth), minus the peers of
  ``hostInterfaces``. For hosts that run unrelated namespaces (other labs, other containers, VMs' helpers).
  Found at start-up and re-checked on every reconcile; a pod's drops in the seconds between its creation and
  the next reconcile are not counted (they are counted in ``out_of_scope`` of ``/debug/plugins``).

A namespace is identified by its inode number (``ns.inum``, what ``stat /proc/<pid>/ns/net`` shows), which the
BPF program reads from ``skb->dev`` (else ``skb->sk``). To find which namespace a veth's ``IFLA_LINK_NETNSID``
stands for, every namespace on the host (``/run/netns/*`` and ``/proc/<pid>/ns/net``, deduplicated by inode) is
asked for the id the agent's namespace gave it (``RTM_GETNSID`` with ``NETNSA_FD``, which does not assign ids).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterable

from retina_core.netns import NETNS_RUN_DIR, run_in_netns
from retina_exporter.datapath.rtnl import get_links
from retina_exporter.datapath.vethwatch import is_pod_veth

SCOPE_ALL = "all"
SCOPE_NODE = "node"
SCOPES = (SCOPE_ALL, SCOPE_NODE)

NETNS_DIR = NETNS_RUN_DIR
RTM_NEWNSID = 88
RTM_GETNSID = 90
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NETNSA_NSID = 1
NETNSA_FD = 3


def netns_inode(path: str = "/proc/self/ns/net") -> int:
    return os.stat(path).st_ino


def _nsid_of_fd(sock: socket.socket, fd: int, seq: int) -> int | None:
    """The id the calling namespace gave the namespace behind ``fd`` (None when it has none)."""
    body = struct.pack("=B3x", socket.AF_UNSPEC) + struct.pack("=HHI", 8, NETNSA_FD, fd)
    msg = struct.pack("=IHHII", 16 + len(body), RTM_GETNSID, NLM_F_REQUEST, seq, 0) + body
    sock.send(msg)
    data = sock.recv(65536)
    _len, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, 0)
    if mtype == NLMSG_ERROR:
        return None
    if mtype != RTM_NEWNSID:
        return None
    off = 16 + 4
    while off + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        if atype == NETNSA_NSID and alen >= 8:
            nsid = struct.unpack_from("=i", data, off + 4)[0]
            return None if nsid < 0 else nsid
        off += (alen + 3) & ~3
    return None


def candidate_namespaces() -> dict[int, str]:
    """inode -> a path that opens it, for every network namespace visible on the host."""
    out: dict[int, str] = {}
    try:
        for name in os.listdir(NETNS_DIR):
            path = os.path.join(NETNS_DIR, name)
            try:
                out.setdefault(os.stat(path).st_ino, path)
            except OSError:
                pass
    except FileNotFoundError:
        pass
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = f"/proc/{pid}/ns/net"
        try:
            out.setdefault(os.stat(path).st_ino, path)
        except OSError:
            pass
    return out


def _discover_here(excluded: set[str]) -> set[int]:
    """In the calling thread's namespace: its inode plus its pod veths' peer namespaces."""
    own = netns_inode("/proc/thread-self/ns/net")
    links = get_links()
    wanted = set()
    for msg in links:
        if is_pod_veth(msg, excluded):
            nsid = msg.get_attr("IFLA_LINK_NETNSID")
            if nsid is not None and nsid >= 0:
                wanted.add(nsid)
    found = {own}
    if not wanted:
        return found
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        sock.settimeout(2.0)
        seq = 1
        for ino, path in candidate_namespaces().items():
            if ino in found:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                nsid = _nsid_of_fd(sock, fd, seq)
            except OSError:
                nsid = None
            finally:
                os.close(fd)
            seq += 1
            if nsid is not None and nsid in wanted:
                found.add(ino)
    finally:
        sock.close()
    return found


def node_namespaces(node_netns: str | None = None, excluded: Iterable[str] = ()) -> set[int]:
    """Inodes of the node's namespace (``node_netns``, a path such as ``/run/netns/x``; default: the caller's)
    and of its pods' namespaces, skipping veths named in ``excluded`` (host interfaces)."""
    excluded = set(excluded)
    if node_netns is None:
        return _discover_here(excluded)
    return run_in_netns(node_netns, _discover_here, excluded, thread_name="dropreason-scope")
