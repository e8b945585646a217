"""Field-by-field checks of FlowRecord -> flow.Flow conversion (retina_core.convert)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

from retina_core.proto import generate as proto_gen

proto_gen.generate()  # no-op when the generated code is current

from google.protobuf import struct_pb2  # noqa: E402

from retina_core.convert import (  # noqa: E402
    icmp_type_code_name,
    tcp_flags_summary,
    to_json_dict,
    to_proto,
)
from retina_core.record import (  # noqa: E402
    DIR_EGRESS,
    DIR_INGRESS,
    DIR_UNKNOWN,
    OBS_FROM_ENDPOINT,
    OBS_FROM_NETWORK,
    OBS_TO_ENDPOINT,
    OBS_TO_NETWORK,
    REPORT_REASONS,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_NS,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VERDICT_DROPPED,
    FlowRecord,
)
from retina_core.proto import flow_pb2  # noqa: E402

T_NS = 1_700_000_000_123_456_789


def v4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


def v6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def ext(flow) -> dict:
    s = struct_pb2.Struct()
    assert flow.extensions.Unpack(s)
    return json.loads(json.dumps(dict(s.items()), default=lambda v: dict(v.items())))


def tcp_synack_record(**kw) -> FlowRecord:
    args = dict(
        time_ns=T_NS,
        ip_version=4,
        src_ip=v4("10.244.1.5"),
        dst_ip=v4("10.244.2.7"),
        proto=6,
        src_port=8080,
        dst_port=51234,
        tcp_flags=TCP_SYN | TCP_ACK,
        obs_point=OBS_FROM_ENDPOINT,
        direction=DIR_INGRESS,
        is_reply=True,
        ifindex=17,
        ifname="veth1a2b",
        packets=1,
        bytes=74,
        packet_bytes=74,
        flag_counts=(0, 1, 0, 0, 1, 0, 0, 0, 0, 1),
        report_reason=REPORT_REASONS.index("flags"),
        node_name="node-a",
    )
    args.update(kw)
    return FlowRecord(**args)


def test_tcp_synack_ipv4_field_by_field():
    f = to_proto(tcp_synack_record())
    assert isinstance(f, flow_pb2.Flow)
    assert f.time.seconds == 1_700_000_000 and f.time.nanos == 123_456_789
    assert f.verdict == flow_pb2.FORWARDED
    assert f.Type == flow_pb2.L3_L4
    assert f.node_name == "node-a"
    assert f.IP.source == "10.244.1.5"
    assert f.IP.destination == "10.244.2.7"
    assert f.IP.ipVersion == flow_pb2.IPv4 == 1
    assert f.l4.WhichOneof("protocol") == "TCP"
    assert f.l4.TCP.source_port == 8080
    assert f.l4.TCP.destination_port == 51234
    flags = f.l4.TCP.flags
    assert f.l4.TCP.HasField("flags")
    assert (flags.SYN, flags.ACK) == (True, True)
    assert not any((flags.FIN, flags.RST, flags.PSH, flags.URG, flags.ECE, flags.CWR, flags.NS))
    assert f.event_type.type == 4 and f.event_type.sub_type == 5  # trace, from-endpoint
    assert f.trace_observation_point == flow_pb2.FROM_ENDPOINT == 5
    assert f.traffic_direction == flow_pb2.INGRESS
    assert f.HasField("is_reply") and f.is_reply.value is True
    assert f.reply is True
    assert f.interface.index == 17 and f.interface.name == "veth1a2b"
    assert f.Summary == "TCP Flags: SYN, ACK"
    assert f.drop_reason == 0 and f.drop_reason_desc == flow_pb2.DROP_REASON_UNKNOWN
    assert not f.HasField("source") and not f.HasField("destination")
    assert f.extensions.type_url == "type.googleapis.com/google.protobuf.Struct"
    e = ext(f)
    # A single packet: nothing previously observed, so only Retina's `bytes` and our report_reason.
    assert e == {"bytes": 74, "report_reason": "flags"}


def test_udp_ipv6_record():
    rec = FlowRecord(
        time_ns=T_NS,
        ip_version=6,
        src_ip=v6("fd00::1"),
        dst_ip=v6("2001:db8::53"),
        proto=17,
        src_port=40000,
        dst_port=53,
        obs_point=OBS_TO_NETWORK,
        direction=DIR_EGRESS,
        is_reply=False,
        ifindex=2,
        ifname="eth0",
        packets=3,
        bytes=300,
        packet_bytes=100,
        report_reason=REPORT_REASONS.index("interval"),
    )
    f = to_proto(rec)
    assert f.IP.source == "fd00::1" and f.IP.destination == "2001:db8::53"
    assert f.IP.ipVersion == flow_pb2.IPv6 == 2
    assert f.l4.WhichOneof("protocol") == "UDP"
    assert (f.l4.UDP.source_port, f.l4.UDP.destination_port) == (40000, 53)
    assert f.Summary == "UDP"
    assert (f.event_type.type, f.event_type.sub_type) == (4, 11)
    assert f.trace_observation_point == flow_pb2.TO_NETWORK == 11
    assert f.traffic_direction == flow_pb2.EGRESS
    assert f.HasField("is_reply") and f.is_reply.value is False and f.reply is False
    assert f.node_name == ""
    e = ext(f)
    assert e == {
        "bytes": 100,
        "previously_observed_packets": 2,
        "previously_observed_bytes": 200,
        "report_reason": "interval",
    }
    assert "previously_observed_tcp_flags" not in e


def test_icmpv4_echo_request():
    rec = FlowRecord(
        time_ns=T_NS,
        ip_version=4,
        src_ip=v4("10.0.0.1"),
        dst_ip=v4("8.8.8.8"),
        proto=1,
        icmp_type=8,
        icmp_code=0,
        obs_point=OBS_FROM_NETWORK,
        direction=DIR_UNKNOWN,
        packet_bytes=98,
        bytes=98,
    )
    f = to_proto(rec)
    assert f.l4.WhichOneof("protocol") == "ICMPv4"
    assert (f.l4.ICMPv4.type, f.l4.ICMPv4.code) == (8, 0)
    assert f.Summary == "ICMPv4 EchoRequest"
    assert (f.event_type.type, f.event_type.sub_type) == (4, 10)
    assert f.trace_observation_point == flow_pb2.FROM_NETWORK == 10
    assert f.traffic_direction == flow_pb2.TRAFFIC_DIRECTION_UNKNOWN
    assert not f.HasField("is_reply")
    assert not f.HasField("interface")


def test_icmpv6_and_icmp_names():
    rec = FlowRecord(
        time_ns=T_NS, ip_version=6, src_ip=v6("::1"), dst_ip=v6("::2"), proto=58, icmp_type=128,
        obs_point=OBS_TO_ENDPOINT,
    )
    f = to_proto(rec)
    assert f.l4.WhichOneof("protocol") == "ICMPv6"
    assert f.l4.ICMPv6.type == 128
    assert f.Summary == "ICMPv6 EchoRequest"
    assert (f.event_type.type, f.event_type.sub_type) == (4, 0)  # to-endpoint
    assert f.trace_observation_point == flow_pb2.TO_ENDPOINT == 101
    assert icmp_type_code_name(0, 0) == "EchoReply"
    assert icmp_type_code_name(3, 3) == "DestinationUnreachable(Port)"
    assert icmp_type_code_name(3, 99) == "DestinationUnreachable(Code: 99)"
    assert icmp_type_code_name(8, 1) == "EchoRequest(Code: 1)"
    assert icmp_type_code_name(42, 1) == "42(1)"
    assert icmp_type_code_name(129, 0, v6=True) == "EchoReply"
    assert icmp_type_code_name(1, 4, v6=True) == "DestinationUnreachable(PortUnreachable)"


def test_tcp_summary_order_is_ciliums():
    every = TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG | TCP_ECE | TCP_CWR | TCP_NS
    assert tcp_flags_summary(every) == "TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR, NS"
    assert tcp_flags_summary(TCP_FIN | TCP_ACK) == "TCP Flags: ACK, FIN"
    assert tcp_flags_summary(TCP_PSH | TCP_ACK) == "TCP Flags: ACK, PSH"
    assert tcp_flags_summary(TCP_RST) == "TCP Flags: RST"
    f = to_proto(tcp_synack_record(tcp_flags=TCP_ECE | TCP_CWR | TCP_NS | TCP_SYN, flag_counts=None))
    fl = f.l4.TCP.flags
    assert (fl.SYN, fl.ECE, fl.CWR, fl.NS, fl.ACK) == (True, True, True, True, False)
    assert f.Summary == "TCP Flags: SYN, ECE, CWR, NS"


def test_multi_packet_aggregation_with_flag_counts():
    # 1000 packets of one connection: this packet is ACK; before it: 1 SYN, 1 SYN-ACK (both SYN+ACK counted),
    # 998 ACKs (one of them this packet), 10 PSH.
    counts = (0, 2, 0, 10, 999, 0, 0, 0, 0, 1)  # FIN SYN RST PSH ACK URG ECE CWR NS SYNACK
    rec = tcp_synack_record(
        tcp_flags=TCP_ACK,
        packets=1000,
        bytes=1_500_000,
        packet_bytes=1500,
        flag_counts=counts,
        is_reply=None,
        report_reason=REPORT_REASONS.index("interval"),
    )
    f = to_proto(rec)
    assert f.Summary == "TCP Flags: ACK"
    assert not f.HasField("is_reply") and f.reply is False
    e = ext(f)
    assert e["bytes"] == 1500
    assert e["previously_observed_packets"] == 999
    assert e["previously_observed_bytes"] == 1_498_500
    assert e["report_reason"] == "interval"
    assert e["previously_observed_tcp_flags"] == {
        "FIN": 0, "SYN": 2, "RST": 0, "PSH": 10, "ACK": 998, "URG": 0, "ECE": 0, "CWR": 0, "NS": 0, "SYNACK": 1,
    }
    # is_reply False is set explicitly (not the same as unset).
    f2 = to_proto(tcp_synack_record(is_reply=False))
    assert f2.HasField("is_reply") and f2.is_reply.value is False
    f3 = to_proto(tcp_synack_record(is_reply=True))
    assert f3.HasField("is_reply") and f3.is_reply.value is True


def test_sweep_record_subtracts_no_own_flags():
    # A sweep record has no packet of its own (packet_bytes == 0): flag_counts are all "previously observed".
    rec = tcp_synack_record(
        tcp_flags=0, packets=4, bytes=400, packet_bytes=0, flag_counts=(1, 0, 0, 0, 4, 0, 0, 0, 0, 0),
        report_reason=REPORT_REASONS.index("sweep"),
    )
    e = ext(to_proto(rec))
    assert "bytes" not in e
    assert e["previously_observed_packets"] == 3
    assert e["previously_observed_bytes"] == 400
    assert e["previously_observed_tcp_flags"]["ACK"] == 4
    assert e["previously_observed_tcp_flags"]["FIN"] == 1
    assert "SYNACK" not in e["previously_observed_tcp_flags"]
    assert e["report_reason"] == "sweep"


def test_dropped_record_event_type_and_reason():
    """drop_reason keeps the running kernel's skb_drop_reason code; drop_reason_desc and the event sub-type get
    Hubble's closest DropReason; the kernel's name is in the drop_reason extension."""
    from retina_exporter.plugins.dropreason.reasons import kernel_table

    code = kernel_table().code("NETFILTER_DROP")
    rec = tcp_synack_record(verdict=VERDICT_DROPPED, drop_reason=code, drop_reason_name="NETFILTER_DROP", tcp_flags=TCP_SYN,
                            is_reply=None)
    f = to_proto(rec)
    assert f.verdict == flow_pb2.DROPPED
    assert (f.event_type.type, f.event_type.sub_type) == (1, flow_pb2.POLICY_DENIED)
    assert f.drop_reason == code
    assert f.drop_reason_desc == flow_pb2.POLICY_DENIED
    d = to_json_dict(f)
    assert d["verdict"] == "DROPPED" and d["drop_reason_desc"] == "POLICY_DENIED"
    assert ext(f)["drop_reason"] == "NETFILTER_DROP"


@dataclass
class _Peer:
    namespace: str = "shop"
    pod_name: str = "cart-7d9f-abcde"
    labels: tuple = ("app=cart", "k8s:tier=backend")
    workloads: tuple = (("Deployment", "cart"),)
    identity: int = 12345
    extra: list = field(default_factory=list)


def test_endpoints_from_enricher_objects():
    rec = tcp_synack_record()
    rec.source = _Peer()
    rec.destination = _Peer(namespace="kube-system", pod_name="coredns-1", labels=(), workloads=(), identity=0)
    f = to_proto(rec)
    assert f.source.namespace == "shop"
    assert f.source.pod_name == "cart-7d9f-abcde"
    assert list(f.source.labels) == ["k8s:app=cart", "k8s:tier=backend", "k8s:io.kubernetes.pod.namespace=shop"]
    assert [(w.kind, w.name) for w in f.source.workloads] == [("Deployment", "cart")]
    assert f.source.identity == 12345
    assert f.destination.namespace == "kube-system" and f.destination.pod_name == "coredns-1"
    assert list(f.destination.labels) == ["k8s:io.kubernetes.pod.namespace=kube-system"]
    assert f.destination.identity == 0


def test_json_field_names():
    rec = tcp_synack_record(packets=2, bytes=148)
    rec.source = _Peer()
    d = to_json_dict(to_proto(rec))
    assert json.loads(json.dumps(d)) == d  # plain JSON-able
    for key in ("time", "verdict", "IP", "l4", "Type", "node_name", "event_type", "traffic_direction",
                "trace_observation_point", "is_reply", "interface", "Summary", "extensions", "source"):
        assert key in d, key
    assert d["time"] == "2023-11-14T22:13:20.123456789Z"
    assert d["IP"] == {"source": "10.244.1.5", "destination": "10.244.2.7", "ipVersion": "IPv4"}
    assert d["l4"]["TCP"]["source_port"] == 8080
    assert d["l4"]["TCP"]["destination_port"] == 51234
    assert d["l4"]["TCP"]["flags"] == {"SYN": True, "ACK": True}
    assert d["is_reply"] is True
    assert d["Type"] == "L3_L4"
    assert d["trace_observation_point"] == "FROM_ENDPOINT"
    assert d["event_type"] == {"type": 4, "sub_type": 5}
    assert d["source"]["pod_name"] == "cart-7d9f-abcde"
    assert d["extensions"]["@type"] == "type.googleapis.com/google.protobuf.Struct"
    assert d["extensions"]["value"]["previously_observed_packets"] == 1
    assert d["extensions"]["value"]["previously_observed_bytes"] == 74
    assert d["Summary"] == "TCP Flags: SYN, ACK"


def test_roundtrip_wire_bytes():
    f = to_proto(tcp_synack_record(packets=5, bytes=500, packet_bytes=100))
    g = flow_pb2.Flow.FromString(f.SerializeToString())
    assert g == f


def test_hand_encoded_extensions_match_protobuf_struct():
    # The extensions bytes are written by hand; they must decode to exactly the Struct protobuf would build.
    import random

    from retina_core.convert import extensions_struct

    rng = random.Random(7)
    for _ in range(500):
        proto = rng.choice((6, 6, 17, 1))
        packets = rng.choice((0, 1, 2, 1000, 2**40))
        packet_bytes = rng.choice((0, 60, 1500, 65535))
        counts = None
        if proto == 6 and rng.random() < 0.8:
            counts = tuple(rng.choice((0, 0, 1, 5, 300, 2**33)) for _ in range(10))
        rec = tcp_synack_record(
            proto=proto,
            packets=packets,
            packet_bytes=packet_bytes,
            bytes=packet_bytes + rng.choice((0, 1, 10**6, 2**45)),
            tcp_flags=rng.randrange(0x200),
            flag_counts=counts,
            report_reason=rng.choice((0, 3, len(REPORT_REASONS) - 1, 99)),
        )
        got = extensions_struct(rec)
        fields: dict = {}
        if packet_bytes:
            fields["bytes"] = packet_bytes
        if packets > 1:
            fields["previously_observed_packets"] = packets - 1
        if rec.bytes - packet_bytes:
            fields["previously_observed_bytes"] = rec.bytes - packet_bytes
        if proto == 6 and counts is not None:
            own = rec.tcp_flags if packet_bytes else 0
            bits = {"FIN": TCP_FIN, "SYN": TCP_SYN, "RST": TCP_RST, "PSH": TCP_PSH, "ACK": TCP_ACK, "URG": TCP_URG,
                    "ECE": TCP_ECE, "CWR": TCP_CWR, "NS": TCP_NS}
            names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
            prev = {n: max(0, counts[i] - (1 if own & bits[n] else 0)) for i, n in enumerate(names)}
            synack = counts[9] - (1 if own & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) else 0)
            if synack > 0:
                prev["SYNACK"] = synack
            if any(prev.values()):
                fields["previously_observed_tcp_flags"] = prev
        rr = rec.report_reason
        fields["report_reason"] = REPORT_REASONS[rr] if rr < len(REPORT_REASONS) else str(rr)
        want = struct_pb2.Struct()
        want.update(fields)
        assert got == want, (rec, got, want)
        f = to_proto(rec)
        unpacked = struct_pb2.Struct()
        assert f.extensions.Unpack(unpacked) and unpacked == want


def test_enriched_services_and_names():
    """source_service/destination_service and *_names come from the enricher's identities."""
    from retina_core.identity import Identity

    rec = tcp_synack_record()
    rec.source = Identity("pod", "shop", "web-1", ("app=web",), (("Deployment", "web"),), service="web-svc",
                          names=("web-1.shop.pod.cluster.local",))
    rec.destination = Identity("service", "shop", service="db", names=("db.shop.svc.cluster.local",))
    f = to_proto(rec)
    assert (f.source_service.name, f.source_service.namespace) == ("web-svc", "shop")
    assert (f.destination_service.name, f.destination_service.namespace) == ("db", "shop")
    assert list(f.source_names) == ["web-1.shop.pod.cluster.local"]
    assert list(f.destination_names) == ["db.shop.svc.cluster.local"]
    assert f.source.pod_name == "web-1"
    assert list(f.source.labels) == ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"]
    assert [(w.kind, w.name) for w in f.source.workloads] == [("Deployment", "web")]
    d = to_json_dict(f)
    assert d["destination_service"] == {"name": "db", "namespace": "shop"}
