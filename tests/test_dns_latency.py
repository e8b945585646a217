"""DNS latency on synthetic kernel events: query/response matching by 5-tuple and id, exact histogram buckets,
unanswered queries after the timeout (decided by timestamps, whenever expiry runs), the pending cap, repeats,
Hubble's ``Layer7.latency_ns``, and the pod-level families fed with the same records."""

from __future__ import annotations

from retina_core.convert import to_proto
from retina_core.dns.encoder import RR, build_query, build_response
from retina_core.dns.latency import OUTCOME_ANSWERED, OUTCOME_PENDING, OUTCOME_UNANSWERED, OUTCOME_UNTRACKED
from retina_core.identity import Identity
from retina_core.histogram import HistogramValue
from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.record import OBS_FROM_ENDPOINT, OBS_FROM_NETWORK, OBS_TO_ENDPOINT
from metrics_module.advanced import AdvancedMetrics
from metrics_module.exposition import render
from retina_exporter.bpf.dns import DNS_CAPTURE, EVENT_HEADER, EVENT_SIZE, OBS_LATENCY_ONLY
from retina_exporter.plugins.dns.config import DnsLatencyConfig
from retina_exporter.plugins.dns.processor import DnsProcessor

import socket

A = socket.inet_aton("10.244.0.10") + bytes(12)  # client pod
B = socket.inet_aton("10.96.0.10") + bytes(12)  # DNS server outside the node
MS = 1_000_000
BOUNDS = (0.01, 0.1, 1.0)
CFG = DnsLatencyConfig(unanswered_timeout_ns=2000 * MS, buckets=BOUNDS, max_pending=4)
NODE = "node-a"
CLIENT = Identity("pod", namespace="shop", pod_name="web-1", node_name=NODE, ip="10.244.0.10")
SERVER = Identity("pod", namespace="kube-system", pod_name="coredns-0", node_name="node-b", ip="10.96.0.10")


def event(payload: bytes, ts: int, *, sport=40000, dport=53, src=A, dst=B, obs=OBS_FROM_ENDPOINT, proto=17) -> bytes:
    cap = payload[:DNS_CAPTURE]
    head = EVENT_HEADER.pack(ts, src, dst, 5, 100 + len(payload), 0, sport, dport, len(payload), len(cap), 4, proto,
                             obs, 0x18)
    return head + cap + bytes(EVENT_SIZE - len(head) - len(cap))


def exchange(p: DnsProcessor, name: str, qtype: str, msg_id: int, t0: int, delay_ns: int | None, *, sport=40000,
             rcode=0):
    """A query at t0 (client's veth) and, unless delay_ns is None, its response delay_ns later (uplink)."""
    q = build_query(name, qtype, msg_id=msg_id)
    p.process(event(q, t0, sport=sport))
    if delay_ns is not None:
        answer = [] if rcode else [RR(name, "A", 30, "192.0.2.1")]
        r = build_response(q, answer, rcode=rcode) if rcode else build_response(q, answer)
        p.process(event(r, t0 + delay_ns, sport=53, dport=sport, src=B, dst=A, obs=OBS_FROM_NETWORK))


def processor(cfg=CFG):
    out: list = []
    return DnsProcessor(NODE, {}, pod_level=True, emit=out.append, latency=cfg), out


def hist(p) -> dict:
    return {tuple(v for _, v in labels): (h.counts, h.count) for labels, h in p.latency_samples()[0]}


