"""The netns source (enricher.netns) against real network namespaces that the tests create and always delete.

Namespaces are named ``rxenr-<random>-*`` and the source is filtered to that prefix, so other namespaces on the
host (a lab, another test run) do not matter.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import pytest

from retina_core.identity import KIND_POD, Identity
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes
from enricher.netns import NetnsSource, list_named_netns, own_netns, read_addresses

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

B = ip_bytes


def wait_until(cond, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``cond`` until it is truthy or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


class Namespaces:
    """Creates ``rxenr-<id>-<suffix>`` namespaces and deletes every one of them in :meth:`cleanup`."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.prefix = f"rxenr-{self.id}-"
        self.made: list[str] = []

    def add(self, suffix: str) -> str:
        name = self.prefix + suffix
        self.made.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def cleanup(self) -> None:
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()


@pytest.fixture
def nss():
    n = Namespaces()
    try:
        yield n
    finally:
        n.cleanup()
        assert not [x for x in os.listdir("/run/netns") if x.startswith(n.prefix)]


@pytest.fixture
def pair(nss):
    """Two namespaces joined by a veth pair with IPv4 and IPv6 addresses on each end."""
    a, b = nss.add("a"), nss.add("b")
    va, vb = f"rxe{nss.id}a", f"rxe{nss.id}b"
    sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
    for ns, dev, v4, v6 in ((a, va, "10.251.7.1/24", "fd00:251:7::1/64"), (b, vb, "10.251.7.2/24",
                                                                         "fd00:251:7::2/64")):
        sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
        sh("ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad")
        sh("ip", "-n", ns, "link", "set", dev, "up")
    return a, b, va, vb


@pytest.fixture
def source_for(nss):
    made: list[NetnsSource] = []

    def make(**kw) -> tuple[IPCache, NetnsSource]:
        kw.setdefault("patterns", (nss.prefix + "*",))
        kw.setdefault("poll_interval_s", 0.02)
        kw.setdefault("rescan_interval_s", 0.1)
        src = NetnsSource(node_name="node-x", **kw)
        cache = IPCache()
        src.start(cache)
        made.append(src)
        return cache, src

    yield make
    for s in made:
        s.stop()


def pod_identity(name: str, ip: str, namespace: str = "netns") -> Identity:
    return Identity(KIND_POD, namespace=namespace, pod_name=name, labels=(f"netns={name}",),
                    workloads=(("NetworkNamespace", name),), node_name="node-x", ip=ip)


def test_read_addresses_in_real_namespaces(pair):
    a, b, va, _ = pair
    before = os.stat("/proc/thread-self/ns/net").st_ino
    got = read_addresses({a: f"/run/netns/{a}", b: f"/run/netns/{b}", "missing": "/run/netns/rxenr-none"})
    assert sorted(got[a]) == ["10.251.7.1", "fd00:251:7::1"]  # no 127.0.0.1, ::1 or fe80::
    assert sorted(got[b]) == ["10.251.7.2", "fd00:251:7::2"]
    assert isinstance(got["missing"], FileNotFoundError)
    assert os.stat("/proc/thread-self/ns/net").st_ino == before  # the caller's namespace is untouched


def test_identities_from_namespaces(pair, source_for):
    a, b, _, _ = pair
    cache, src = source_for()
    assert cache.loaded
    assert cache.get(B("10.251.7.1")) == pod_identity(a, "10.251.7.1")
    assert cache.get(B("fd00:251:7::1")) == pod_identity(a, "fd00:251:7::1")
    assert cache.get(B("10.251.7.2")) == pod_identity(b, "10.251.7.2")
    assert cache.get(B("fd00:251:7::2")) == pod_identity(b, "fd00:251:7::2")
    assert cache.get(B("127.0.0.1")) is None and cache.get(B("::1")) is None
    assert len(cache) == 4
    st = src.status()
    assert st["loaded"] is True and st["error"] is None and st["entries"] == 4
    assert st["namespaces"] == {a: ["10.251.7.1", "fd00:251:7::1"], b: ["10.251.7.2", "fd00:251:7::2"]}


