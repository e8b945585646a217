"""Our own Hubble clients: ``retina-exporter observe``, ``retina-exporter status`` and ``retina-exporter list
nodes`` — the hubble CLI's common flags and output, against this agent's socket (default) or any Hubble server
(``--server host:port``, ``tls://host:port``; Relay too).

Connection flags as the hubble CLI's: ``--server``, ``--tls``, ``--tls-ca-cert-files``, ``--tls-client-cert-file``,
``--tls-client-key-file``, ``--tls-server-name``, ``--timeout`` (unary calls and dialing; streams have none).
Exit status: 0, 1 when the server cannot be reached or answers with an error (one line on stderr), 2 for bad
flags (argparse's own).
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from retina_core.proto import observer_pb2, observer_pb2_grpc
from retina_exporter.hubble.config import DEFAULT_SOCKET_PATH
from retina_exporter.hubble.filters import FilterBuilder, FilterError
from retina_exporter.hubble.observer import ALL_FLOWS
from retina_exporter.hubble.printer import FORMATS, Printer
from retina_exporter.hubble.server import HEALTH_SERVICE

__all__ = ["add_connection_flags", "channel", "main_list", "main_observe", "main_status"]

DEFAULT_SERVER = f"unix://{DEFAULT_SOCKET_PATH}"
DEFAULT_LAST = 20


class ClientError(RuntimeError):
    """A one-line problem to print before exiting with status 1."""


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--server", action="append", default=None,
                   help=f"Hubble server: unix:///path.sock, /path.sock, host:port or tls://host:port "
                        f"(default {DEFAULT_SERVER}); observe accepts several and merges them by time, as Relay "
                        "does")
    g.add_argument("--tls", action="store_true", help="use TLS to a TCP server")
    g.add_argument("--tls-ca-cert-files", nargs="*", default=[], metavar="FILE", help="CA certificates (PEM)")
    g.add_argument("--tls-client-cert-file", default="", metavar="FILE", help="client certificate for mTLS")
    g.add_argument("--tls-client-key-file", default="", metavar="FILE", help="its key")
    g.add_argument("--tls-server-name", default="", help="name to check in the server's certificate")
    g.add_argument("--timeout", type=float, default=12.0, help="seconds for dialing and unary calls (default 12)")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None


def channel(args: argparse.Namespace, server: str | None = None) -> grpc.Channel:
    """A channel to ``server`` (default: the first ``--server``), ready within ``args.timeout`` seconds, else
    :class:`ClientError`."""
    if server is None:
        server = (args.server or [DEFAULT_SERVER])[0]
    shown = server
    tls = args.tls
    if server.startswith("tls://"):
        server, tls = server[len("tls://"):], True
    if server.startswith("/"):
        server = f"unix://{server}"
    if server.startswith("unix:"):
        ch = grpc.insecure_channel(server)
    elif tls:
        roots = b"".join(_read(p) for p in args.tls_ca_cert_files) or None
        key = _read(args.tls_client_key_file) if args.tls_client_key_file else None
        cert = _read(args.tls_client_cert_file) if args.tls_client_cert_file else None
        creds = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
        ch = grpc.secure_channel(server, creds, options=options)
    else:
        ch = grpc.insecure_channel(server)
    try:
        grpc.channel_ready_future(ch).result(timeout=args.timeout)
    except grpc.FutureTimeoutError:
        ch.close()
        raise ClientError(f"cannot connect to {shown} within {args.timeout:g}s (is the agent running with "
                          "hubble.enabled, and is this the right address/TLS setting?)") from None
    return ch


def _rpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else None
    return ClientError(f"{code.name if code else 'error'}: {exc.details() if hasattr(exc, 'details') else exc}")


# -- observe ---------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """``--since``/``--until``: a duration before now (``5m``, ``1h``, ``30s``) or an RFC 3339 time."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    m = _DURATION.match(text.strip())
    if m:
        return now - datetime.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration ago (5m, 1h, 30s) or an RFC 3339 time "
                                         "(2026-12-07T10:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def observe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retina-exporter observe", description="Observe flows of a Hubble server.")
    add_connection_flags(p)
    when = p.add_argument_group("which flows")
    n = when.add_mutually_exclusive_group()
    n.add_argument("--last", type=int, metavar="N", help=f"the last N flows (default {DEFAULT_LAST})")
    n.add_argument("--first", type=int, metavar="N", help="the first N flows in the buffer")
    n.add_argument("--all", action="store_true", help="every flow in the buffer")
    when.add_argument("-f", "--follow", action="store_true", help="follow new flows")
    when.add_argument("--since", type=parse_time, help="flows since (5m, 1h, or an RFC 3339 time)")
    when.add_argument("--until", type=parse_time, help="flows until (not with --follow)")
    f = p.add_argument_group("filters (repeat a flag to OR its values; different flags AND)")
    for flag, help_text in (("pod", "[namespace/]pod prefix, either side"), ("from-pod", "source pod"),
                            ("to-pod", "destination pod"), ("ip", "IP or CIDR, either side"),
                            ("from-ip", "source IP or CIDR"), ("to-ip", "destination IP or CIDR"),
                            ("port", "L4 port, either side"), ("from-port", "source port"),
                            ("to-port", "destination port"), ("label", "label selector, either side"),
                            ("from-label", "source label selector"), ("to-label", "destination label selector"),
                            ("protocol", "tcp, udp, icmp, icmpv4, icmpv6, sctp, dns"),
                            ("verdict", "FORWARDED, DROPPED, ..."),
                            ("type", "event type: trace, drop, l7, trace:to-endpoint, ..."),
                            ("node-name", "node name glob"), ("traffic-direction", "ingress or egress"),
                            ("service", "[namespace/]service, either side"), ("dns-query", "regex on the query"),
                            ("identity", "numeric identity, either side")):
        f.add_argument(f"--{flag}", action="append", default=[], metavar="VALUE", help=help_text)
    f.add_argument("-n", "--namespace", action="append", default=[], help="namespace, either side")
    f.add_argument("-l", dest="label", action="append", help=argparse.SUPPRESS)
    f.add_argument("--not", dest="negate", action="store_true",
                   help="negate the filter flag that follows it (it goes to the blacklist)")
    p.add_argument("-o", "--output", choices=FORMATS, default="compact", help="output format (default compact)")
    p.add_argument("--print-node-name", action=argparse.BooleanOptionalAction, default=True,
                   help="print the node name in compact output (default on)")
    return p