def test_each_answer_lands_in_its_bucket():
    p, out = processor()
    exchange(p, "a.example", "A", 1, 1000 * MS, 20 * MS)
    exchange(p, "b.example", "A", 2, 1001 * MS, 200 * MS)
    exchange(p, "c.example", "A", 3, 1002 * MS, 5 * MS)
    exchange(p, "x.example", "AAAA", 4, 1003 * MS, 1500 * MS, rcode=3)
    assert hist(p) == {("A", "NOERROR"): ((1, 1, 1, 0), 3), ("AAAA", "NXDOMAIN"): ((0, 0, 0, 1), 1)}
    assert p.latency_samples()[1] == []
    queries = [r for r in out if not r.l7.qr]
    responses = [r for r in out if r.l7.qr]
    assert [r.l7.outcome for r in queries] == [OUTCOME_ANSWERED] * 4
    assert [r.l7.latency_ns for r in responses] == [20 * MS, 200 * MS, 5 * MS, 1500 * MS]
    # Hubble's Layer7.latency_ns on the response flow only.
    assert to_proto(responses[1]).l7.latency_ns == 200 * MS
    assert to_proto(queries[1]).l7.latency_ns == 0


def test_unanswered_after_the_timeout_and_late_responses():
    p, out = processor()
    exchange(p, "never.example", "A", 7, 1000 * MS, None)
    exchange(p, "late.example", "A", 8, 1000 * MS, 2500 * MS)  # past the 2 s timeout: not an answer
    assert p.latency_samples() == ([], [((("query_type", "A"),), 1)])
    p.expire(2999 * MS)  # 1999 ms after the query: still pending
    assert p.tracker.pending and p.latency_samples()[1] == [((("query_type", "A"),), 1)]
    p.expire(3001 * MS)
    assert not p.tracker.pending
    assert p.latency_samples() == ([], [((("query_type", "A"),), 2)])
    assert [r.l7.outcome for r in out if not r.l7.qr] == [OUTCOME_UNANSWERED, OUTCOME_UNANSWERED]
    assert [r.l7.latency_ns for r in out if r.l7.qr] == [0]
    # the same decisions when expiry ran before the late response came
    p2, _ = processor()
    exchange(p2, "late.example", "A", 8, 1000 * MS, None)
    p2.expire(3500 * MS)
    exchange(p2, "other.example", "A", 9, 3500 * MS, None)
    p2.process(event(build_response(build_query("late.example", "A", msg_id=8), []), 3500 * MS, sport=53,
                     dport=40000, src=B, dst=A))
    assert p2.latency_samples()[1] == [((("query_type", "A"),), 1)]
    assert p2.tracker.unmatched_responses == 1


def test_matching_needs_the_5_tuple_and_the_id():
    p, _ = processor()
    q = build_query("a.example", "A", msg_id=5)
    p.process(event(q, 1000 * MS, sport=40000))
    r = build_response(q, [])
    p.process(event(r, 1010 * MS, sport=53, dport=40001, src=B, dst=A))  # other client port
    p.process(event(build_response(build_query("a.example", "A", msg_id=6), []), 1010 * MS, sport=53, dport=40000,
                    src=B, dst=A))  # other id
    p.process(event(r, 1020 * MS, sport=53, dport=40000, src=A, dst=B))  # wrong direction
    assert hist(p) == {} and p.tracker.unmatched_responses == 3
    p.process(event(r, 1030 * MS, sport=53, dport=40000, src=B, dst=A))
    assert hist(p) == {("A", "NOERROR"): ((0, 1, 0, 0), 1)}


def test_repeated_query_is_one_query_and_the_cap_is_counted():
    p, out = processor()
    q = build_query("a.example", "A", msg_id=1)
    p.process(event(q, 1000 * MS))
    p.process(event(q, 1500 * MS))  # client retry: same 5-tuple and id
    p.process(event(build_response(q, []), 1600 * MS, sport=53, src=B, dst=A, dport=40000))
    assert hist(p) == {("A", "NOERROR"): ((0, 0, 1, 0), 1)}  # 600 ms from the first
    assert p.tracker.duplicates == 1 and [r.l7.outcome for r in out if not r.l7.qr] == [OUTCOME_ANSWERED,
                                                                                        OUTCOME_UNTRACKED]
    p2, out2 = processor()
    for i in range(6):
        exchange(p2, "a.example", "A", 100 + i, 1000 * MS, None, sport=41000 + i)
    assert len(p2.tracker.pending) == 4 and p2.tracker.overflow == 2
    p2.expire(10_000 * MS)
    assert p2.latency_samples()[1] == [((("query_type", "A"),), 4)]
    assert [r.l7.outcome for r in out2] == [OUTCOME_UNANSWERED] * 4 + [OUTCOME_UNTRACKED] * 2


