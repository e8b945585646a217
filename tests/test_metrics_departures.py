"""Series that leave with their pod: a pod that leaves the IP cache takes its adv_* series with it after
``podDeletionGrace`` (one more scrape sees the last value), and a new pod with a reused address or name starts
from zero. Unit level, then with the kubernetes source against the test API server (the inventory source is in
tests/test_metrics_lab.py, with the real agent)."""

from __future__ import annotations

from enricher.ipcache import IPCache
from enricher.kubernetes import KubernetesSource
from metrics_module.advanced import AdvancedMetrics
from metrics_module.departures import PodDepartures, departed_series
from metrics_module.module import MetricsModule
from retina_core.addr import ip_bytes
from retina_core.identity import WORLD, Identity
from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.record import OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, FlowRecord
from tests.support.kube_fixtures import kube_server, run_pod, wait_for  # noqa: F401

NODE = "node-a"
FWD = "networkobservability_adv_forward_count"


def pod(name: str, ip: str, ns: str = "shop") -> Identity:
    return Identity("pod", namespace=ns, pod_name=name, node_name=NODE, ip=ip)


def rec(src: Identity, dst: Identity, packets: int = 1, obs: int = OBS_FROM_ENDPOINT) -> FlowRecord:
    r = FlowRecord(0, 4, ip_bytes(src.ip or "192.0.2.1"), ip_bytes(dst.ip or "192.0.2.2"), 6, 40000, 80,
                   obs_point=obs, packets=packets, bytes=100 * packets)
    r.source, r.destination = src, dst
    return r


def make(labels, remote=False, grace="30s", **option):
    spec = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": labels, **option}]}
    if remote:
        spec["contextOptions"][0]["destinationLabels"] = labels
    if grace is not None:
        spec["podDeletionGrace"] = grace
    cfg = parse_metrics_configuration(spec, remote_context=remote)
    return AdvancedMetrics(cfg, node_name=NODE, host_interfaces_observed=True, remote_context=remote,
                           clock=lambda: 0.0)


def values(adv) -> dict:
    return {tuple(v for _, v in labels): v for name, _t, _h, s in adv.families() if name == FWD for labels, v in s}


def test_departed_series_match_by_identifying_labels():
    names = ("direction", "ip", "namespace", "podname", "workload_name")
    keys = [("egress", "10.0.0.5", "shop", "web-1", "web"), ("egress", "10.0.0.6", "shop", "web-2", "web"),
            ("egress", "10.0.0.7", "data", "web-1", "db")]
    assert departed_series(names, keys, {("shop", "web-1", "10.0.0.5")}) == [keys[0]]
    assert departed_series(names, keys, {("shop", "web-1", "10.0.0.9")}) == []  # same pod name, other address
    by_name = ("direction", "namespace", "podname")
    assert departed_series(by_name, [("egress", "shop", "web-1"), ("egress", "data", "web-1")],
                           {("shop", "web-1", "10.0.0.5")}) == [("egress", "shop", "web-1")]
    assert departed_series(("direction", "ip"), [("egress", "10.0.0.5")], {("x", "y", "10.0.0.5")}) == [
        ("egress", "10.0.0.5")]
    # per workload: not a pod's series
    assert departed_series(("direction", "workload_name"), [("egress", "web")], {("shop", "web-1", "10.0.0.5")}) == []
    remote = ("direction", "source_podname", "destination_podname")
    series = [("EGRESS", "a", "b"), ("EGRESS", "c", "a"), ("EGRESS", "c", "d")]
    assert departed_series(remote, series, {("shop", "a", "10.0.0.1")}) == series[:2]


def test_series_go_after_the_grace_and_others_stay():
    a, b, c = pod("web-1", "10.0.0.5"), pod("web-2", "10.0.0.6"), pod("db-0", "10.0.0.7", "data")
    adv = make(["ip", "podname"])
    adv.process([rec(a, c, 3), rec(b, c, 2), rec(a, c, 4, obs=OBS_TO_ENDPOINT)], now=1.0)
    before = values(adv)
    assert before == {("egress", "10.0.0.5", "web-1"): 3, ("egress", "10.0.0.6", "web-2"): 2,
                      ("ingress", "10.0.0.7", "db-0"): 4}
    assert adv.pods_left({("shop", "web-1", "10.0.0.5"): a}, now=100.0) == 1
    assert adv.sweep(129.9) == 0 and values(adv) == before  # one more scrape sees the last value
    assert adv.sweep(130.0) == 1
    assert values(adv) == {("egress", "10.0.0.6", "web-2"): 2, ("ingress", "10.0.0.7", "db-0"): 4}
    assert adv.departed_removed == {"adv_forward_count": 1}


def test_a_new_pod_with_a_reused_address_starts_from_zero():
    old, new, c = pod("web-1", "10.0.0.5"), pod("web-9", "10.0.0.5"), pod("db-0", "10.0.0.7", "data")
    adv = make(["ip"])
    adv.process([rec(old, c, 5)], now=1.0)
    adv.pods_left({("shop", "web-1", "10.0.0.5"): old}, now=10.0)
    adv.process([rec(old, c, 1)], now=11.0)  # a late record of the old pod still counts for it
    assert values(adv)[("egress", "10.0.0.5")] == 6
    adv.process([rec(new, c, 2)], now=12.0)  # within the grace: the new pod's series starts afresh
    assert values(adv)[("egress", "10.0.0.5")] == 2
    adv.sweep(100.0)
    assert values(adv)[("egress", "10.0.0.5")] == 2  # the new pod's series is not removed with the old one's


