"""The veth watcher under an event burst: when the kernel drops link events (ENOBUFS: a receive buffer made tiny
here, as a burst of pods on a busy node would overflow a real one), the watcher dumps the links again at once, so
every veth created is reported and every veth deleted is forgotten, without waiting for a reconcile (there is none
here). Found by tests/test_churn_lab.py: pyroute2's socket swallowed ENOBUFS, so a burst of 100 veths was attached
and forgotten only at the next 10 s reconcile."""

from __future__ import annotations

import secrets
import subprocess
import threading

import pytest

from retina_core.netns import enter_netns
from retina_exporter.datapath import vethwatch
from retina_exporter.lab.topology import delete_namespaces
from tests.support.kube_fixtures import wait_for

N = 200


@pytest.fixture
def namespaces():
    prefix = f"rxlab-{secrets.token_hex(3)}-"
    names = [prefix + "node", prefix + "pods"]
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        yield names
    finally:
        delete_namespaces(names)


def ip_batch(ns: str, lines: list[str]) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def test_dropped_link_events_are_recovered_by_a_dump(namespaces, monkeypatch):
    node, pods = namespaces
    monkeypatch.setattr(vethwatch, "RCVBUF_BYTES", 4096)
    added: dict[int, str] = {}
    removed: dict[int, str] = {}
    hold = threading.Event()  # the first add blocks the reading thread until the whole burst is in the kernel

    def on_add(index: int, name: str) -> None:
        hold.wait(30)
        added[index] = name

    watcher = vethwatch.VethWatcher(on_add, lambda i, n: removed.__setitem__(i, n))
    with enter_netns(node):
        ip_batch(node, ["link add warm type veth peer name warm netns " + pods])
        hold.set()
        watcher.start()  # its thread inherits the namespace
    try:
        wait_for(lambda: set(added.values()) == {"warm"}, 10, "the existing veth")
        hold.clear()
        ip_batch(node, [f"link add v{i} type veth peer name p{i} netns {pods}" for i in range(N)])
        ip_batch(node, [f"link set v{i} up" for i in range(N)])
        hold.set()
        want = {f"v{i}" for i in range(N)} | {"warm"}
        wait_for(lambda: set(added.values()) == want, 20, "every veth of the burst", interval_s=0.05)
        assert watcher.overflows >= 1  # the burst did overflow the tiny buffer: the dump found the rest
        assert sorted(watcher.known.values()) == sorted(want)

        ip_batch(node, [f"link del v{i}" for i in range(N)])
        wait_for(lambda: set(removed.values()) == want - {"warm"}, 20, "every deleted veth", interval_s=0.05)
        assert list(watcher.known.values()) == ["warm"]
    finally:
        hold.set()
        watcher.stop()
