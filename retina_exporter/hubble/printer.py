"""Printing ``GetFlowsResponse``s the way the hubble CLI does (``hubble/pkg/printer``): ``compact`` (the default),
``json``/``jsonpb`` (one protojson ``GetFlowsResponse`` per line), ``dict`` (``key: value`` blocks) and ``table``.

Compact line: ``<time> [<node>]: <src> <srcId> <arrow> <dst> <dstId> <type> <verdict> (<summary>)``:

* time: ``Jan _2 15:04:05.000`` (local time of the client);
* endpoint: ``namespace/pod`` if known, else ``namespace/service``, else the first DNS name, else the IP; then
  ``:port`` for TCP/UDP; identity ``(ID:n)``, or ``(host)``, ``(world)``, ``(remote-node)`` for reserved ones;
* arrow: ``->``; ``<-`` with the two sides swapped for a reply; ``<>`` when the flow does not know;
* type: ``dns-request``/``dns-response`` for L7 DNS, the trace point (``to-endpoint``, ``from-network`` …) for
  traces, the drop reason text for drops; verdict: the enum name; summary: ``Flow.Summary``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, TextIO

from google.protobuf import json_format

from retina_core.proto import flow_pb2

__all__ = ["FORMATS", "Printer", "compact_line"]

FORMATS = ("compact", "json", "jsonpb", "dict", "table")

_RESERVED = {1: "host", 2: "world", 6: "remote-node"}
_TRACE_POINTS = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay", 5: "from-endpoint",
                 6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay", 10: "from-network",
                 11: "to-network", 12: "from-crypto", 13: "to-crypto"}
_DROP_TEXT = {0: "Unknown reason", 132: "Invalid source ip", 133: "Policy denied", 134: "Invalid packet",
              139: "Unsupported L3 protocol", 142: "Unknown L4 protocol", 150: "Unknown L3 target address",
              151: "Stale or unroutable IP", 169: "FIB lookup failed"}
_EVENT_DROP, _EVENT_TRACE, _EVENT_L7 = 1, 4, 129


def _time(ts: Any) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return "N/A"
    t = datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9)
    return f"{t.strftime('%b')} {t.day:2d} {t.strftime('%H:%M:%S')}.{ts.nanos // 1_000_000:03d}"


def _ports(flow: Any) -> tuple[int, int]:
    l4 = flow.l4
    for proto in ("TCP", "UDP", "SCTP"):
        if l4.HasField(proto):
            p = getattr(l4, proto)
            return p.source_port, p.destination_port
    return 0, 0


def _endpoint(ep: Any, svc: Any, names: Any, ip: str, port: int) -> str:
    if ep.namespace and ep.pod_name:
        host = f"{ep.namespace}/{ep.pod_name}"
    elif svc.name:
        host = f"{svc.namespace}/{svc.name}" if svc.namespace else svc.name
    elif len(names):
        host = ",".join(names)
    else:
        host = ip
    if port:
        host = f"[{host}]:{port}" if ":" in host and host == ip else f"{host}:{port}"
    return host


def _identity(ep: Any) -> str:
    if not ep.identity:
        return ""
    return f"({_RESERVED[ep.identity]})" if ep.identity in _RESERVED else f"(ID:{ep.identity})"


def _type(flow: Any) -> str:
    if flow.HasField("l7"):
        kind = "request" if flow.l7.type == flow_pb2.REQUEST else "response" if flow.l7.type == flow_pb2.RESPONSE \
            else "sample"
        if flow.l7.HasField("dns"):
            return f"dns-{kind}"
        return f"l7-{kind}"
    t, sub = flow.event_type.type, flow.event_type.sub_type
    if t == _EVENT_TRACE:
        return _TRACE_POINTS.get(sub, f"trace-{sub}")
    if t == _EVENT_DROP:
        return _DROP_TEXT.get(sub, f"drop-{sub}")
    return "UNKNOWN"


def compact_line(resp: Any, print_node: bool = True) -> str:
    """One response in hubble's compact format (flows; lost events as ``EVENTS LOST``)."""
    if resp.HasField("lost_events"):
        lost = resp.lost_events
        return (f"{_time(resp.time)}: EVENTS LOST: {flow_pb2.LostEventSource.Name(lost.source)} CPU(0) "
                f"{lost.num_events_lost}")
    flow = resp.flow
    sport, dport = _ports(flow)
    src = _endpoint(flow.source, flow.source_service, flow.source_names, flow.IP.source, sport)
    dst = _endpoint(flow.destination, flow.destination_service, flow.destination_names, flow.IP.destination, dport)
    sid, did = _identity(flow.source), _identity(flow.destination)
    if not flow.HasField("is_reply"):
        arrow = "<>"
    elif flow.is_reply.value:
        src, dst, sid, did, arrow = dst, src, did, sid, "<-"
    else:
        arrow = "->"
    node = f" [{flow.node_name or resp.node_name}]" if print_node and (flow.node_name or resp.node_name) else ""
    parts = [p for p in (src, sid, arrow, dst, did, _type(flow), flow_pb2.Verdict.Name(flow.verdict)) if p]
    return f"{_time(flow.time)}{node}: {' '.join(parts)} ({flow.Summary})"


class Printer:
    """Writes responses to ``out`` in ``fmt`` (one of :data:`FORMATS`)."""

    def __init__(self, out: TextIO, fmt: str = "compact", print_node: bool = True) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"output {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.out = out
        self.fmt = fmt
        self.print_node = print_node
        self._header = False

    def write(self, resp: Any) -> None:
        fmt = self.fmt
        if fmt == "compact":
            line = compact_line(resp, self.print_node)
        elif fmt in ("json", "jsonpb"):
            line = json.dumps(json_format.MessageToDict(resp, preserving_proto_field_name=True), separators=(",", ":"))
        elif fmt == "dict":
            if not resp.HasField("flow"):
                line = compact_line(resp)
            else:
                flow = resp.flow
                sport, dport = _ports(flow)
                rows = [("TIMESTAMP", _time(flow.time)), ("SOURCE", _endpoint(flow.source, flow.source_service,
                                                                               flow.source_names, flow.IP.source,
                                                                               sport)),
                        ("DESTINATION", _endpoint(flow.destination, flow.destination_service,
                                                  flow.destination_names, flow.IP.destination, dport)),
                        ("TYPE", _type(flow)), ("VERDICT", flow_pb2.Verdict.Name(flow.verdict)),
                        ("SUMMARY", flow.Summary), ("NODE", flow.node_name)]
                line = "-" * 12 + "\n" + "\n".join(f"{k:>11}: {v}" for k, v in rows)
        else:  # table
            if not resp.HasField("flow"):
                line = compact_line(resp)
            else:
                flow = resp.flow
                sport, dport = _ports(flow)
                cells = (_time(flow.time), flow.node_name,
                         _endpoint(flow.source, flow.source_service, flow.source_names, flow.IP.source, sport),
                         _endpoint(flow.destination, flow.destination_service, flow.destination_names,
                                   flow.IP.destination, dport),
                         _type(flow), flow_pb2.Verdict.Name(flow.verdict), flow.Summary)
                line = "\t".join(cells)
                if not self._header:
                    self.out.write("\t".join(("TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT",
                                              "SUMMARY")) + "\n")
                    self._header = True
        self.out.write(line + "\n")
        self.out.flush()
