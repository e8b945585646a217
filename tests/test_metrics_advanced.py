"""metrics_module.advanced: exact label sets and values for crafted records, counting rules, TTL, cap, reload."""

from __future__ import annotations

import socket

import pytest

from retina_core.identity import WORLD, Identity
from metrics_module.advanced import AdvancedMetrics
from retina_core.dns import DnsRecord
from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.record import (
    DIR_EGRESS,
    DIR_INGRESS,
    DIR_UNKNOWN,
    OBS_FROM_ENDPOINT,
    OBS_FROM_NETWORK,
    OBS_TO_ENDPOINT,
    OBS_TO_NETWORK,
    VERDICT_DROPPED,
    FlowRecord,
)

NODE = "node-a"
FWD = "networkobservability_adv_forward_count"
FWD_BYTES = "networkobservability_adv_forward_bytes"
FLAGS = "networkobservability_adv_tcpflags_count"

WEB = Identity("pod", namespace="shop", pod_name="web-1", labels=("app=web", "app.kubernetes.io/name=web-ui"),
               workloads=(("Deployment", "web"), ("ReplicaSet", "web-7d9")), service="web-svc", node_name=NODE,
               zone="zone-1", ip="10.0.0.5")
DB = Identity("pod", namespace="data", pod_name="db-0", workloads=(("StatefulSet", "db"),), node_name=NODE,
              zone="zone-1", ip="10.0.0.6")
REMOTE = Identity("pod", namespace="shop", pod_name="api-2", workloads=(("Deployment", "api"),), node_name="node-b",
                  zone="zone-2", ip="10.0.1.7")
HOST = Identity("host", node_name=NODE, zone="zone-1", ip="192.168.1.10")
IP = {"10.0.0.5": WEB, "10.0.0.6": DB, "10.0.1.7": REMOTE, "192.168.1.10": HOST}

ALL = ["ip", "namespace", "podname", "workload", "service", "port", "zone"]


def ip_bytes(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def rec(src="10.0.0.5", dst="10.0.0.6", obs=OBS_FROM_ENDPOINT, *, sident=None, dident=None, proto=6, sport=40000,
        dport=80, direction=DIR_EGRESS, is_reply=False, packets=1, nbytes=100, flags=None, verdict=1,
        drop_reason=0, drop_reason_name=""):
    r = FlowRecord(0, 6 if ":" in src else 4, ip_bytes(src), ip_bytes(dst), proto, sport, dport, obs_point=obs,
                   direction=direction, is_reply=is_reply, packets=packets, bytes=nbytes, flag_counts=flags,
                   verdict=verdict, drop_reason=drop_reason, drop_reason_name=drop_reason_name)
    r.source = sident if sident is not None else IP.get(src, WORLD)
    r.destination = dident if dident is not None else IP.get(dst, WORLD)
    return r


def flags(fin=0, syn=0, rst=0, psh=0, ack=0, urg=0, ece=0, cwr=0, ns=0, synack=0):
    """Record flag counts: syn/ack include the SYN-ACK packets, as the kernel counts them."""
    return (fin, syn, rst, psh, ack, urg, ece, cwr, ns, synack)


def make(options, remote=False, host_ifaces=False, clock=None, **spec):
    cfg = parse_metrics_configuration({"contextOptions": options, **spec})
    kw = {"clock": clock} if clock else {}
    return AdvancedMetrics(cfg, node_name=NODE, host_interfaces_observed=host_ifaces, remote_context=remote, **kw)


def series(adv, family=FWD):
    """{frozenset(labels.items()): value} of one family."""
    out = {}
    for name, labels, value in adv.iter_series():
        if name == family:
            out[tuple(sorted(labels.items()))] = value
    return out


def S(**labels):
    return tuple(sorted(labels.items()))


# ---------------------------------------------------------------------------------------------------------------
# local context


def test_local_context_egress_and_ingress_at_own_veth_only():
    adv = make([{"metricName": "forward_count", "sourceLabels": ALL},
                {"metricName": "forward_bytes", "sourceLabels": ["podname"]}])
    adv.process([rec(obs=OBS_FROM_ENDPOINT, packets=3, nbytes=300),  # web -> db leaves web's veth
                 rec(obs=OBS_TO_ENDPOINT, packets=3, nbytes=300)])   # ... and enters db's veth
    assert series(adv) == {
        S(direction="egress", ip="10.0.0.5", namespace="shop", podname="web-1", workload_kind="Deployment",
          workload_name="web", service="web-svc", port="40000", zone="zone-1"): 3,
        S(direction="ingress", ip="10.0.0.6", namespace="data", podname="db-0", workload_kind="StatefulSet",
          workload_name="db", service="unknown", port="80", zone="zone-1"): 3,
    }
    assert series(adv, FWD_BYTES) == {S(direction="egress", podname="web-1"): 300,
                                      S(direction="ingress", podname="db-0"): 300}


def test_local_context_host_interface_records_add_nothing():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"]},
                {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]}])
    adv.process([rec(src="10.0.0.5", dst="10.0.1.7", obs=OBS_TO_NETWORK, flags=flags(ack=1)),
                 rec(src="10.0.1.7", dst="10.0.0.5", obs=OBS_FROM_NETWORK, flags=flags(ack=1))])
    assert adv.series_count() == 0
    # the same packets at the pod's veth count, once each
    adv.process([rec(src="10.0.0.5", dst="10.0.1.7", obs=OBS_FROM_ENDPOINT, flags=flags(ack=1)),
                 rec(src="10.0.1.7", dst="10.0.0.5", obs=OBS_TO_ENDPOINT, flags=flags(ack=1))])
    assert series(adv) == {S(direction="egress", podname="web-1"): 1, S(direction="ingress", podname="web-1"): 1}
    assert series(adv, FLAGS) == {S(flag="ACK", podname="web-1"): 2}  # no direction label (as Retina)


