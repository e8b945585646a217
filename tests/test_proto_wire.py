"""Our flow.proto must carry Hubble's wire identity: message names, field names and numbers (hubble-api.md)."""

from __future__ import annotations

import pytest

from retina_core.proto import generate as proto_gen

proto_gen.generate()  # no-op when the generated code is current

from retina_core.proto import flow_pb2  # noqa: E402

# (message, field name, number) from hubble-api.md §1 (FlowFilter) and §2 (Flow and nested messages).
WIRE_TABLE = [
    # Flow
    ("Flow", "time", 1),
    ("Flow", "uuid", 34),
    ("Flow", "verdict", 2),
    ("Flow", "drop_reason", 3),
    ("Flow", "auth_type", 35),
    ("Flow", "ethernet", 4),
    ("Flow", "IP", 5),
    ("Flow", "l4", 6),
    ("Flow", "source", 8),
    ("Flow", "destination", 9),
    ("Flow", "Type", 10),
    ("Flow", "node_name", 11),
    ("Flow", "node_labels", 37),
    ("Flow", "source_names", 13),
    ("Flow", "destination_names", 14),
    ("Flow", "l7", 15),
    ("Flow", "reply", 16),
    ("Flow", "event_type", 19),
    ("Flow", "source_service", 20),
    ("Flow", "destination_service", 21),
    ("Flow", "traffic_direction", 22),
    ("Flow", "policy_match_type", 23),
    ("Flow", "trace_observation_point", 24),
    ("Flow", "trace_reason", 36),
    ("Flow", "ip_trace_id", 40),
    ("Flow", "drop_reason_desc", 25),
    ("Flow", "is_reply", 26),
    ("Flow", "interface", 28),
    ("Flow", "Summary", 100000),
    ("Flow", "extensions", 150000),
    # FlowFilter
    ("FlowFilter", "uuid", 29),
    ("FlowFilter", "source_ip", 1),
    ("FlowFilter", "source_ip_xlated", 34),
    ("FlowFilter", "source_pod", 2),
    ("FlowFilter", "source_fqdn", 7),
    ("FlowFilter", "source_label", 10),
    ("FlowFilter", "source_service", 16),
    ("FlowFilter", "source_workload", 26),
    ("FlowFilter", "source_cluster_name", 37),
    ("FlowFilter", "destination_ip", 3),
    ("FlowFilter", "destination_pod", 4),
    ("FlowFilter", "destination_fqdn", 8),
    ("FlowFilter", "destination_label", 11),
    ("FlowFilter", "destination_service", 17),
    ("FlowFilter", "destination_workload", 27),
    ("FlowFilter", "destination_cluster_name", 38),
    ("FlowFilter", "traffic_direction", 30),
    ("FlowFilter", "verdict", 5),
    ("FlowFilter", "drop_reason_desc", 33),
    ("FlowFilter", "interface", 35),
    ("FlowFilter", "event_type", 6),
    ("FlowFilter", "http_status_code", 9),
    ("FlowFilter", "protocol", 12),
    ("FlowFilter", "source_port", 13),
    ("FlowFilter", "destination_port", 14),
    ("FlowFilter", "reply", 15),
    ("FlowFilter", "dns_query", 18),
    ("FlowFilter", "source_identity", 19),
    ("FlowFilter", "destination_identity", 20),
    ("FlowFilter", "http_method", 21),
    ("FlowFilter", "http_path", 22),
    ("FlowFilter", "http_url", 31),
    ("FlowFilter", "http_header", 32),
    ("FlowFilter", "tcp_flags", 23),
    ("FlowFilter", "node_name", 24),
    ("FlowFilter", "node_labels", 36),
    ("FlowFilter", "ip_version", 25),
    ("FlowFilter", "trace_id", 28),
    ("FlowFilter", "ip_trace_id", 39),
    ("FlowFilter", "encrypted", 40),
    ("FlowFilter", "experimental", 999),
    ("FlowFilter.Experimental", "cel_expression", 1),
    ("EventTypeFilter", "type", 1),
    ("EventTypeFilter", "match_sub_type", 2),
    ("EventTypeFilter", "sub_type", 3),
    # Endpoint, Workload
    ("Endpoint", "ID", 1),
    ("Endpoint", "identity", 2),
    ("Endpoint", "cluster_name", 7),
    ("Endpoint", "namespace", 3),
    ("Endpoint", "labels", 4),
    ("Endpoint", "pod_name", 5),
    ("Endpoint", "workloads", 6),
    ("Workload", "name", 1),
    ("Workload", "kind", 2),
    # IP
    ("IP", "source", 1),
    ("IP", "source_xlated", 5),
    ("IP", "destination", 2),
    ("IP", "ipVersion", 3),
    ("IP", "encrypted", 4),
    # Layer4 and protocols
    ("Layer4", "TCP", 1),
    ("Layer4", "UDP", 2),
    ("Layer4", "ICMPv4", 3),
    ("Layer4", "ICMPv6", 4),
    ("Layer4", "SCTP", 5),
    ("TCP", "source_port", 1),
    ("TCP", "destination_port", 2),
    ("TCP", "flags", 3),
    ("UDP", "source_port", 1),
    ("UDP", "destination_port", 2),
    ("SCTP", "source_port", 1),
    ("SCTP", "destination_port", 2),
    ("ICMPv4", "type", 1),
    ("ICMPv4", "code", 2),
    ("ICMPv6", "type", 1),
    ("ICMPv6", "code", 2),
    # TCPFlags
    ("TCPFlags", "FIN", 1),
    ("TCPFlags", "SYN", 2),
    ("TCPFlags", "RST", 3),
    ("TCPFlags", "PSH", 4),
    ("TCPFlags", "ACK", 5),
    ("TCPFlags", "URG", 6),
    ("TCPFlags", "ECE", 7),
    ("TCPFlags", "CWR", 8),
    ("TCPFlags", "NS", 9),
    # Others
    ("Ethernet", "source", 1),
    ("Ethernet", "destination", 2),
    ("Layer7", "type", 1),
    ("Layer7", "latency_ns", 2),
    ("Layer7", "dns", 100),
    ("Layer7", "http", 101),
    ("DNS", "query", 1),
    ("DNS", "ips", 2),
    ("DNS", "ttl", 3),
    ("DNS", "cnames", 4),
    ("DNS", "observation_source", 5),
    ("DNS", "rcode", 6),
    ("DNS", "qtypes", 7),
    ("DNS", "rrtypes", 8),
    ("HTTP", "code", 1),
    ("HTTP", "method", 2),
    ("HTTP", "url", 3),
    ("HTTP", "protocol", 4),
    ("HTTP", "headers", 5),
    ("HTTPHeader", "key", 1),
    ("HTTPHeader", "value", 2),
    ("Service", "name", 1),
    ("Service", "namespace", 2),
    ("CiliumEventType", "type", 1),
    ("CiliumEventType", "sub_type", 2),
    ("NetworkInterface", "index", 1),
    ("NetworkInterface", "name", 2),
    ("IPTraceID", "trace_id", 1),
    ("IPTraceID", "ip_option_type", 2),
    ("LostEvent", "source", 1),
    ("LostEvent", "num_events_lost", 2),
    ("LostEvent", "cpu", 3),
    ("LostEvent", "first", 4),
    ("LostEvent", "last", 5),
    ("AgentEvent", "type", 1),
    ("DebugEvent", "type", 1),
    ("DebugEvent", "source", 2),
    ("DebugEvent", "hash", 3),
    ("DebugEvent", "arg1", 4),
    ("DebugEvent", "arg2", 5),
    ("DebugEvent", "arg3", 6),
    ("DebugEvent", "message", 7),
    ("DebugEvent", "cpu", 8),
]