def test_disabled_tracks_nothing():
    p, out = processor(DnsLatencyConfig(enabled=False))
    exchange(p, "a.example", "A", 1, 1000 * MS, 20 * MS)
    assert p.tracker is None and [r.l7.outcome for r in out] == [0, 0] and out[1].l7.latency_ns == 0


def test_exposition_renders_the_node_histogram():
    p, _ = processor()
    exchange(p, "a.example", "A", 1, 1000 * MS, 20 * MS)
    text = render([("networkobservability_dns_latency_seconds", "histogram", "h", p.latency_samples()[0])])
    assert text.splitlines()[2:] == [
        'networkobservability_dns_latency_seconds_bucket{query_type="A",return_code="NOERROR",le="0.01"} 0',
        'networkobservability_dns_latency_seconds_bucket{query_type="A",return_code="NOERROR",le="0.1"} 1',
        'networkobservability_dns_latency_seconds_bucket{query_type="A",return_code="NOERROR",le="1.0"} 1',
        'networkobservability_dns_latency_seconds_bucket{query_type="A",return_code="NOERROR",le="+Inf"} 1',
        'networkobservability_dns_latency_seconds_sum{query_type="A",return_code="NOERROR"} 0.02',
        'networkobservability_dns_latency_seconds_count{query_type="A",return_code="NOERROR"} 1',
    ]


def adv(remote=False):
    cfg = parse_metrics_configuration({"contextOptions": [
        {"metricName": "dns_latency_seconds", "sourceLabels": ["namespace", "podname"]},
        {"metricName": "dns_unanswered_queries", "sourceLabels": ["podname"]},
    ]})
    m = AdvancedMetrics(cfg, node_name=NODE, host_interfaces_observed=True, remote_context=remote)
    m.dns_latency_buckets = BOUNDS
    return m


def enrich(records):
    for r in records:
        r.source, r.destination = (SERVER, CLIENT) if r.l7.qr else (CLIENT, SERVER)
    return records


def test_pod_level_latency_and_unanswered_follow_the_node_decisions():
    p, out = processor()
    m = adv()
    exchange(p, "a.example", "A", 1, 1000 * MS, 20 * MS)
    exchange(p, "b.example", "A", 2, 1000 * MS, 200 * MS)
    exchange(p, "never.example", "AAAA", 3, 1000 * MS, None)
    m.process(enrich(out))
    m.sweep(0.0)
    fams = {name: samples for name, _t, _h, samples in m.families()}
    (labels, h), = fams["networkobservability_adv_dns_latency_seconds"]
    assert labels == (("query_type", "A"), ("return_code", "NOERROR"), ("namespace", "shop"), ("podname", "web-1"))
    assert isinstance(h, HistogramValue) and h.counts == (0, 1, 1, 0) and h.count == 2
    assert fams["networkobservability_adv_dns_unanswered_queries"] == []  # still pending
    assert out[4].l7.outcome == OUTCOME_PENDING
    p.expire(4000 * MS)
    m.sweep(1.0)
    fams = {name: samples for name, _t, _h, samples in m.families()}
    assert fams["networkobservability_adv_dns_unanswered_queries"] == [
        ((("query_type", "AAAA"), ("podname", "web-1")), 1)]
    assert not m._dnslat.waiting
    m.sweep(2.0)  # counted once
    assert dict(m.families()[1][3]) == {(("query_type", "AAAA"), ("podname", "web-1")): 1}