def test_local_context_non_pods_and_api_server_are_skipped():
    apiserver = Identity("pod", namespace="kubernetes-apiserver", pod_name="kubernetes-apiserver")
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"]}])
    adv.process([
        rec(src="192.168.1.10", dst="10.0.0.6", obs=OBS_FROM_ENDPOINT),  # host is not a pod
        rec(src="8.8.8.8", dst="10.0.0.6", obs=OBS_FROM_ENDPOINT),  # world
        rec(src="10.0.0.5", dst="10.0.0.6", obs=OBS_FROM_ENDPOINT, sident=apiserver),
    ])
    assert series(adv) == {}
    unenriched = rec(obs=OBS_FROM_ENDPOINT)
    unenriched.source = unenriched.destination = None
    adv.process([unenriched])
    assert series(adv) == {}


def test_local_context_without_source_labels_counts_by_direction_only():
    adv = make([{"metricName": "forward_count"}])
    adv.process([rec(obs=OBS_FROM_ENDPOINT), rec(obs=OBS_TO_ENDPOINT), rec(obs=OBS_FROM_ENDPOINT)])
    assert series(adv) == {S(direction="egress"): 2, S(direction="ingress"): 1}


def test_is_reply_label():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"], "additionalLabels": ["is_reply"]}])
    adv.process([rec(is_reply=False), rec(is_reply=True, packets=2), rec(is_reply=None)])
    assert series(adv) == {S(direction="egress", podname="web-1", is_reply="false"): 2,
                           S(direction="egress", podname="web-1", is_reply="true"): 2}
    names = [n for n, *_ in adv.families()]
    assert names == [FWD]
    assert adv.metrics[0].label_names == ("direction", "podname", "is_reply")


# ---------------------------------------------------------------------------------------------------------------
# remote context


REMOTE_OPT = [{"metricName": "forward_count", "sourceLabels": ["ip", "podname"], "destinationLabels": ["podname"]}]


def test_remote_context_pod_to_pod_on_one_node_counted_once():
    adv = make(REMOTE_OPT, remote=True)
    adv.process([rec(obs=OBS_FROM_ENDPOINT, packets=2), rec(obs=OBS_TO_ENDPOINT, packets=2)])
    assert series(adv) == {S(direction="EGRESS", source_ip="10.0.0.5", source_podname="web-1",
                             destination_podname="db-0"): 2}


