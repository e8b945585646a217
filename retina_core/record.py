"""The compact, slotted flow record that travels the per-event path.

A record is built once per kernel event (about 0.4 µs) and converted to a protobuf ``flow.Flow`` only where a
consumer needs the protobuf (gRPC, ``/debug/flows``), by :func:`retina_core.convert.to_proto`.

Units and encodings:

* ``time_ns``: wall-clock nanoseconds since the Unix epoch.
* ``src_ip``/``dst_ip``: packed network-order address bytes, 4 bytes for IPv4 and 16 for IPv6
  (``socket.inet_ntop`` turns them into text at the edges).
* ports: host byte order integers; 0 where the protocol has none.
* ``tcp_flags``: bit set of *this* packet's TCP flags (``TCP_FIN`` … ``TCP_NS``).
* ``packets``/``bytes``: what this record accounts for: this packet plus the packets and bytes the kernel did not
  report before (Hubble's ``1 + previously_observed_packets``). ``bytes`` counts ``skb->len`` at the hook, i.e.
  the Ethernet frame without FCS, as the interface counters do.
* ``packet_bytes``: this packet's own ``skb->len``; 0 for a sweep record, which accounts only for packets the
  kernel had not yet reported (``report_reason == "sweep"``/``"expired"``) and has no packet of its own.
* ``drop_reason``/``drop_reason_name`` (DROPPED records): the kernel's ``enum skb_drop_reason`` code and its name
  without the ``SKB_DROP_REASON_`` prefix (``"NETFILTER_DROP"``), both set by the reader that knows the running
  kernel's table, so no consumer needs that table.
* ``flag_counts``: per-flag packet counts over the same packets (tuple indexed by ``FLAG_NAMES``; the last entry
  counts packets that carried SYN and ACK together), or ``None`` for non-TCP records.
* ``conn_event``: the TCP connection-attempt outcome this record reports (index into ``CONN_EVENTS``, 0 = none);
  ``connect_latency_ns``: for ``CONN_ESTABLISHED``, nanoseconds from the attempt's first SYN to the SYN-ACK as
  seen at this record's interface, else 0. A ``"connect"``-reason record (a timeout found by the sweep) accounts
  for no packet (``packets == 0``): it is an :class:`EventRecord`.
"""

from __future__ import annotations

# The values below are shared with the kernel programs: retina_exporter/bpf/common.h defines OBS_*, DIR_* and
# TCP_FLAG_* once for C; tests/test_bpf_layouts.py pins the two definitions to each other.

# Observation points (OBS_*).
OBS_FROM_ENDPOINT = 0  # host side of a pod veth, TC ingress: the pod sent it
OBS_TO_ENDPOINT = 1  # host side of a pod veth, TC egress: the pod receives it
OBS_FROM_NETWORK = 2  # host interface (uplink), TC ingress
OBS_TO_NETWORK = 3  # host interface (uplink), TC egress
OBS_NAMES = ("FROM_ENDPOINT", "TO_ENDPOINT", "FROM_NETWORK", "TO_NETWORK")

# Traffic direction of the connection (from the first packet seen) (DIR_*). A record always
# carries the number; DIRECTION_LABELS gives the lower-case label value metrics use (``direction="ingress"``).
DIR_UNKNOWN = 0
DIR_INGRESS = 1
DIR_EGRESS = 2
DIRECTION_LABELS = ("unknown", "ingress", "egress")

# Verdicts: Hubble flow.Verdict numbers, plus Retina's custom ones (pkg/utils Verdict_RETRANSMISSION, Verdict_DNS),
# which the metrics module dispatches on; conversion to protobuf maps the custom ones to FORWARDED.
VERDICT_FORWARDED = 1
VERDICT_DROPPED = 2
VERDICT_TCP_RETRANSMISSION = 15
VERDICT_DNS = 16

# TCP flag bits in ``tcp_flags`` (TCP_FLAG_*): the TCP header's flag byte, NS as bit 8.
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
TCP_NS = 0x100
FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS", "SYNACK")

# Why the kernel (or the sweep) emitted an event; shared with bpf (REPORT_*).
REPORT_REASONS = ("every_packet", "new_connection", "flags", "flag_change", "interval", "close", "sweep", "expired",
                  "connect")