ENUM_TABLE = {
    "Verdict": {"VERDICT_UNKNOWN": 0, "FORWARDED": 1, "DROPPED": 2, "ERROR": 3, "AUDIT": 4, "REDIRECTED": 5,
                "TRACED": 6, "TRANSLATED": 7},
    "FlowType": {"UNKNOWN_TYPE": 0, "L3_L4": 1, "L7": 2, "SOCK": 3},
    "TrafficDirection": {"TRAFFIC_DIRECTION_UNKNOWN": 0, "INGRESS": 1, "EGRESS": 2},
    "IPVersion": {"IP_NOT_USED": 0, "IPv4": 1, "IPv6": 2},
    "AuthType": {"DISABLED": 0, "SPIRE": 1, "TEST_ALWAYS_FAIL": 2},
    "TraceObservationPoint": {"UNKNOWN_POINT": 0, "TO_PROXY": 1, "TO_HOST": 2, "TO_STACK": 3, "TO_OVERLAY": 4,
                              "TO_ENDPOINT": 101, "FROM_ENDPOINT": 5, "FROM_PROXY": 6, "FROM_HOST": 7,
                              "FROM_STACK": 8, "FROM_OVERLAY": 9, "FROM_NETWORK": 10, "TO_NETWORK": 11,
                              "FROM_CRYPTO": 12, "TO_CRYPTO": 13},
    "TraceReason": {"TRACE_REASON_UNKNOWN": 0, "NEW": 1, "ESTABLISHED": 2, "REPLY": 3, "RELATED": 4,
                    "REOPENED": 5, "SRV6_ENCAP": 6, "SRV6_DECAP": 7, "ENCRYPT_OVERLAY": 8},
    "L7FlowType": {"UNKNOWN_L7_TYPE": 0, "REQUEST": 1, "RESPONSE": 2, "SAMPLE": 3},
    "DropReason": {"DROP_REASON_UNKNOWN": 0, "INVALID_SOURCE_MAC": 130, "INVALID_DESTINATION_MAC": 131,
                   "INVALID_SOURCE_IP": 132, "POLICY_DENIED": 133, "INVALID_PACKET_DROPPED": 134,
                   "CT_TRUNCATED_OR_INVALID_HEADER": 135, "CT_MISSING_TCP_ACK_FLAG": 136,
                   "CT_UNKNOWN_L4_PROTOCOL": 137, "CT_CANNOT_CREATE_ENTRY_FROM_PACKET": 138,
                   "UNSUPPORTED_L3_PROTOCOL": 139, "MISSED_TAIL_CALL": 140, "ERROR_WRITING_TO_PACKET": 141,
                   "UNKNOWN_L4_PROTOCOL": 142, "UNKNOWN_ICMPV4_CODE": 143, "UNKNOWN_ICMPV4_TYPE": 144,
                   "UNKNOWN_ICMPV6_CODE": 145, "UNKNOWN_ICMPV6_TYPE": 146, "ERROR_RETRIEVING_TUNNEL_KEY": 147,
                   "ERROR_RETRIEVING_TUNNEL_OPTIONS": 148, "INVALID_GENEVE_OPTION": 149,
                   "UNKNOWN_L3_TARGET_ADDRESS": 150, "STALE_OR_UNROUTABLE_IP": 151,
                   "SERVICE_BACKEND_NOT_FOUND": 158, "FIB_LOOKUP_FAILED": 169, "POLICY_DENY": 181,
                   "AUTH_REQUIRED": 189, "DROP_PUNT_PROXY": 205},
    "LostEventSource": {"UNKNOWN_LOST_EVENT_SOURCE": 0, "PERF_EVENT_RING_BUFFER": 1, "OBSERVER_EVENTS_QUEUE": 2,
                        "HUBBLE_RING_BUFFER": 3},
    "AgentEventType": {"AGENT_EVENT_UNKNOWN": 0, "AGENT_STARTED": 2, "POLICY_UPDATED": 3, "POLICY_DELETED": 4,
                       "ENDPOINT_REGENERATE_SUCCESS": 5, "ENDPOINT_REGENERATE_FAILURE": 6, "ENDPOINT_CREATED": 7,
                       "ENDPOINT_DELETED": 8, "IPCACHE_UPSERTED": 9, "IPCACHE_DELETED": 10,
                       "SERVICE_UPSERTED": 11, "SERVICE_DELETED": 12},
}