def test_pod_level_remote_context_labels():
    p, out = processor()
    m = adv(remote=True)
    exchange(p, "a.example", "A", 1, 1000 * MS, 20 * MS)
    m.process(enrich(out))
    m.sweep(0.0)
    (labels, h), = m.families()[0][3]
    # the query's record: its source is the client
    assert labels == (("query_type", "A"), ("return_code", "NOERROR"), ("source_namespace", "shop"),
                      ("source_podname", "web-1"))
    assert h.count == 1


VIP = socket.inet_aton("10.96.0.10") + bytes(12)  # a Service address (A's queries go there)
REAL = socket.inet_aton("10.244.1.7") + bytes(12)  # the server pod behind it, on another node
NODE_IP = socket.inet_aton("192.168.0.1") + bytes(12)


def test_nat_response_matched_where_it_leaves_toward_the_client():
    """Query to a VIP (pre-DNAT at the client's veth); the response arrives on the uplink from the real server
    (pre-reverse-DNAT: no match, not held forever), and again -- latency only, not counted -- at the client's veth
    from the VIP: that one answers the query, and the held response flow goes out with latency_ns."""
    p, out = processor()
    q = build_query("a.example", "A", msg_id=9)
    r = build_response(q, [RR("a.example", "A", 30, "192.0.2.1")])
    p.process(event(q, 1000 * MS, dst=VIP))
    p.process(event(r, 1030 * MS, src=REAL, dst=A, sport=53, dport=40000, obs=OBS_FROM_NETWORK))
    assert [x.l7.qr for x in out] == [False]  # the response's flow waits
    p.process(event(r, 1031 * MS, src=VIP, dst=A, sport=53, dport=40000, obs=OBS_TO_ENDPOINT | OBS_LATENCY_ONLY))
    assert (p.requests, p.responses, p.latency_only_events) == (1, 1, 1)
    assert hist(p) == {("A", "NOERROR"): ((0, 1, 0, 0), 1)}
    query, response = out
    assert response.l7.qr and response.l7.latency_ns == 31 * MS and response.obs_point == OBS_FROM_NETWORK
    assert response.src_ip == REAL[:4] and to_proto(response).l7.latency_ns == 31 * MS
    assert query.l7.outcome == OUTCOME_ANSWERED and query.l7.answer.latency_ns == 31 * MS
    # SNAT: the response arrives for the node's address; a latency-only report matching nothing changes nothing
    q2 = build_query("b.example", "A", msg_id=10)
    r2 = build_response(q2, [])
    p.process(event(q2, 2000 * MS, dst=REAL, sport=40001))
    p.process(event(r2, 2005 * MS, src=REAL, dst=NODE_IP, sport=53, dport=61000, obs=OBS_FROM_NETWORK))
    p.process(event(r2, 2005 * MS, src=REAL, dst=A, sport=53, dport=40002, obs=OBS_TO_ENDPOINT | OBS_LATENCY_ONLY))
    assert len(out) == 3 and p.tracker.pending  # wrong port: no match; the flow is still held
    p.process(event(r2, 2006 * MS, src=REAL, dst=A, sport=53, dport=40001, obs=OBS_TO_ENDPOINT | OBS_LATENCY_ONLY))
    assert len(out) == 4 and out[3].l7.latency_ns == 6 * MS and not p.tracker.pending
    assert hist(p) == {("A", "NOERROR"): ((1, 1, 0, 0), 2)}


def test_held_response_flow_goes_out_without_a_match():
    p, out = processor()
    r = build_response(build_query("a.example", "A", msg_id=3), [])
    p.process(event(r, 1000 * MS, src=REAL, dst=A, sport=53, dport=40000, obs=OBS_FROM_NETWORK))
    p.process(event(r, 1000 * MS, src=REAL, dst=A, sport=53, dport=40000, obs=OBS_TO_ENDPOINT | OBS_LATENCY_ONLY))
    assert out == [] and p.responses == 1
    p.expire(1010 * MS)
    assert out == []
    p.expire(1021 * MS)
    assert len(out) == 1 and out[0].l7.latency_ns == 0 and hist(p) == {}