@pytest.mark.parametrize("host_ifaces", [False, True])
def test_remote_context_from_other_node(host_ifaces):
    adv = make(REMOTE_OPT, remote=True, host_ifaces=host_ifaces)
    incoming = [rec(src="10.0.1.7", dst="10.0.0.5", obs=OBS_TO_ENDPOINT, direction=DIR_INGRESS)]
    if host_ifaces:  # the host interface sees the packet first
        incoming.insert(0, rec(src="10.0.1.7", dst="10.0.0.5", obs=OBS_FROM_NETWORK, direction=DIR_INGRESS))
    adv.process(incoming)
    # local pod -> remote pod: counted at the veth, not again at the host interface
    adv.process([rec(src="10.0.0.5", dst="10.0.1.7", obs=OBS_FROM_ENDPOINT, direction=DIR_INGRESS, is_reply=True),
                 rec(src="10.0.0.5", dst="10.0.1.7", obs=OBS_TO_NETWORK, direction=DIR_INGRESS, is_reply=True)])
    assert series(adv) == {
        S(direction="INGRESS", source_ip="10.0.1.7", source_podname="api-2", destination_podname="web-1"): 1,
        S(direction="INGRESS", source_ip="10.0.0.5", source_podname="web-1", destination_podname="api-2"): 1,
    }


def test_remote_context_host_to_local_pod_counted_at_to_endpoint():
    adv = make(REMOTE_OPT, remote=True, host_ifaces=True)
    adv.process([rec(src="192.168.1.10", dst="10.0.0.6", obs=OBS_TO_ENDPOINT, direction=DIR_UNKNOWN)])
    assert series(adv) == {S(direction="TRAFFIC_DIRECTION_UNKNOWN", source_ip="192.168.1.10",
                             source_podname="unknown", destination_podname="db-0"): 1}


def test_remote_context_unknowns_and_non_pod_traffic():
    adv = make([{"metricName": "forward_count", "sourceLabels": ALL, "destinationLabels": ALL}], remote=True)
    adv.process([rec(src="8.8.8.8", dst="10.0.0.5", obs=OBS_FROM_NETWORK, proto=1, sport=0, dport=0,
                     direction=DIR_INGRESS),
                 rec(src="8.8.8.8", dst="192.168.1.10", obs=OBS_FROM_NETWORK)])  # no pod on either side
    unknown = dict.fromkeys(["source_namespace", "source_podname", "source_workload_kind", "source_workload_name",
                             "source_service", "source_zone"], "unknown")
    assert series(adv) == {S(direction="INGRESS", source_ip="8.8.8.8", source_port="unknown", **unknown,
                             destination_ip="10.0.0.5", destination_namespace="shop", destination_podname="web-1",
                             destination_workload_kind="Deployment", destination_workload_name="web",
                             destination_service="web-svc", destination_port="unknown", destination_zone="zone-1"): 1}
    assert adv.metrics[0].label_names == (
        "direction", "source_ip", "source_namespace", "source_podname", "source_workload_kind", "source_workload_name",
        "source_service", "source_port", "source_zone", "destination_ip", "destination_namespace",
        "destination_podname", "destination_workload_kind", "destination_workload_name", "destination_service",
        "destination_port", "destination_zone")


def test_ipv6_ip_labels():
    v6a = Identity("pod", namespace="shop", pod_name="web-1", node_name=NODE, ip="fd00::5")
    adv = make([{"metricName": "forward_count", "sourceLabels": ["ip"], "destinationLabels": ["ip"]}], remote=True)
    adv.process([rec(src="fd00:0:0:0::5", dst="2001:DB8::1", obs=OBS_FROM_ENDPOINT, sident=v6a, dident=WORLD)])
    assert series(adv) == {S(direction="EGRESS", source_ip="fd00::5", destination_ip="2001:db8::1"): 1}
    local = make([{"metricName": "forward_count", "sourceLabels": ["ip"]}])
    local.process([rec(src="fd00::5", dst="2001:db8::1", obs=OBS_FROM_ENDPOINT, sident=v6a, dident=WORLD)])
    assert series(local) == {S(direction="egress", ip="fd00::5"): 1}


# ---------------------------------------------------------------------------------------------------------------
# TCP flags