# Outcome of a TCP connection attempt a record reports (``conn_event``; CONN_EV_* in bpf/packetparser.h), counted
# once per attempt and node: "" none, "established" (``connect_latency_ns`` is set), "reset", "timeout" (the
# failed-connection ``reason`` label values).
CONN_EVENTS = ("", "established", "reset", "timeout", "rtt")
CONN_ESTABLISHED = 1
CONN_RESET = 2
CONN_TIMEOUT = 3
CONN_RTT = 4  # user space only: an RTT sample (EventRecord.rtt_ns), not an attempt outcome

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58


class FlowRecord:
    """One flow event. Attribute names say what they hold; see the module docstring for units."""

    __slots__ = (
        "time_ns",
        "verdict",
        "ip_version",
        "src_ip",
        "dst_ip",
        "proto",
        "src_port",
        "dst_port",
        "tcp_flags",
        "icmp_type",
        "icmp_code",
        "obs_point",
        "direction",
        "is_reply",
        "ifindex",
        "ifname",
        "packets",
        "bytes",
        "packet_bytes",
        "flag_counts",
        "report_reason",
        "node_name",
        "drop_reason",
        "drop_reason_name",
        # Filled by the enricher (issue 3); None until then.
        "source",
        "destination",
        # Layer-7 data, None for L3/L4 records: a retina_core.dns.record.DnsRecord on the dns plugin's records
        # (then Type L7 and Hubble's l7.dns in the protobuf).
        "l7",
        "conn_event",
        "connect_latency_ns",
    )

    def __init__(
        self,
        time_ns: int,
        ip_version: int,
        src_ip: bytes,
        dst_ip: bytes,
        proto: int,
        src_port: int = 0,
        dst_port: int = 0,
        tcp_flags: int = 0,
        icmp_type: int = 0,
        icmp_code: int = 0,
        obs_point: int = OBS_FROM_ENDPOINT,
        direction: int = DIR_UNKNOWN,
        is_reply: bool | None = None,
        ifindex: int = 0,
        ifname: str = "",
        packets: int = 1,
        bytes: int = 0,  # noqa: A002 - the Hubble extension's own name
        packet_bytes: int = 0,
        flag_counts: tuple[int, ...] | None = None,
        report_reason: int = 0,
        node_name: str = "",
        verdict: int = VERDICT_FORWARDED,
        drop_reason: int = 0,
        drop_reason_name: str = "",
        conn_event: int = 0,
        connect_latency_ns: int = 0,
    ) -> None:
        self.time_ns = time_ns
        self.verdict = verdict
        self.ip_version = ip_version
        self.src_ip = src_ip
        self.dst_ip = dst_ip
        self.proto = proto
        self.src_port = src_port
        self.dst_port = dst_port
        self.tcp_flags = tcp_flags
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.obs_point = obs_point
        self.direction = direction
        self.is_reply = is_reply
        self.ifindex = ifindex
        self.ifname = ifname
        self.packets = packets
        self.bytes = bytes
        self.packet_bytes = packet_bytes
        self.flag_counts = flag_counts
        self.report_reason = report_reason
        self.node_name = node_name
        self.drop_reason = drop_reason
        self.drop_reason_name = drop_reason_name
        self.source = None
        self.destination = None
        self.l7 = None
        self.conn_event = conn_event
        self.connect_latency_ns = connect_latency_ns

    @property
    def previously_observed_packets(self) -> int:
        """Packets accounted for by this record besides its own packet (Hubble's extension key)."""
        return self.packets - 1 if self.packets > 0 else 0

    @property
    def previously_observed_bytes(self) -> int:
        """Bytes accounted for by this record besides its own packet's."""
        return self.bytes - self.packet_bytes

    def __repr__(self) -> str:  # debugging aid only, not on the hot path
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"FlowRecord({fields})"


class EventRecord(FlowRecord):
    """A record that reports an event without a packet of its own (``packets == 0``): a TCP connection attempt's
    timeout, an RTT sample (``conn_event == CONN_RTT``, ``rtt_ns`` the socket's smoothed RTT in nanoseconds, source =
    the socket's own address). It travels the pipeline like a flow record (the enricher stamps its identities, the
    metrics module counts it) but it is **not a flow**: the Hubble consumers (observer, export, flow logs,
    ``/debug/flows``) take only records whose class is exactly :class:`FlowRecord`."""

    __slots__ = ("rtt_ns",)

    def __init__(self, *args, rtt_ns: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rtt_ns = rtt_ns