_FILTER_FLAGS = ("pod", "from_pod", "to_pod", "ip", "from_ip", "to_ip", "port", "from_port", "to_port", "label",
                 "from_label", "to_label", "protocol", "verdict", "type", "node_name", "traffic_direction",
                 "service", "dns_query", "identity", "namespace")


def _split_not(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split out the filters negated by ``--not``: as in the hubble CLI, ``--not`` applies to the one filter flag
    that follows it (``--not --from-ip 10.0.0.1``), which then goes to the blacklist."""
    kept: list[str] = []
    negated: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        if items[i] == "--not":
            if i + 1 >= len(items) or not items[i + 1].startswith("-"):
                raise ClientError("--not must be followed by a filter flag, e.g. --not --verdict DROPPED")
            flag = items[i + 1]
            if "=" in flag or i + 2 >= len(items):
                negated.append(flag)
                i += 2
            else:
                negated += [flag, items[i + 2]]
                i += 3
            continue
        kept.append(items[i])
        i += 1
    return kept, negated


def build_request(args: argparse.Namespace, negated: argparse.Namespace | None) -> Any:
    """The ``GetFlowsRequest`` the hubble CLI would send for these flags."""
    builder = FilterBuilder()
    for name in _FILTER_FLAGS:
        for value in getattr(args, name, None) or ():
            getattr(builder, name)(value)
    if negated is not None:
        for name in _FILTER_FLAGS:
            for value in getattr(negated, name, None) or ():
                getattr(builder.not_(), name)(value)
    whitelist, blacklist = builder.build()
    req = observer_pb2.GetFlowsRequest(whitelist=whitelist, blacklist=blacklist, follow=args.follow)
    if args.since is not None:
        req.since.FromDatetime(args.since)
    if args.until is not None:
        if args.follow:
            raise ClientError("--until cannot be combined with --follow")
        req.until.FromDatetime(args.until)
    if args.first is not None:
        req.first, req.number = True, args.first
    elif args.all:
        req.number = ALL_FLOWS
    elif args.last is not None:
        req.number = args.last
    elif args.since is None and not args.follow:
        req.number = DEFAULT_LAST
    return req


def main_observe(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    parser = observe_parser()
    try:
        before, after = _split_not(argv)
    except ClientError as exc:
        err.write(f"observe: {exc}\n")
        return 2
    args = parser.parse_args(before)
    negated = parser.parse_args(after) if after else None
    try:
        req = build_request(args, negated)
    except (FilterError, ClientError) as exc:
        err.write(f"observe: {exc}\n")
        return 2
    printer = Printer(out, args.output, args.print_node_name)
    servers = args.server or [DEFAULT_SERVER]
    channels = []
    try:
        for server in servers:
            channels.append(channel(args, server))
    except ClientError as exc:
        for ch in channels:
            ch.close()
        err.write(f"observe: {exc}\n")
        return 1
    try:
        streams = [observer_pb2_grpc.ObserverStub(ch).GetFlows(req) for ch in channels]
        for resp in streams[0] if len(streams) == 1 else merge_by_time(streams, args.follow):
            printer.write(resp)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED:
            return 0
        err.write(f"observe: {_rpc_error(exc)}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `observe ... | head`: the reader is gone; end quietly, as CLI tools do
        _silence_stdout()
        return 0
    finally:
        for ch in channels:
            ch.close()
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not report the broken pipe again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _time_key(resp: Any) -> int:
    return resp.time.seconds * 1_000_000_000 + resp.time.nanos


def merge_by_time(streams: Sequence[Any], follow: bool, window_s: float = 1.0) -> Iterator[Any]:
    """Responses of several servers in one stream ordered by ``GetFlowsResponse.time``, as Hubble Relay merges
    its peers. Without ``follow`` every stream ends, so the merge is exact; with ``follow`` a response is released
    once it is ``window_s`` old (Relay's rule), so late arrivals within the window still come out in order."""
    if not follow:
        collected = [resp for stream in streams for resp in stream]
        yield from sorted(collected, key=_time_key)
        return
    q: queue.Queue = queue.Queue()

    def pump(stream: Any) -> None:
        try:
            for resp in stream:
                q.put((time.monotonic(), resp))
        except grpc.RpcError as exc:
            q.put((time.monotonic(), exc))

    for s in streams:
        threading.Thread(target=pump, args=(s,), daemon=True).start()
    heap: list = []
    seq = 0
    while True:
        try:
            arrived, item = q.get(timeout=0.1)
            if isinstance(item, grpc.RpcError):
                raise item
            heapq.heappush(heap, (_time_key(item), seq, arrived, item))
            seq += 1
        except queue.Empty:
            pass
        now = time.monotonic()
        while heap and now - heap[0][2] >= window_s:
            yield heapq.heappop(heap)[3]


# -- status and list nodes ---------------------------------------------------------------------------------------


def main_status(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    p = argparse.ArgumentParser(prog="retina-exporter status", description="Health and status of a Hubble server.")
    add_connection_flags(p)
    args = p.parse_args(list(argv))
    try:
        ch = channel(args)
    except ClientError as exc:
        err.write(f"status: {exc}\n")
        return 1
    try:
        try:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE),
                                                            timeout=args.timeout)
        except grpc.RpcError as exc:
            err.write(f"status: Unavailable: {_rpc_error(exc)}\n")
            return 1
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            err.write(f"status: Unavailable: {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}\n")
            return 1
        out.write(f"Healthcheck (via {(args.server or [DEFAULT_SERVER])[0]}): Ok\n")
        try:
            st = observer_pb2_grpc.ObserverStub(ch).ServerStatus(observer_pb2.ServerStatusRequest(),
                                                                 timeout=args.timeout)
        except grpc.RpcError as exc:
            err.write(f"status: {_rpc_error(exc)}\n")
            return 1
        pct = 100.0 * st.num_flows / st.max_flows if st.max_flows else 0.0
        rate = st.flows_rate if st.flows_rate > 0 else (st.seen_flows / (st.uptime_ns / 1e9) if st.uptime_ns else 0)
        out.write(f"Current/Max Flows: {st.num_flows:,}/{st.max_flows:,} ({pct:.2f}%)\n")
        out.write(f"Flows/s: {rate:.2f}\n")
        if st.HasField("num_connected_nodes"):
            total = st.num_connected_nodes.value + st.num_unavailable_nodes.value
            out.write(f"Connected Nodes: {st.num_connected_nodes.value}/{total}\n")
        if st.num_unavailable_nodes.value:
            out.write(f"Unavailable Nodes: {st.num_unavailable_nodes.value}\n")
            for name in st.unavailable_nodes:
                out.write(f"  - {name}\n")
        return 0
    finally:
        ch.close()


def main_list(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    p = argparse.ArgumentParser(prog="retina-exporter list", description="List what a Hubble server knows.")
    p.add_argument("what", choices=("nodes", "namespaces"))
    add_connection_flags(p)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = p.parse_args(list(argv))
    try:
        ch = channel(args)
    except ClientError as exc:
        err.write(f"list: {exc}\n")
        return 1
    try:
        stub = observer_pb2_grpc.ObserverStub(ch)
        if args.what == "nodes":
            resp = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=args.timeout)
            rows = [(n.name, _state(n.state), f"{n.uptime_ns / 1e9:.0f}s", f"{n.num_flows}/{n.max_flows}",
                     n.version, "Enabled" if n.tls.enabled else "Disabled") for n in resp.nodes]
            header = ("NAME", "STATUS", "AGE", "FLOWS", "VERSION", "TLS")
        else:
            resp = stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=args.timeout)
            rows = [(ns.cluster, ns.namespace) for ns in resp.namespaces]
            header = ("CLUSTER", "NAMESPACE")
    except grpc.RpcError as exc:
        err.write(f"list: {_rpc_error(exc)}\n")
        return 1
    finally:
        ch.close()
    if args.output == "json":
        from google.protobuf import json_format

        out.write(json_format.MessageToJson(resp, preserving_proto_field_name=True) + "\n")
        return 0
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        out.write("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    return 0


def _state(state: int) -> str:
    from retina_core.proto import relay_pb2

    return {relay_pb2.NODE_CONNECTED: "Connected", relay_pb2.NODE_UNAVAILABLE: "Unavailable",
            relay_pb2.NODE_GONE: "Gone", relay_pb2.NODE_ERROR: "Error"}.get(state, "Unknown")