def test_tcp_flags_synack_semantics():
    adv = make([{"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]}], remote=False)
    adv.process([
        rec(flags=flags(syn=1), obs=OBS_FROM_ENDPOINT),  # SYN
        rec(src="10.0.0.6", dst="10.0.0.5", flags=flags(syn=1, ack=1, synack=1), obs=OBS_FROM_ENDPOINT),  # SYN-ACK
        # one record accounting for 7 packets: 1 SYN-ACK (retransmitted), 2 pure ACK, 3 PSH-ACK, 1 FIN-ACK
        rec(src="10.0.0.6", dst="10.0.0.5", obs=OBS_FROM_ENDPOINT, packets=7,
            flags=flags(syn=1, synack=1, ack=7, psh=3, fin=1)),
        rec(flags=flags(rst=1, ece=1, cwr=1, urg=1, ns=1), obs=OBS_FROM_ENDPOINT),
        rec(flags=None, proto=17, obs=OBS_FROM_ENDPOINT),  # UDP: nothing
    ])
    assert series(adv, FLAGS) == {
        S(flag="SYN", podname="web-1"): 1,
        S(flag="RST", podname="web-1"): 1,
        S(flag="ECE", podname="web-1"): 1,
        S(flag="CWR", podname="web-1"): 1,
        S(flag="URG", podname="web-1"): 1,
        S(flag="NS", podname="web-1"): 1,
        S(flag="SYNACK", podname="db-0"): 2,  # SYN-ACKs are neither SYN nor ACK
        S(flag="ACK", podname="db-0"): 6,
        S(flag="PSH", podname="db-0"): 3,
        S(flag="FIN", podname="db-0"): 1,
    }


def test_tcp_flags_remote_counted_once():
    adv = make([{"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"], "destinationLabels": ["podname"]}],
               remote=True)
    adv.process([rec(obs=OBS_FROM_ENDPOINT, flags=flags(syn=1)), rec(obs=OBS_TO_ENDPOINT, flags=flags(syn=1))])
    assert series(adv, FLAGS) == {S(flag="SYN", source_podname="web-1", destination_podname="db-0"): 1}


# ---------------------------------------------------------------------------------------------------------------
# namespaces, pod labels, identities


def test_namespaces_include_local_and_remote():
    opt = [{"metricName": "forward_count", "sourceLabels": ["podname"], "destinationLabels": ["podname"]}]
    local = make(opt, namespaces={"include": ["data"]})
    local.process([rec(obs=OBS_FROM_ENDPOINT), rec(obs=OBS_TO_ENDPOINT)])  # web (shop) -> db (data)
    assert series(local) == {S(direction="ingress", podname="db-0"): 1}
    remote = make(opt, remote=True, namespaces={"include": ["data"]})
    remote.process([rec(obs=OBS_FROM_ENDPOINT),  # one side in "data": counted
                    rec(src="10.0.0.5", dst="10.0.1.7", obs=OBS_FROM_ENDPOINT)])  # shop -> shop: not
    assert series(remote) == {S(direction="EGRESS", source_podname="web-1", destination_podname="db-0"): 1}


def test_namespaces_exclude():
    opt = [{"metricName": "forward_count", "sourceLabels": ["podname"]}]
    local = make(opt, namespaces={"exclude": ["data"]})
    local.process([rec(obs=OBS_FROM_ENDPOINT), rec(obs=OBS_TO_ENDPOINT)])
    assert series(local) == {S(direction="egress", podname="web-1"): 1}
    remote = make(opt, remote=True, namespaces={"exclude": ["shop"]})
    remote.process([rec(src="10.0.0.5", dst="10.0.1.7", obs=OBS_FROM_ENDPOINT),  # shop -> shop
                    rec(src="10.0.0.5", dst="8.8.8.8", obs=OBS_FROM_ENDPOINT),  # shop -> world
                    rec(obs=OBS_FROM_ENDPOINT)])  # shop -> data
    assert series(remote) == {S(direction="EGRESS", source_podname="web-1"): 1}


def test_pod_label_keys():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"], "destinationLabels": ["podname"]}],
               remote=True, podLabelKeys=["app.kubernetes.io/name", "app"])
    adv.process([rec(obs=OBS_FROM_ENDPOINT), rec(src="10.0.0.6", dst="8.8.8.8", obs=OBS_FROM_ENDPOINT)])
    assert series(adv) == {
        S(direction="EGRESS", source_podname="web-1", source_label_app_kubernetes_io_name="web-ui",
          source_label_app="web", destination_podname="db-0", destination_label_app_kubernetes_io_name="",
          destination_label_app=""): 1,
        S(direction="EGRESS", source_podname="db-0", source_label_app_kubernetes_io_name="", source_label_app="",
          destination_podname="unknown", destination_label_app_kubernetes_io_name="unknown",
          destination_label_app="unknown"): 1,
    }
    assert adv.metrics[0].label_names == (
        "direction", "source_podname", "source_label_app_kubernetes_io_name", "source_label_app",
        "destination_podname", "destination_label_app_kubernetes_io_name", "destination_label_app")


def test_new_identity_object_for_same_address_gets_new_labels():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"]}])
    adv.process([rec(obs=OBS_FROM_ENDPOINT)])
    renamed = Identity("pod", namespace="shop", pod_name="web-2", node_name=NODE, ip="10.0.0.5")
    adv.process([rec(obs=OBS_FROM_ENDPOINT, sident=renamed)])
    assert series(adv) == {S(direction="egress", podname="web-1"): 1, S(direction="egress", podname="web-2"): 1}


def test_other_verdicts_do_not_feed_forward_metrics():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"]}])
    adv.process([rec(verdict=VERDICT_DROPPED), rec(verdict=15), rec(verdict=16), object()])
    assert series(adv) == {}


# ---------------------------------------------------------------------------------------------------------------
# prepared shapes: drops, retransmissions, DNS


def test_drop_metrics():
    opt = [{"metricName": "drop_count", "sourceLabels": ["podname"]}, {"metricName": "drop_bytes"}]
    adv = make(opt)
    adv.process([rec(verdict=VERDICT_DROPPED, drop_reason=16, drop_reason_name="NETFILTER_DROP", nbytes=60,
                     obs=OBS_TO_NETWORK),
                 rec(verdict=VERDICT_DROPPED, drop_reason=99, nbytes=40)])  # a reader that did not name it
    drops = series(adv, "networkobservability_adv_drop_count")
    assert drops == {S(reason="NETFILTER_DROP", direction="egress", podname="web-1"): 1,
                     S(reason="NETFILTER_DROP", direction="ingress", podname="db-0"): 1,
                     S(reason="UNKNOWN_DROP", direction="egress", podname="web-1"): 1,
                     S(reason="UNKNOWN_DROP", direction="ingress", podname="db-0"): 1}
    assert series(adv, "networkobservability_adv_drop_bytes") == {
        S(reason="NETFILTER_DROP", direction="egress"): 60, S(reason="NETFILTER_DROP", direction="ingress"): 60,
        S(reason="UNKNOWN_DROP", direction="egress"): 40, S(reason="UNKNOWN_DROP", direction="ingress"): 40}
    remote = make(opt, remote=True)
    remote.process([rec(verdict=VERDICT_DROPPED, drop_reason=3, drop_reason_name="NO_SOCKET", obs=OBS_TO_NETWORK)])
    assert series(remote, "networkobservability_adv_drop_count") == {
        S(reason="NO_SOCKET", direction="EGRESS", source_podname="web-1"): 1}


def test_tcpretrans_metric():
    opt = [{"metricName": "tcp_retransmission_count", "sourceLabels": ["podname"], "destinationLabels": ["ip"]}]
    adv = make(opt, remote=True)
    adv.process([rec(verdict=15), rec(verdict=15)])
    assert series(adv, "networkobservability_adv_tcpretrans_count") == {
        S(direction="EGRESS", source_podname="web-1", destination_ip="10.0.0.6"): 2}


def dns_rec(info, src="10.0.0.5", dst="10.0.0.6", direction=DIR_EGRESS):
    r = FlowRecord(0, 4, ip_bytes(src), ip_bytes(dst), 17, 5353, 53, direction=direction, verdict=16)
    r.l7 = info
    r.source, r.destination = IP.get(src, WORLD), IP.get(dst, WORLD)
    return r


def test_dns_metrics():
    opt = [{"metricName": "dns_request_count", "sourceLabels": ["podname"]},
           {"metricName": "dns_response_count", "sourceLabels": ["podname"]}]
    adv = make(opt)
    adv.process([
        dns_rec(DnsRecord(False, "example.com.", ("A",))),
        dns_rec(DnsRecord(True, "example.com.", ("A",), rcode=0, ips=("1.2.3.4", "5.6.7.8"), num_answers=2),
                src="10.0.0.6", dst="10.0.0.5", direction=DIR_INGRESS),
        dns_rec(DnsRecord(True, "nope.", ("AAAA",), rcode=3), src="8.8.8.8", dst="10.0.0.5"),
    ])
    assert series(adv, "networkobservability_adv_dns_request_count") == {
        S(query_type="A", query="example.com.", podname="web-1"): 1}
    assert series(adv, "networkobservability_adv_dns_response_count") == {
        S(return_code="NOERROR", query_type="A", query="example.com.", response="1.2.3.4,5.6.7.8", num_response="2",
          podname="web-1"): 1,
        S(return_code="NXDOMAIN", query_type="AAAA", query="nope.", response="", num_response="0",
          podname="web-1"): 1,
    }
    types = {name: t for name, t, _h, _s in adv.families()}
    assert types["networkobservability_adv_dns_request_count"] == "counter"
    assert types["networkobservability_adv_dns_response_count"] == "counter"


# ---------------------------------------------------------------------------------------------------------------
# lifetime: TTL, cap, reload


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ttl_expiry_with_injected_clock():
    clock = Clock()
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"], "ttl": "30s"},
                {"metricName": "forward_bytes", "sourceLabels": ["podname"]}], clock=clock)
    adv.process([rec(obs=OBS_FROM_ENDPOINT), rec(obs=OBS_TO_ENDPOINT)])
    clock.t += 20
    adv.process([rec(obs=OBS_FROM_ENDPOINT)])  # web's egress updated at t+20
    clock.t += 15  # t+35: db's ingress is 35 s old
    assert adv.sweep() == 1
    assert series(adv) == {S(direction="egress", podname="web-1"): 2}
    assert len(series(adv, FWD_BYTES)) == 2  # no ttl: never expires
    assert adv.expired == {"adv_forward_count": 1}
    # the removed series starts again from 0 when traffic returns
    adv.process([rec(obs=OBS_TO_ENDPOINT, packets=4)])
    assert series(adv)[S(direction="ingress", podname="db-0")] == 4
    clock.t += 100
    assert adv.sweep() == 2
    assert adv.expired == {"adv_forward_count": 3}
    cp = {name: samples for name, _t, _h, samples in adv.control_plane_families()}
    assert cp["controlplane_networkobservability_expired_metrics_counter"] == [((("metric", "adv_forward_count"),), 3)]