def test_grace_zero_keeps_series_until_ttl_and_remote_context():
    a, c = pod("web-1", "10.0.0.5"), pod("db-0", "10.0.0.7", "data")
    adv = make(["podname"], grace="0")
    adv.process([rec(a, c)], now=1.0)
    assert adv.pods_left({("shop", "web-1", "10.0.0.5"): a}, now=2.0) == 0 and adv.sweep(1e6) == 0 and values(adv)
    adv = make(["podname"], remote=True, grace="1s")
    adv.process([rec(a, c, 2), rec(c, WORLD, 1)], now=1.0)
    adv.pods_left({("data", "db-0", "10.0.0.7"): c}, now=2.0)
    adv.sweep(3.0)
    assert values(adv) == {}  # both series had db-0 on one side


def test_pod_departures_follow_the_cache_versions():
    cache = IPCache()
    a, b = pod("web-1", "10.0.0.5"), pod("web-2", "fd00::6")
    cache.publish("inv", pods={ip_bytes("10.0.0.5"): a, ip_bytes("fd00::6"): b},
                  nodes={ip_bytes("192.168.0.1"): Identity("host", node_name=NODE)})
    d = PodDepartures(lambda: (cache.version, cache.view()))
    assert d.check() == {}
    assert d.check() == {}
    a2 = pod("web-1", "10.0.0.5")
    cache.publish("inv", pods={ip_bytes("10.0.0.5"): a2})  # new objects, same pod
    assert d.check() == {("shop", "web-2", "fd00::6"): b}
    cache.apply("inv", deletes=[("pod", ip_bytes("10.0.0.5"))])
    gone = d.check()
    assert gone == {("shop", "web-1", "10.0.0.5"): a2} and gone[("shop", "web-1", "10.0.0.5")] is a2


def test_kubernetes_source_pod_deletion_and_address_reuse(kube_server):
    """Pods deleted in the API server: their series go after the grace, and a new pod that gets a deleted pod's
    address within the grace starts from zero. The real client, source, IP cache and metrics module (its
    departure check, which its thread runs every 0.5 s, called directly with an injected clock)."""
    now = [0.0]
    cache = IPCache()
    src = KubernetesSource(NODE, kube_server.configuration(), start_timeout_s=5.0, backoff_initial_s=0.05,
                           backoff_max_s=0.4, owner_retry_s=0.05, resync_period_s=0)
    run_pod(kube_server, "web-1", NODE, ["10.0.0.5"])
    run_pod(kube_server, "db-0", NODE, ["10.0.0.7"])
    src.start(cache)
    try:
        cfg = parse_metrics_configuration({"contextOptions": [{"metricName": "forward_count",
                                                               "sourceLabels": ["ip"]}],
                                           "podDeletionGrace": "30s"})
        module = MetricsModule(None, None, cfg, NODE, True, clock=lambda: now[0],
                               ipcache=lambda: (cache.version, cache.view()))
        assert module.check_departures() == 0

        def send(packets):
            web, db = cache.get(ip_bytes("10.0.0.5")), cache.get(ip_bytes("10.0.0.7"))
            module.process([rec(web, db, packets), rec(web, db, packets, obs=OBS_TO_ENDPOINT)])

        send(3)
        assert values(module.advanced) == {("egress", "10.0.0.5"): 3, ("ingress", "10.0.0.7"): 3}
        kube_server.delete("pods", "web-1", namespace="default")
        kube_server.delete("pods", "db-0", namespace="default")
        wait_for(lambda: cache.get(ip_bytes("10.0.0.5")) is None and cache.get(ip_bytes("10.0.0.7")) is None,
                 what="web-1 and db-0 gone from the cache")
        now[0] = 100.0
        assert module.check_departures() == 2
        module.advanced.sweep(129.0)
        assert values(module.advanced) == {("egress", "10.0.0.5"): 3, ("ingress", "10.0.0.7"): 3}
        # Within the grace, a new pod gets web-1's address, and db-0 comes back under its own name.
        run_pod(kube_server, "web-2", NODE, ["10.0.0.5"])
        run_pod(kube_server, "db-0", NODE, ["10.0.0.7"])
        wait_for(lambda: (cache.get(ip_bytes("10.0.0.5")) or WORLD).pod_name == "web-2"
                 and cache.get(ip_bytes("10.0.0.7")) is not None, what="web-2 and db-0 in the cache")
        now[0] = 105.0
        assert module.check_departures() == 0
        send(2)
        assert values(module.advanced) == {("egress", "10.0.0.5"): 2, ("ingress", "10.0.0.7"): 2}
        module.advanced.sweep(131.0)  # the grace of the old series ends: the new ones stay
        assert values(module.advanced) == {("egress", "10.0.0.5"): 2, ("ingress", "10.0.0.7"): 2}
        kube_server.delete("pods", "web-2", namespace="default")
        wait_for(lambda: cache.get(ip_bytes("10.0.0.5")) is None, what="web-2 gone from the cache")
        now[0] = 200.0
        assert module.check_departures() == 1
        module.advanced.sweep(230.0)
        assert values(module.advanced) == {("ingress", "10.0.0.7"): 2}
    finally:
        src.stop()