# Selected field types that matter on the wire (wrappers, message types, repeated-ness).
TYPE_TABLE = [
    ("Flow", "time", "google.protobuf.Timestamp"),
    ("Flow", "is_reply", "google.protobuf.BoolValue"),
    ("Flow", "extensions", "google.protobuf.Any"),
    ("Flow", "IP", "flow.IP"),
    ("Flow", "l4", "flow.Layer4"),
    ("Flow", "source", "flow.Endpoint"),
    ("Flow", "event_type", "flow.CiliumEventType"),
    ("Flow", "interface", "flow.NetworkInterface"),
    ("Flow", "drop_reason_desc", "flow.DropReason"),
    ("Flow", "trace_observation_point", "flow.TraceObservationPoint"),
    ("FlowFilter", "source_workload", "flow.Workload"),
    ("FlowFilter", "event_type", "flow.EventTypeFilter"),
    ("FlowFilter", "tcp_flags", "flow.TCPFlags"),
    ("FlowFilter", "interface", "flow.NetworkInterface"),
    ("FlowFilter", "http_header", "flow.HTTPHeader"),
    ("FlowFilter", "verdict", "flow.Verdict"),
    ("LostEvent", "cpu", "google.protobuf.Int32Value"),
]


def _message(name: str):
    desc = flow_pb2.DESCRIPTOR
    parts = name.split(".")
    d = desc.message_types_by_name[parts[0]]
    for p in parts[1:]:
        d = d.nested_types_by_name[p]
    return d