def test_namespace_label_option(pair, source_for):
    a, _, _, _ = pair
    cache, _ = source_for(namespace="lab")
    assert cache.get(B("10.251.7.1")) == pod_identity(a, "10.251.7.1", namespace="lab")


def test_filter_selects_namespaces(pair, source_for, nss):
    a, b, _, _ = pair
    cache, src = source_for(patterns=(nss.prefix + "b",))
    assert cache.get(B("10.251.7.1")) is None
    assert cache.get(B("10.251.7.2")).pod_name == b
    assert list(src.status()["namespaces"]) == [b]


def test_changes_are_picked_up(pair, source_for, nss):
    a, b, va, _ = pair
    cache, src = source_for()
    # A new address in a known namespace: found by the periodic rescan.
    sh("ip", "-n", a, "addr", "add", "10.251.8.1/32", "dev", va)
    assert wait_until(lambda: cache.get(B("10.251.8.1")) is not None)
    assert cache.get(B("10.251.8.1")) == pod_identity(a, "10.251.8.1")
    # A new namespace: found by the directory poll.
    c = nss.add("c")
    sh("ip", "-n", c, "addr", "add", "10.251.9.1/32", "dev", "lo")
    assert wait_until(lambda: cache.get(B("10.251.9.1")) is not None)
    assert cache.get(B("10.251.9.1")).pod_name == c
    # A deleted namespace: its addresses go.
    sh("ip", "netns", "del", b)
    assert wait_until(lambda: cache.get(B("10.251.7.2")) is None)
    assert cache.get(B("fd00:251:7::2")) is None
    assert cache.get(B("10.251.7.1")).pod_name == a
    assert b not in src.status()["namespaces"]


def test_unchanged_namespaces_do_not_republish(pair, source_for):
    cache, src = source_for()
    scans = src.scans
    assert wait_until(lambda: src.scans >= scans + 4)  # at least two rescans of both namespaces
    assert cache.version == 1


def test_own_namespace_is_skipped(nss, source_for):
    """A named namespace that is the agent's own (``ip netns attach``) is not a pod."""
    name = nss.prefix + "self"
    nss.made.append(name)
    sh("ip", "netns", "attach", name, str(os.getpid()))
    assert list_named_netns()[name][1] == own_netns()
    other = nss.add("other")
    sh("ip", "-n", other, "addr", "add", "10.251.10.1/32", "dev", "lo")
    cache, src = source_for()
    assert list(src.status()["namespaces"]) == [other]
    assert cache.get(B("10.251.10.1")).pod_name == other


def test_duplicate_address_first_name_wins(nss, source_for):
    x, y = nss.add("x"), nss.add("y")
    for ns in (y, x):
        sh("ip", "-n", ns, "addr", "add", "10.251.11.1/32", "dev", "lo")
    cache, _ = source_for()
    assert cache.get(B("10.251.11.1")).pod_name == x


def test_stale_netns_file_is_reported(nss, source_for):
    """A file under /run/netns that is not a namespace (a failed ``ip netns add``) is an error, not a crash."""
    good = nss.add("good")
    sh("ip", "-n", good, "addr", "add", "10.251.12.1/32", "dev", "lo")
    stale = nss.prefix + "stale"
    nss.made.append(stale)
    open(f"/run/netns/{stale}", "w").close()
    try:
        cache, src = source_for()
        st = src.status()
        assert st["loaded"] is True
        assert st["error"].startswith(f"netns {stale!r}: ")
        assert cache.get(B("10.251.12.1")).pod_name == good
    finally:
        os.unlink(f"/run/netns/{stale}")


def test_process_namespaces(source_for):
    """Unnamed namespaces of processes, when enabled, are named ``<comm>-<pid>``."""
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c",
                             "ip link set lo up && ip addr add 10.251.13.1/32 dev lo && exec sleep 60"])
    try:
        name = f"sleep-{proc.pid}"
        assert wait_until(lambda: _comm(proc.pid) == "sleep")
        cache, src = source_for(patterns=(name,), include_processes=True)
        assert wait_until(lambda: cache.get(B("10.251.13.1")) is not None)
        assert cache.get(B("10.251.13.1")) == pod_identity(name, "10.251.13.1")
    finally:
        proc.kill()
        proc.wait()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
