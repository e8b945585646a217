"""FlowRecord.l7 (a DnsRecord) -> Hubble flow.Flow: Type L7, event_type 129, l7.dns, Cilium's Summary texts,
verdict FORWARDED for Retina's DNS verdict 16, Retina's dns_type/num_responses extension keys."""

from __future__ import annotations

import socket

from retina_core.dns.encoder import RR, build_query, build_response
from retina_core.dns.parser import parse
from retina_core.dns.record import VERDICT_DNS, DnsRecord
from retina_core.convert import dns_summary, extensions_struct, to_json_dict, to_proto
from retina_core.record import DIR_EGRESS, DIR_INGRESS, OBS_FROM_ENDPOINT, FlowRecord
from retina_core.proto import flow_pb2

T = 1_700_000_000_123_456_789


def record(dns: DnsRecord, v6: bool = False, proto: int = 17) -> FlowRecord:
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = ("fd00::10", "fd00::53") if v6 else ("10.244.0.10", "10.244.0.53")
    if dns.qr:
        src, dst = dst, src
    rec = FlowRecord(T, 6 if v6 else 4, socket.inet_pton(fam, src), socket.inet_pton(fam, dst), proto,
                     53 if dns.qr else 40000, 40000 if dns.qr else 53, obs_point=OBS_FROM_ENDPOINT,
                     direction=DIR_INGRESS if dns.qr else DIR_EGRESS, is_reply=dns.qr, ifindex=7, ifname="vpod0",
                     packets=1, bytes=90, packet_bytes=90, node_name="node-a", verdict=VERDICT_DNS)
    rec.l7 = dns
    return rec


def from_wire(data: bytes) -> DnsRecord:
    return DnsRecord.from_message(parse(data))


Q = build_query("example.com", "A", msg_id=11)


def test_query():
    f = to_proto(record(from_wire(Q)))
    assert f.Type == flow_pb2.L7
    assert (f.event_type.type, f.event_type.sub_type) == (129, 0)
    assert f.verdict == flow_pb2.FORWARDED
    assert f.l7.type == flow_pb2.REQUEST
    assert f.l7.WhichOneof("record") == "dns"
    assert f.l7.dns.query == "example.com." and list(f.l7.dns.qtypes) == ["A"] and not f.l7.dns.ips
    assert f.Summary == "DNS Query example.com. A"
    assert f.l4.UDP.destination_port == 53 and f.IP.source == "10.244.0.10"
    assert f.trace_observation_point == flow_pb2.FROM_ENDPOINT
    assert f.traffic_direction == flow_pb2.EGRESS and f.is_reply.value is False
    ext = extensions_struct(record(from_wire(Q)))
    assert ext["dns_type"] == "QUERY" and "num_responses" not in ext and ext["bytes"] == 90


def test_response_with_addresses_and_cname():
    r = build_response(Q, [RR("example.com", "CNAME", 300, "cdn.example.net"),
                           RR("cdn.example.net", "A", 30, "1.2.3.4"), RR("cdn.example.net", "A", 40, "5.6.7.8")])
    rec = record(from_wire(r))
    f = to_proto(rec)
    assert f.l7.type == flow_pb2.RESPONSE
    d = f.l7.dns
    assert list(d.ips) == ["1.2.3.4", "5.6.7.8"] and d.ttl == 30 and list(d.cnames) == ["cdn.example.net."]
    assert list(d.rrtypes) == ["CNAME", "A", "A"] and d.rcode == 0
    assert f.Summary == 'DNS Answer "1.2.3.4,5.6.7.8" TTL: 30 (Query example.com. A)'
    assert f.is_reply.value is True and f.traffic_direction == flow_pb2.INGRESS
    ext = extensions_struct(rec)
    assert ext["dns_type"] == "RESPONSE" and ext["num_responses"] == 3
    j = to_json_dict(f)
    assert j["Type"] == "L7" and j["l7"]["dns"]["query"] == "example.com." and j["event_type"] == {"type": 129}


def test_nxdomain_ipv6_and_tcp():
    q6 = build_query("missing.example", "AAAA")
    rec = record(from_wire(build_response(q6, rcode=3)), v6=True, proto=6)
    f = to_proto(rec)
    assert f.l7.dns.rcode == 3 and list(f.l7.dns.qtypes) == ["AAAA"]
    assert f.Summary == "DNS Answer RCode: NXDOMAIN (Query missing.example. AAAA)"
    assert f.IP.ipVersion == flow_pb2.IPv6 and f.l4.TCP.source_port == 53


def test_summary_multiple_qtypes_and_empty_answer():
    dns = DnsRecord(True, "x.example.", ("A", "AAAA"), 0, (), 0)
    assert dns_summary(dns) == 'DNS Answer "" TTL: 0 (Query x.example. A,AAAA)'
    assert dns_summary(DnsRecord(False, "x.example.", ("A", "AAAA"))) == "DNS Query x.example. A,AAAA"


def test_l3_records_unchanged():
    rec = FlowRecord(T, 4, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"), 17, 1000, 2000)
    assert rec.l7 is None
    f = to_proto(rec)
    assert f.Type == flow_pb2.L3_L4 and not f.HasField("l7") and f.Summary == "UDP" and f.event_type.type == 4
    assert "dns_type" not in extensions_struct(rec)


def test_record_alias_for_metrics_module():
    dns = from_wire(Q)
    rec = record(dns)
    assert rec.l7 is dns and dns.is_response is False and dns.qtypes == ("A",)