@pytest.mark.parametrize(("message", "field", "number"), WIRE_TABLE, ids=lambda v: str(v))
def test_field_numbers(message: str, field: str, number: int):
    d = _message(message)
    assert field in d.fields_by_name, f"{message}.{field} missing"
    assert d.fields_by_name[field].number == number


@pytest.mark.parametrize("enum", sorted(ENUM_TABLE))
def test_enum_values(enum: str):
    e = flow_pb2.DESCRIPTOR.enum_types_by_name[enum]
    for name, value in ENUM_TABLE[enum].items():
        assert e.values_by_name[name].number == value, f"{enum}.{name}"


@pytest.mark.parametrize(("message", "field", "type_name"), TYPE_TABLE)
def test_field_types(message: str, field: str, type_name: str):
    f = _message(message).fields_by_name[field]
    t = f.message_type or f.enum_type
    assert t is not None and t.full_name == type_name


def test_flowfilter_fields_are_repeated_except_experimental():
    d = _message("FlowFilter")
    for f in d.fields:
        if f.name == "experimental":
            assert f.message_type.full_name == "flow.FlowFilter.Experimental"
        else:
            assert f.is_repeated, f.name


def test_layer4_oneof_and_file_identity():
    d = _message("Layer4")
    assert [f.name for f in d.oneofs_by_name["protocol"].fields][:4] == ["TCP", "UDP", "ICMPv4", "ICMPv6"]
    assert [f.name for f in _message("Layer7").oneofs_by_name["record"].fields][:1] == ["dns"]
    fd = flow_pb2.DESCRIPTOR
    assert fd.name == "flow/flow.proto"
    assert fd.package == "flow"
    assert fd.GetOptions().go_package == "github.com/cilium/cilium/api/v1/flow"


def test_json_names_match_proto_names():
    # protojson with preserving_proto_field_name uses these; default json_name (lowerCamel) must also be Hubble's.
    d = _message("Flow")
    assert d.fields_by_name["IP"].json_name == "IP"
    assert d.fields_by_name["Summary"].json_name == "Summary"
    assert d.fields_by_name["is_reply"].json_name == "isReply"
    assert _message("IP").fields_by_name["ipVersion"].json_name == "ipVersion"
