"""retina_exporter.datapath.rtnl (links over rtnetlink without pyroute2): the same links and attributes as pyroute2
reports in a lab's node namespace (bridge, uplink veth, pod veths with their peer namespace ids and master), one
link by index, and link events on the monitor socket."""

from __future__ import annotations

import select
import subprocess
import time

import pytest
from pyroute2 import IPRoute

from retina_exporter.datapath.rtnl import LinkMonitor, get_link, get_links
from retina_exporter.datapath.vethwatch import is_pod_veth, link_kind
from retina_exporter.lab.topology import Lab, in_netns


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


def summary(msg) -> tuple:
    return (msg.get("index"), msg.get_attr("IFLA_IFNAME"), link_kind(msg), msg.get_attr("IFLA_MASTER"),
            msg.get_attr("IFLA_LINK_NETNSID"))


def test_links_as_pyroute2_reports_them(lab):
    def both():
        with IPRoute() as ipr:
            theirs = [summary(m) for m in ipr.get_links()]
        return theirs, [summary(m) for m in get_links()]

    theirs, ours = in_netns(lab.node_ns, both)
    assert ours == theirs
    names = {s[1]: s for s in ours}
    assert names["br0"][2] == "bridge"
    for pod in lab.pods:
        index, _, kind, master, nsid = names[pod.host_ifname]
        assert kind == "veth" and master == names["br0"][0] and nsid is not None and nsid >= 0


def test_one_link_and_pod_veths(lab):
    def look():
        links = get_links()
        vpod = next(m for m in links if m.get_attr("IFLA_IFNAME") == lab.pods[0].host_ifname)
        one = get_link(vpod.get("index"))
        return (summary(one) == summary(vpod), get_link(1 << 30),
                sorted(m.get_attr("IFLA_IFNAME") for m in links if is_pod_veth(m, {lab.uplink})))

    same, missing, veths = in_netns(lab.node_ns, look)
    assert same and missing is None
    assert veths == sorted(p.host_ifname for p in lab.pods)


def test_monitor_sees_a_link_come_and_go(lab):
    name = "rtnltest0"

    def watch():
        mon = LinkMonitor()
        try:
            subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", "rtnltest1"], check=True)
            subprocess.run(["ip", "link", "del", name], check=True)
            events = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and ("RTM_DELLINK", name) not in events:
                if select.select([mon.fileno()], [], [], 0.5)[0]:
                    events += [(m.get("event"), m.get_attr("IFLA_IFNAME")) for m in mon.get()]
            return events
        finally:
            mon.close()
            subprocess.run(["ip", "link", "del", name], check=False, stderr=subprocess.DEVNULL)

    events = in_netns(lab.node_ns, watch)
    mine = [e for e in events if e[1] == name]
    assert mine[0] == ("RTM_NEWLINK", name) and mine[-1] == ("RTM_DELLINK", name)


def test_tcx_agent_path_does_not_import_pyroute2(lab):
    """The veth watcher, the namespace scope and a TCX attacher's stale-filter check use rtnl: pyroute2 (~15 MiB of
    anonymous memory, ~0.3-0.9 s to import) is imported only where a clsact qdisc must be handled."""
    import os
    import sys

    code = (
        "import sys\n"
        "import retina_exporter.plugins.packetparser.plugin, retina_exporter.plugins.dns.plugin\n"
        "from retina_exporter.datapath.tc import TcAttacher\n"
        "from retina_exporter.datapath.rtnl import get_links\n"
        "from retina_exporter.datapath.scope import node_namespaces\n"
        "att = TcAttacher(prefix='retina_')\n"
        "assert att.mode == 'tcx'\n"
        f"att.remove_stale({lab.pods[0].host_ifname!r})\n"
        "get_links(); node_namespaces()\n"
        "att.close()\n"
        "print('pyroute2' in sys.modules)\n"
    )
    out = subprocess.run(["ip", "netns", "exec", lab.node_ns, sys.executable, "-c", code], capture_output=True,
                         text=True, env={**os.environ}, check=True).stdout
    assert out.strip() == "False"
