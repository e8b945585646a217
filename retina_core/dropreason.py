"""Drop reasons on a flow record: the kernel's name and the Hubble ``flow.DropReason`` it maps to.

A DROPPED :class:`~retina_core.record.FlowRecord` carries the kernel's ``enum skb_drop_reason`` code and name
(``drop_reason``, ``drop_reason_name``: ``"NETFILTER_DROP"``, without the ``SKB_DROP_REASON_`` prefix); the reader
that knows the running kernel's table sets both. Cilium's ``DropReason`` enum describes Cilium's own datapath, not
the kernel's: :func:`hubble_drop_reason` maps the kernel reasons with a clear counterpart (``NETFILTER_DROP`` ->
``POLICY_DENIED``: on a Kubernetes node, netfilter DROP rules are how network policies deny; checksum and header
errors -> ``INVALID_PACKET_DROPPED``; route failures -> ``FIB_LOOKUP_FAILED`` ...), everything else to
``DROP_REASON_UNKNOWN`` (0). The kernel name always travels too, in the flow extension ``drop_reason``.
"""

from __future__ import annotations

__all__ = ["HUBBLE_BY_NAME", "HUBBLE_UNKNOWN", "hubble_drop_reason"]

# Hubble flow.DropReason numbers (proto/flow/flow.proto).
HUBBLE_UNKNOWN = 0
HUBBLE_INVALID_SOURCE_IP = 132
HUBBLE_POLICY_DENIED = 133
HUBBLE_INVALID_PACKET_DROPPED = 134
HUBBLE_UNSUPPORTED_L3_PROTOCOL = 139
HUBBLE_UNKNOWN_L4_PROTOCOL = 142
HUBBLE_UNKNOWN_L3_TARGET_ADDRESS = 150
HUBBLE_STALE_OR_UNROUTABLE_IP = 151
HUBBLE_FIB_LOOKUP_FAILED = 169

HUBBLE_BY_NAME = {
    "NETFILTER_DROP": HUBBLE_POLICY_DENIED,
    "BPF_CGROUP_EGRESS": HUBBLE_POLICY_DENIED,
    "SECURITY_HOOK": HUBBLE_POLICY_DENIED,
    "XFRM_POLICY": HUBBLE_POLICY_DENIED,
    "IP_CSUM": HUBBLE_INVALID_PACKET_DROPPED,
    "TCP_CSUM": HUBBLE_INVALID_PACKET_DROPPED,
    "UDP_CSUM": HUBBLE_INVALID_PACKET_DROPPED,
    "ICMP_CSUM": HUBBLE_INVALID_PACKET_DROPPED,
    "SKB_CSUM": HUBBLE_INVALID_PACKET_DROPPED,
    "IP_INHDR": HUBBLE_INVALID_PACKET_DROPPED,
    "PKT_TOO_SMALL": HUBBLE_INVALID_PACKET_DROPPED,
    "HDR_TRUNC": HUBBLE_INVALID_PACKET_DROPPED,
    "INVALID_PROTO": HUBBLE_INVALID_PACKET_DROPPED,
    "IPV6_BAD_EXTHDR": HUBBLE_INVALID_PACKET_DROPPED,
    "DEV_HDR": HUBBLE_INVALID_PACKET_DROPPED,
    "IP_INVALID_SOURCE": HUBBLE_INVALID_SOURCE_IP,
    "IP_LOCAL_SOURCE": HUBBLE_INVALID_SOURCE_IP,
    "IP_RPFILTER": HUBBLE_INVALID_SOURCE_IP,
    "MAC_INVALID_SOURCE": HUBBLE_INVALID_SOURCE_IP,
    "IP_NOPROTO": HUBBLE_UNKNOWN_L4_PROTOCOL,
    "UNHANDLED_PROTO": HUBBLE_UNSUPPORTED_L3_PROTOCOL,
    "IPV6DISABLED": HUBBLE_UNSUPPORTED_L3_PROTOCOL,
    "OTHERHOST": HUBBLE_UNKNOWN_L3_TARGET_ADDRESS,
    "IP_INVALID_DEST": HUBBLE_UNKNOWN_L3_TARGET_ADDRESS,
    "IP_INADDRERRORS": HUBBLE_UNKNOWN_L3_TARGET_ADDRESS,
    "IP_LOCALNET": HUBBLE_UNKNOWN_L3_TARGET_ADDRESS,
    "IP_OUTNOROUTES": HUBBLE_FIB_LOOKUP_FAILED,
    "IP_INNOROUTES": HUBBLE_FIB_LOOKUP_FAILED,
    "NEIGH_FAILED": HUBBLE_STALE_OR_UNROUTABLE_IP,
    "NEIGH_DEAD": HUBBLE_STALE_OR_UNROUTABLE_IP,
    "NEIGH_CREATEFAIL": HUBBLE_STALE_OR_UNROUTABLE_IP,
}


def hubble_drop_reason(name: str) -> int:
    """Hubble ``flow.DropReason`` number for a kernel reason name (0 = DROP_REASON_UNKNOWN when none fits)."""
    return HUBBLE_BY_NAME.get(name, HUBBLE_UNKNOWN)