def test_periodic_sweep_due_only():
    clock = Clock()
    adv = make([{"metricName": "forward_count", "ttl": "8s"}], clock=clock)
    adv.process([rec()])
    assert adv.sweep(due_only=True) == 0  # first periodic sweep runs (nothing old yet), next one in 2 s
    clock.t += 9
    assert adv.sweep(due_only=True) == 1


def test_series_cap_and_overflow_counter():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["ip"]},
                {"metricName": "tcp_flag_gauges", "sourceLabels": ["ip"]}], remote=True, maxSeriesPerMetric=2)
    pods = [Identity("pod", namespace="shop", pod_name=f"p{i}", node_name=NODE) for i in range(4)]
    for i, p in enumerate(pods):
        adv.process([rec(src=f"10.0.2.{i}", sident=p, flags=flags(ack=1, psh=1))])
    adv.process([rec(src="10.0.2.0", sident=pods[0], packets=5, flags=flags(ack=5))])  # existing series keeps counting
    adv.process([rec(src="10.0.2.3", sident=pods[3])])  # still over the cap
    assert series(adv) == {S(direction="EGRESS", source_ip="10.0.2.0"): 6,
                           S(direction="EGRESS", source_ip="10.0.2.1"): 1}
    assert series(adv, FLAGS) == {S(flag="ACK", source_ip="10.0.2.0"): 6, S(flag="PSH", source_ip="10.0.2.0"): 1}
    assert adv.overflow == {"adv_forward_count": 3, "adv_tcpflags_count": 6}


