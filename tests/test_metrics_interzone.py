"""adv_interzone_bytes / adv_interzone_count on synthetic enriched records: counted once per packet, at the
source pod's veth on the sending node, only when both zones are known and differ."""

from __future__ import annotations

from metrics_module.advanced import AdvancedMetrics
from retina_core.identity import WORLD, Identity
from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.record import OBS_FROM_ENDPOINT, OBS_FROM_NETWORK, OBS_TO_ENDPOINT, FlowRecord

NODE = "node-a"
A1 = Identity("pod", namespace="shop", pod_name="web-1", node_name=NODE, zone="zone-a")
A2 = Identity("pod", namespace="shop", pod_name="web-2", node_name=NODE, zone="zone-a")
B1 = Identity("pod", namespace="shop", pod_name="api-1", node_name="node-b", zone="zone-b")
C1 = Identity("pod", namespace="data", pod_name="db-0", node_name="node-c", zone="zone-c")
NOZONE = Identity("pod", namespace="shop", pod_name="x", node_name="node-d")
HOSTB = Identity("node", node_name="node-b", zone="zone-b")


def rec(src, dst, obs=OBS_FROM_ENDPOINT, packets=1, nbytes=100):
    r = FlowRecord(0, 4, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 6, 1, 2, obs_point=obs, packets=packets,
                   bytes=nbytes)
    r.source, r.destination = src, dst
    return r


def make(**spec):
    cfg = parse_metrics_configuration({"contextOptions": [
        {"metricName": "interzone_bytes", "sourceLabels": ["podname"]}, {"metricName": "interzone_count"}], **spec})
    return AdvancedMetrics(cfg, node_name=NODE, host_interfaces_observed=True)


def values(adv) -> dict:
    return {(name, tuple(labels)): v for name, _t, _h, samples in adv.families() for labels, v in samples}


def test_counted_once_at_the_source_pods_veth():
    adv = make()
    adv.process([
        rec(A1, B1, packets=3, nbytes=300),  # counted
        rec(A1, B1, OBS_FROM_NETWORK, nbytes=999),  # the same packets again on the uplink: not counted
        rec(A1, B1, OBS_TO_ENDPOINT, nbytes=999),
        rec(B1, A1, OBS_FROM_NETWORK, nbytes=999),  # sent by node-b: node-b counts it
        rec(B1, A1, OBS_TO_ENDPOINT, nbytes=999),
        rec(A1, A2, nbytes=999),  # same zone
        rec(A1, NOZONE, nbytes=999), rec(A1, WORLD, nbytes=999),  # unknown zone
        rec(A2, C1, packets=2, nbytes=50),
        rec(A1, HOSTB, packets=1, nbytes=60),  # to a node of zone b
    ])
    zones = (("source_zone", "zone-a"), ("destination_zone", "zone-b"))
    zones_c = (("source_zone", "zone-a"), ("destination_zone", "zone-c"))
    assert values(adv) == {
        ("networkobservability_adv_interzone_bytes", zones): 360,
        ("networkobservability_adv_interzone_bytes", zones_c): 50,
        ("networkobservability_adv_interzone_count", zones): 4,
        ("networkobservability_adv_interzone_count", zones_c): 2,
    }
    fams = {name: t for name, t, _h, _s in adv.families()}
    assert fams == {"networkobservability_adv_interzone_bytes": "counter",
                    "networkobservability_adv_interzone_count": "counter"}


def test_namespace_filter_and_series_cap():
    adv = make(namespaces={"exclude": ["shop"]})
    adv.process([rec(A1, B1)])
    assert values(adv) == {}
    adv = make(maxSeriesPerMetric=1)
    adv.process([rec(A1, B1), rec(A2, C1), rec(A2, C1)])
    assert sorted(values(adv).values()) == [1, 100]
    assert adv.overflow == {"adv_interzone_bytes": 2, "adv_interzone_count": 2}
