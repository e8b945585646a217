"""The inventory source (enricher.inventory) and the source factory (enricher.source): validation messages,
loading, change detection, malformed rewrites, zones."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE, WORLD, Identity
from enricher.inventory import InventoryError, InventorySource, parse_inventory, parse_inventory_text
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes
from enricher.netns import NetnsSource
from enricher import PollingSource, Source, make_source, parse_enrichment
from retina_core.units import ConfigError
from retina_core.telemetry import ControlPlane


def wait_until(cond, timeout: float = 5.0, interval: float = 0.005):
    """Poll ``cond`` until it is truthy or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


B = ip_bytes


def write_atomic(path: Path, data) -> None:
    """Replace ``path`` the way config management does: write a temporary file, rename it over."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    os.replace(tmp, path)


def pod(ips, name="p", ns="default", **extra):
    return {"ips": ips, "namespace": ns, "podName": name, **extra}


# -- validation ----------------------------------------------------------------------------------------------

BAD = [
    (None, "the file is empty (expected a mapping with endpoints, services and nodes)"),
    ([1], "expected a mapping with endpoints, services and nodes at the top, got list"),
    ({"endpoint": []}, "unknown key 'endpoint' at the top (expected endpoints, services, nodes)"),
    ({"endpoints": {"a": 1}}, "endpoints: expected a list, got mapping"),
    ({"endpoints": ["x"]}, "endpoints[0]: expected a mapping, got string"),
    ({"endpoints": [pod(["10.0.0.1"]), pod(["10.0.0.2"]), pod(["10.0.0.3", "fd00::1", "x"])]},
     "endpoints[2].ips[2]: 'x' is not an IP address"),
    ({"endpoints": [pod(["10.0.0.1/32"])]}, "endpoints[0].ips[0]: '10.0.0.1/32' is not an IP address"),
    ({"endpoints": [pod([10])]}, "endpoints[0].ips[0]: 10 is not an IP address (quote addresses in YAML)"),
    ({"endpoints": [pod("10.0.0.1")]}, "endpoints[0].ips: expected a list of IP addresses, got string"),
    ({"endpoints": [pod([])]}, "endpoints[0].ips: must list at least one IP address"),
    ({"endpoints": [{"namespace": "a", "podName": "b"}]}, "endpoints[0].ips: required"),
    ({"endpoints": [{"ips": ["10.0.0.1"], "podName": "b"}]}, "endpoints[0].namespace: required"),
    ({"endpoints": [{"ips": ["10.0.0.1"], "namespace": "a", "podName": ""}]},
     "endpoints[0].podName: must not be empty"),
    ({"endpoints": [{"ips": ["10.0.0.1"], "namespace": 5, "podName": "b"}]},
     "endpoints[0].namespace: expected a string, got integer"),
    ({"endpoints": [pod(["10.0.0.1"], podname="x")]},
     "endpoints[0]: unknown field 'podname' (expected ips, namespace, podName, labels, workload, owner, node)"),
    ({"endpoints": [pod(["10.0.0.1"], labels={"enabled": True})]},
     "endpoints[0].labels.enabled: expected a string, got boolean (quote the value)"),
    ({"endpoints": [pod(["10.0.0.1"], labels=["a=b"])]},
     "endpoints[0].labels: expected a mapping of strings, got list"),
    ({"endpoints": [pod(["10.0.0.1"], workload={"kind": "Deployment"})]}, "endpoints[0].workload.name: required"),
    ({"endpoints": [pod(["10.0.0.1"], owner={"kind": "ReplicaSet", "name": "r", "uid": "u"})]},
     "endpoints[0].owner: unknown field 'uid' (expected kind, name)"),
    ({"endpoints": [pod(["10.0.0.1"], name="a"), pod(["fd00::1", "10.0.0.1"], name="b")]},
     "endpoints[1].ips[1]: 10.0.0.1 is already used by endpoints[0] (default/a)"),
    ({"endpoints": [pod(["FD00:0::1", "fd00::1"], name="a")]},
     "endpoints[0].ips[1]: fd00::1 is already used by endpoints[0] (default/a)"),
    ({"services": [{"namespace": "a", "name": "s"}]}, "services[0]: needs 'ip' or 'ips'"),
    ({"services": [{"ip": "10.0.0.1", "ips": ["10.0.0.2"], "namespace": "a", "name": "s"}]},
     "services[0]: give either 'ip' or 'ips', not both"),
    ({"services": [{"ip": "nope", "namespace": "a", "name": "s"}]}, "services[0].ip: 'nope' is not an IP address"),
    ({"services": [{"ips": ["10.0.0.1", "nope"], "namespace": "a", "name": "s"}]},
     "services[0].ips[1]: 'nope' is not an IP address"),
    ({"services": [{"ip": "10.0.0.1", "namespace": "a"}]}, "services[0].name: required"),
    ({"services": [{"ip": "10.0.0.1", "namespace": "a", "name": "s", "selector": {"app": 1}}]},
     "services[0].selector.app: expected a string, got integer (quote the value)"),
    ({"services": [{"ip": "10.0.0.1", "namespace": "a", "name": "s"},
                   {"ip": "10.0.0.1", "namespace": "a", "name": "t"}]},
     "services[1].ip: 10.0.0.1 is already used by services[0] (a/s)"),
    ({"nodes": [{"ips": ["10.0.0.1"]}]}, "nodes[0].name: required"),
    ({"nodes": [{"name": "n", "ips": ["10.0.0.1", "bad"]}]}, "nodes[0].ips[1]: 'bad' is not an IP address"),
    ({"nodes": [{"name": "n", "zone": 3}]}, "nodes[0].zone: expected a string, got integer"),
    ({"nodes": [{"name": "n"}, {"name": "n"}]}, "nodes[1].name: 'n' is already used by nodes[0]"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m for _, m in BAD])
def test_validation_messages(data, message):
    with pytest.raises(InventoryError) as e:
        parse_inventory(data)
    assert str(e.value) == message


def test_yaml_syntax_error_message():
    with pytest.raises(InventoryError) as e:
        parse_inventory_text("endpoints:\n  - ips: [10.0.0.1\n    namespace: a\n")
    assert str(e.value).startswith("invalid YAML: ")
    assert " at line " in str(e.value) and "\n" not in str(e.value)


def test_same_address_in_different_lists_is_allowed():
    inv = parse_inventory({"endpoints": [pod(["10.0.0.1"])],
                           "services": [{"ip": "10.0.0.1", "namespace": "default", "name": "s"}],
                           "nodes": [{"name": "n", "ips": ["10.0.0.1"]}]})
    assert inv.entries == 3
    c = IPCache()
    c.publish("inventory", pods=inv.pods, services=inv.services, nodes=inv.nodes)
    assert c.get(B("10.0.0.1")).kind == KIND_POD


def test_empty_lists_and_minimal_entries():
    inv = parse_inventory({"endpoints": None, "services": [], "nodes": [{"name": "lonely"}]})
    assert inv.entries == 0 and inv.counts == {"endpoints": 0, "services": 0, "nodes": 1}
    inv = parse_inventory({"endpoints": [pod(["10.0.0.1"], node="unknown-node")]})
    assert inv.pods[B("10.0.0.1")] == Identity(KIND_POD, namespace="default", pod_name="p", node_name="unknown-node",
                                               ip="10.0.0.1")


# -- identities from an inventory -------------------------------------------------------------------------------


def test_selectors_zones_and_workloads():
    inv = parse_inventory({
        "endpoints": [
            pod(["10.0.0.1"], name="a", ns="x", labels={"app": "web", "v": "1"}, node="n1",
                workload={"kind": "Deployment", "name": "web"}, owner={"kind": "ReplicaSet", "name": "web-1"}),
            pod(["10.0.0.2"], name="b", ns="y", labels={"app": "web"}, node="n2",
                workload={"kind": "DaemonSet", "name": "ds"}, owner={"kind": "DaemonSet", "name": "ds"}),
            pod(["10.0.0.3"], name="c", ns="x", labels={"app": "db"}),
        ],
        "services": [
            {"ip": "10.96.0.2", "namespace": "x", "name": "zweb", "selector": {"app": "web"}},
            {"ip": "10.96.0.1", "namespace": "x", "name": "aweb", "selector": {"app": "web", "v": "1"}},
            {"ip": "10.96.0.3", "namespace": "x", "name": "none", "selector": {}},
        ],
        "nodes": [{"name": "n1", "zone": "z1"}, {"name": "n2", "ips": ["fd00::2"], "zone": "z2"}],
    }, node_name="n1")
    a = inv.pods[B("10.0.0.1")]
    assert a.service == "aweb"  # both select it: alphabetically first
    assert a.zone == "z1" and a.node_name == "n1"
    assert a.workloads == (("Deployment", "web"), ("ReplicaSet", "web-1"))
    b = inv.pods[B("10.0.0.2")]
    assert b.service == ""  # other namespace
    assert b.zone == "z2" and b.workloads == (("DaemonSet", "ds"),)  # owner == workload: listed once
    assert inv.pods[B("10.0.0.3")].service == ""
    assert inv.nodes[B("fd00::2")] == Identity(KIND_NODE, node_name="n2", zone="z2", ip="fd00::2")
    assert inv.services[B("10.96.0.3")] == Identity(KIND_SERVICE, namespace="x", service="none", ip="10.96.0.3")


# -- the source: load, reload, errors ------------------------------------------------------------------------------

DOC = {
    "endpoints": [pod(["10.0.0.5", "fd00::5"], name="web-1", ns="shop", labels={"app": "web"}, node="node-a")],
    "services": [{"ip": "10.96.0.20", "namespace": "shop", "name": "web", "selector": {"app": "web"}}],
    "nodes": [{"name": "node-a", "ips": ["192.168.1.10"], "zone": "zone-1"},
              {"name": "node-b", "ips": ["192.168.1.11"], "zone": "zone-2"}],
}


@pytest.fixture
def inv_file(tmp_path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(DOC))
    return path


@pytest.fixture
def started(inv_file):
    cache = IPCache()
    src = InventorySource(inv_file, node_name="node-b", poll_interval_s=0.02)
    src.start(cache)
    yield cache, src, inv_file
    src.stop()


def test_source_loads_at_start(started):
    cache, src, path = started
    assert isinstance(src, Source) and isinstance(src, PollingSource)
    assert src.alive()
    assert cache.loaded and cache.version == 1
    web = cache.get(B("10.0.0.5"))
    assert web == Identity(KIND_POD, namespace="shop", pod_name="web-1", labels=("app=web",), service="web",
                           node_name="node-a", zone="zone-1", ip="10.0.0.5")
    assert cache.get(B("fd00::5")).ip == "fd00::5"
    assert cache.get(B("192.168.1.11")).kind == KIND_HOST  # node_name="node-b" is this node
    assert cache.get(B("192.168.1.10")).kind == KIND_NODE
    st = src.status()
    assert st["loaded"] is True and st["error"] is None and st["entries"] == 5
    assert isinstance(st["updated_at"], float)
    assert st["reloads"] == 1 and st["reload_errors"] == 0 and st["path"] == str(path)
    assert st["counts"] == {"endpoints": 1, "services": 1, "nodes": 2}
    assert cache.snapshot_json()["sources"]["inventory"] == st


def test_unchanged_file_is_not_reread(started):
    cache, src, _ = started
    version = cache.version
    ticks = src.reloads
    deadline = time.monotonic() + 0.2  # ~10 poll intervals
    while time.monotonic() < deadline:
        assert cache.version == version and src.reloads == ticks
        time.sleep(0.01)


def test_rewrite_is_picked_up(started):
    cache, src, path = started
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    doc["endpoints"][0]["podName"] = "web-2"
    doc["endpoints"].append(pod(["10.0.0.6"], name="new", ns="shop"))
    write_atomic(path, doc)
    assert wait_until(lambda: (i := cache.get(B("10.0.0.5"))) is not None and i.pod_name == "web-2")
    assert cache.get(B("10.0.0.6")).pod_name == "new"
    assert src.reloads == 2 and src.reload_errors == 0 and src.status()["entries"] == 6


def test_in_place_rewrite_is_picked_up(started):
    """Same inode: the size and mtime change."""
    cache, src, path = started
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    del doc["services"]
    ino = path.stat().st_ino
    path.write_text(yaml.safe_dump(doc))
    assert path.stat().st_ino == ino
    assert wait_until(lambda: cache.get(B("10.96.0.20")) is None)
    assert cache.get(B("10.0.0.5")).service == ""


def test_malformed_rewrite_keeps_the_last_good_cache(started, caplog):
    cache, src, path = started
    before = cache.view()
    version = cache.version
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    doc["endpoints"][0]["ips"][0] = "x"
    write_atomic(path, doc)
    assert wait_until(lambda: src.reload_errors == 1)
    message = f"{path}: endpoints[0].ips[0]: 'x' is not an IP address"
    st = src.status()
    assert st["error"] == message
    assert st["loaded"] is True and st["entries"] == 5 and st["reloads"] == 1 and st["reload_errors"] == 1
    assert cache.view() is before and cache.version == version
    assert cache.get(B("10.0.0.5")).pod_name == "web-1"
    assert any(message in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    # Fixing the file clears the error.
    doc["endpoints"][0]["ips"][0] = "10.0.0.50"
    write_atomic(path, doc)
    assert wait_until(lambda: cache.get(B("10.0.0.50")) is not None)
    assert cache.get(B("10.0.0.5")) is None
    assert src.status()["error"] is None and src.reloads == 2 and src.reload_errors == 1


def test_deleted_file_keeps_the_cache(started):
    cache, src, path = started
    path.unlink()
    assert wait_until(lambda: src.reload_errors == 1)
    assert src.status()["error"] == f"{path}: cannot read: No such file or directory"
    assert cache.get(B("10.0.0.5")).pod_name == "web-1"
    write_atomic(path, DOC)
    assert wait_until(lambda: src.reloads == 2)
    assert src.status()["error"] is None


def test_missing_file_at_start(tmp_path):
    path = tmp_path / "later.yaml"
    cache = IPCache()
    src = InventorySource(path, poll_interval_s=0.02)
    src.start(cache)
    try:
        st = src.status()
        assert st["loaded"] is False and st["entries"] == 0 and st["updated_at"] is None
        assert st["error"] == f"{path}: cannot read: No such file or directory"
        assert cache.loaded is False and cache.lookup(B("10.0.0.5")) is WORLD
        write_atomic(path, DOC)
        assert wait_until(lambda: cache.loaded)
        assert cache.get(B("10.0.0.5")).pod_name == "web-1"
    finally:
        src.stop()
    assert not src.alive()


def test_zone_follows_the_node(started):
    cache, src, path = started
    assert cache.get(B("10.0.0.5")).zone == "zone-1"
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    doc["nodes"][0]["zone"] = "zone-9"
    write_atomic(path, doc)
    assert wait_until(lambda: cache.get(B("10.0.0.5")).zone == "zone-9")
    assert cache.get(B("fd00::5")).zone == "zone-9"
    assert cache.get(B("192.168.1.10")).zone == "zone-9"
    doc["endpoints"][0]["node"] = "node-b"
    write_atomic(path, doc)
    assert wait_until(lambda: cache.get(B("10.0.0.5")).zone == "zone-2")


# -- factory -------------------------------------------------------------------------------------------------------


def test_make_source_inventory(inv_file):
    tel = ControlPlane()
    src = make_source(parse_enrichment({"source": "inventory", "inventoryFile": str(inv_file),
                                        "inventoryPollInterval": "250ms"}), "node-a", tel)
    assert isinstance(src, InventorySource)
    assert src.path == str(inv_file) and src.interval_s == 0.25 and src.node_name == "node-a"
    assert src.telemetry is tel and src.name == "inventory"


def test_make_source_netns():
    src = make_source(parse_enrichment({"source": "netns", "netnsFilter": ["pod-*", "app-?"], "netnsPollInterval": 0.5,
                                        "netnsRescanInterval": "1m", "netnsNamespace": "lab", "zone": "z"}), "n", None)
    assert isinstance(src, NetnsSource)
    assert src.patterns == ("pod-*", "app-?") and src.interval_s == 0.5 and src.rescan_interval_s == 60
    assert src.namespace == "lab" and src.zone == "z" and src.node_name == "n" and src.include_processes is False
    default = make_source(parse_enrichment({"source": "netns"}), "n", None)
    assert default.patterns == ("*",) and default.interval_s == 2.0 and default.rescan_interval_s == 10.0
    assert default.namespace == "netns" and default.netns_dir == "/run/netns"


@pytest.mark.parametrize("options,message", [
    ({"source": "kubernetes", "kubeconfig": "/nonexistent/kubeconfig"},
     "enrichment.kubeconfig: kubernetes source: cannot load the kubeconfig /nonexistent/kubeconfig: "
     "Invalid kube-config file. No configuration found."),
    ({"source": "nosuch"}, "enrichment.source: invalid value 'nosuch' in the enrichment options; accepted: none, "
                           "inventory, netns, kubernetes, operator"),
    ({"source": "inventory"}, "enrichment.inventoryFile: required when enrichment.source is 'inventory'; "
                              "accepted: the path of an inventory YAML file"),
    ({"source": "inventory", "inventoryFile": "/x", "inventoryPollInterval": "0s"},
     "enrichment.inventoryPollInterval: invalid value '0s' in the enrichment options: below the minimum of 1ns; "
     "accepted: a duration longer than 0 such as '2s' or '500ms'"),
    ({"source": "netns", "netnsFilter": []}, "enrichment.netnsFilter: invalid value [] in the enrichment options: "
     "empty list; accepted: a list (or comma-separated string) of glob patterns of network namespace names"),
    ({"source": "netns", "netnsProcesses": "maybe"}, "enrichment.netnsProcesses: invalid value 'maybe' in the "
     "enrichment options; accepted: true, false (also 1/0, yes/no)"),
    ({"source": "netns", "netnsNamespace": ""}, "enrichment.netnsNamespace: invalid value '' in the enrichment "
     "options; accepted: a non-empty namespace name"),
])
def test_make_source_errors(options, message):
    with pytest.raises(ConfigError) as e:
        make_source(parse_enrichment(options), "n", None)
    assert str(e.value) == message


def test_make_source_without_a_source():
    with pytest.raises(ConfigError, match=r"^enrichment\.source: 'none' has no source to build"):
        make_source(parse_enrichment({}), "n", None)


def test_make_source_bad_duration_and_unknown_key():
    with pytest.raises(ConfigError, match=r"^enrichment\.netnsPollInterval: invalid value 'soon' .*: not a duration"):
        parse_enrichment({"source": "netns", "netnsPollInterval": "soon"})
    with pytest.raises(ConfigError, match=r"^enrichment\.inventoryfile: unknown key \(known: "):
        parse_enrichment({"source": "inventory", "inventoryfile": "/x"})