def test_cap_frees_after_expiry():
    clock = Clock()
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"], "ttl": "10s"}], clock=clock,
               maxSeriesPerMetric=1)
    adv.process([rec(obs=OBS_FROM_ENDPOINT), rec(obs=OBS_TO_ENDPOINT)])
    assert adv.overflow["adv_forward_count"] == 1
    clock.t += 11
    adv.sweep()
    adv.process([rec(obs=OBS_TO_ENDPOINT)])
    assert series(adv) == {S(direction="ingress", podname="db-0"): 1}


def test_reload_keeps_counts_of_unchanged_series():
    adv = make([{"metricName": "forward_count", "sourceLabels": ["podname"]},
                {"metricName": "forward_bytes", "sourceLabels": ["podname"]},
                {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]}])
    adv.process([rec(packets=2, nbytes=200, flags=flags(ack=2))])
    adv.apply(parse_metrics_configuration({"contextOptions": [
        {"metricName": "forward_count", "sourceLabels": ["podname"], "ttl": "1h"},  # same labels: keeps its values
        {"metricName": "forward_bytes", "sourceLabels": ["podname", "namespace"]},  # labels changed: afresh
        # tcp_flag_gauges removed: its series go away
        {"metricName": "drop_count"},
    ]}))
    assert [n for n, *_ in adv.families()] == [FWD, FWD_BYTES, "networkobservability_adv_drop_count"]
    assert series(adv) == {S(direction="egress", podname="web-1"): 2}
    assert series(adv, FWD_BYTES) == {}
    adv.process([rec(packets=1, nbytes=50, flags=flags(ack=1))])
    assert series(adv) == {S(direction="egress", podname="web-1"): 3}
    assert series(adv, FWD_BYTES) == {S(direction="egress", namespace="shop", podname="web-1"): 50}
    assert series(adv, FLAGS) == {}
    adv.apply(None)
    assert adv.families() == []


# --- TCP connection outcomes (packetparser's conn_event) ----------------------------------------------------------

CONNECT = "networkobservability_adv_tcp_connect_latency_seconds"
FAILED = "networkobservability_adv_tcp_failed_connections"


def conn(event, latency_ns=0, *, reply=True, src="10.0.0.6", dst="10.0.0.5", sport=80, dport=40000, packets=1):
    """An outcome record: by default the answer (SYN-ACK / RST) from DB:80 to the initiator WEB."""
    r = rec(src, dst, OBS_TO_ENDPOINT, sport=sport, dport=dport, is_reply=reply, packets=packets)
    r.conn_event = event
    r.connect_latency_ns = latency_ns
    return r


def test_tcp_connection_outcomes_local_context_count_for_the_initiator():
    from retina_core.record import CONN_ESTABLISHED, CONN_RESET, CONN_TIMEOUT

    adv = make([{"metricName": "tcp_connect_latency_seconds", "sourceLabels": ["podname"]},
                {"metricName": "tcp_failed_connections", "sourceLabels": ["podname", "port"]},
                {"metricName": "forward_count", "sourceLabels": ["podname"]}])
    adv.latency_buckets = (0.001, 0.01)
    adv.apply(adv.config)
    adv.process([conn(CONN_ESTABLISHED, 500_000), conn(CONN_ESTABLISHED, 2_000_000), conn(CONN_ESTABLISHED, 10**9),
                 conn(CONN_RESET), conn(CONN_RESET),
                 # a timeout found by the sweep: the initiator's direction, no packet (forward counts nothing)
                 conn(CONN_TIMEOUT, reply=False, src="10.0.0.5", dst="10.0.0.6", sport=40001, dport=81, packets=0)])
    fams = {name: samples for name, _t, _h, samples in adv.families()}
    (labels, h), = fams[CONNECT]
    assert dict(labels) == {"podname": "web-1"}
    assert (h.bounds, h.counts, h.count) == ((0.001, 0.01), (1, 1, 1), 3)
    assert h.sum == pytest.approx(1.0025)
    # the port label is the service port connected to, not the initiator's ephemeral one (bounded series)
    assert series(adv, FAILED) == {S(reason="reset", podname="web-1", port="80"): 2,
                                   S(reason="timeout", podname="web-1", port="81"): 1}
    # the answers' own packets are forwarded packets as usual (TO_ENDPOINT of WEB: ingress); the timeout adds none
    assert series(adv) == {S(direction="ingress", podname="web-1"): 5}
    text = "".join(f"{n}{lbl} {v}\n" for n, _t, _h, samples in adv.families(prerendered=True)
                   for lbl, v in samples if n == CONNECT)
    assert 'podname="web-1"' in text


def test_tcp_connection_outcomes_remote_context_initiator_is_the_source():
    from retina_core.record import CONN_RESET

    adv = make([{"metricName": "tcp_failed_connections", "sourceLabels": ["podname"],
                 "destinationLabels": ["podname", "port"]}], remote=True)
    adv.process([conn(CONN_RESET), conn(CONN_RESET, src="10.0.1.7", dst="10.0.0.6", sport=443, dport=50000)])
    assert series(adv, FAILED) == {
        S(reason="reset", source_podname="web-1", destination_podname="db-0", destination_port="80"): 1,
        S(reason="reset", source_podname="db-0", destination_podname="api-2", destination_port="443"): 1}
