"""The running kernel's drop reasons: names, directions, and the Hubble ``DropReason`` they map to.

**Names.** ``reason`` labels are the kernel's ``enum skb_drop_reason`` names without the ``SKB_DROP_REASON_``
prefix (``NETFILTER_DROP``, ``NO_SOCKET``, ``TCP_INVALID_SEQUENCE`` ...). They are read at start-up from the
``skb:kfree_skb`` tracepoint's ``print fmt`` (``__print_symbolic``, exactly what the kernel itself prints) and
from the BTF enum ``skb_drop_reason`` (which also has ``NOT_DROPPED_YET``/``CONSUMED``), so a newer kernel's new
reasons appear by name without a code change. Codes of other subsystems (``code >> 16`` =
``enum skb_drop_reason_subsys``, e.g. mac80211 or openvswitch) are named ``SUBSYS_<SUBSYS>_<low 16 bits>``; a code
no table knows is ``UNKNOWN_<code>``.

**Ignored reasons** (not drops): ``NOT_DROPPED_YET`` (0) and ``CONSUMED`` (1) are normal frees (a kernel sends
``SKB_CONSUMED`` to skb:consume_skb, but older ones passed it to kfree_skb), and ``NOT_SPECIFIED`` (2) is what
plain ``kfree_skb()`` reports: hundreds of call sites, many of them routine (freeing clones, error unwinding
of packets never sent, a socket's queues on close), so counting it would bury the real drops in noise.
They are counted (in ``/debug/plugins``, ``ignored``) but produce neither metrics nor flows.
``dropReason.ignoreReasons`` (the plugin's ``ignore`` option) replaces the list.

**Direction.** The kernel side records one bit of context: whether the namespace that freed the packet had
*received* it (``skb->skb_iif != 0``: it came in on an interface, including a veth from a pod and ``lo``) or
*built* it (``skb_iif == 0``: a local socket's packet on its way out). Reasons that can only happen on one
path override that: ``QDISC_*``, ``FQ_*``, ``NEIGH_*``, ``TC_EGRESS``, ``BPF_CGROUP_EGRESS``,
``IP_OUTNOROUTES`` ... are egress, ``TCP_*``, ``NO_SOCKET``, ``SOCKET_RCVBUFF``, ``IP_RPFILTER``, ``XDP``,
``TC_INGRESS``, ``CPU_BACKLOG`` ... are ingress (:data:`EGRESS_REASONS`, :data:`INGRESS_REASONS`). So a
netfilter DROP in INPUT or FORWARD is ``ingress``, in OUTPUT ``egress``; a packet forwarded by the node and
dropped by its egress qdisc is ``egress``; ``unknown`` is left for skbs whose headers could not be read.

**Records.** The reader puts the code and the name on each DROPPED record (``drop_reason``, ``drop_reason_name``);
the Hubble mapping of names is the ground layer's (:mod:`retina_core.dropreason`).
"""

from __future__ import annotations

import functools
import logging

from retina_core.dropreason import hubble_drop_reason
from retina_exporter.plugins.dropreason.config import DEFAULT_IGNORED
from retina_core.record import DIR_EGRESS, DIR_INGRESS, DIR_UNKNOWN
from retina_exporter.datapath.tracepoint import DEFAULT_TRACEFS, read_format

log = logging.getLogger(__name__)

PREFIX = "SKB_DROP_REASON_"



# Kernel-side hints (DR_HINT_* in bpf/dropreason.h).
HINT_UNKNOWN = 0
HINT_RECEIVED = 1
HINT_LOCAL = 2

EGRESS_PREFIXES = ("QDISC_", "FQ_", "NEIGH_")
EGRESS_REASONS = frozenset({
    "TC_EGRESS", "BPF_CGROUP_EGRESS", "IP_OUTNOROUTES", "CAKE_FLOOD", "DUALPI2_STEP_DROP", "TAP_TXFILTER",
    "NO_TX_TARGET", "TUNNEL_TXINFO", "PSP_OUTPUT", "DEV_READY",
})
INGRESS_PREFIXES = ("TCP_", "IPV6_NDISC_", "VXLAN_", "FRAG_", "CAN_", "CANFD_", "CANXL_", "IP_IN")
INGRESS_REASONS = frozenset({
    "NO_SOCKET", "SOCKET_RCVBUFF", "SOCKET_BACKLOG", "PKT_TOO_SMALL", "UDP_CSUM", "ICMP_CSUM", "IP_CSUM",
    "OTHERHOST", "IP_RPFILTER", "UNICAST_IN_L2_MULTICAST", "IP_NOPROTO", "XDP", "TC_INGRESS", "CPU_BACKLOG",
    "IP_LOCAL_SOURCE", "IP_INVALID_SOURCE", "IP_LOCALNET", "IP_INVALID_DEST", "DUP_FRAG", "IPV6_BAD_EXTHDR",
    "MAC_INVALID_SOURCE", "LOCAL_MAC", "BRIDGE_INGRESS_STP_STATE", "MAC_IEEE_MAC_CONTROL", "PSP_INPUT",
    "TAP_FILTER", "ARP_PVLAN_DISABLE",
})

def direction_of(name: str, hint: int) -> int:
    """``DIR_INGRESS``/``DIR_EGRESS``/``DIR_UNKNOWN`` (:mod:`retina_core.record`) for a reason name and the kernel's hint (see the module docstring)."""
    if name in EGRESS_REASONS or name.startswith(EGRESS_PREFIXES):
        return DIR_EGRESS
    if name in INGRESS_REASONS or name.startswith(INGRESS_PREFIXES):
        return DIR_INGRESS
    if hint == HINT_RECEIVED:
        return DIR_INGRESS
    if hint == HINT_LOCAL:
        return DIR_EGRESS
    return DIR_UNKNOWN


class ReasonTable:
    """Code <-> name for the running kernel's ``enum skb_drop_reason``."""

    def __init__(self, names: dict[int, str], subsystems: dict[int, str] | None = None, source: str = "") -> None:
        self.names = dict(names)
        self.codes = {v: k for k, v in self.names.items()}
        self.subsystems = dict(subsystems or {})
        self.source = source
        self._direction_cache: dict[tuple[int, int], int] = {}

    @classmethod
    def from_kernel(cls, tracefs: str = DEFAULT_TRACEFS, btf_path: str | None = None) -> "ReasonTable":
        """Names from the kfree_skb print format and the BTF enum (either may be missing; both usually agree,
        the print format wins a conflict since it is what the kernel prints)."""
        from retina_exporter.datapath import btf as btfmod

        names: dict[int, str] = {}
        subsystems: dict[int, str] = {}
        sources = []
        try:
            b = btfmod.load(btf_path or btfmod.VMLINUX)
            for name, value in b.enum_values("skb_drop_reason").items():
                # SKB_NOT_DROPPED_YET, SKB_CONSUMED, then SKB_DROP_REASON_<NAME> ... SKB_DROP_REASON_SUBSYS_MASK
                short = name[len(PREFIX):] if name.startswith(PREFIX) else name[4:] if name.startswith("SKB_") else name
                if short not in ("SUBSYS_MASK", "SUBSYS_SHIFT"):
                    names[value] = short
            sources.append("btf")
            try:
                for name, value in b.enum_values("skb_drop_reason_subsys").items():
                    short = name.replace("SKB_DROP_REASON_SUBSYS_", "")
                    if short != "NUM":
                        subsystems[value] = short
            except btfmod.BtfError:
                pass
        except btfmod.BtfError as exc:
            log.info("drop reason names: no BTF enum skb_drop_reason (%s)", exc)
        try:
            fmt = read_format("skb", "kfree_skb", tracefs)
            printed = fmt.symbolic("reason")
            if printed:
                names.update(printed)
                sources.append("tracefs")
        except Exception as exc:  # the plugin reports a missing tracepoint itself; names can still come from BTF
            log.info("drop reason names: no kfree_skb print format (%s)", exc)
        return cls(names, subsystems, "+".join(sources))

    def name(self, code: int) -> str:
        n = self.names.get(code)
        if n is not None:
            return n
        subsys = code >> 16
        if subsys:
            return f"SUBSYS_{self.subsystems.get(subsys, str(subsys))}_{code & 0xFFFF}"
        return f"UNKNOWN_{code}"

    def code(self, name: str) -> int:
        name = name[len(PREFIX):] if name.startswith(PREFIX) else name
        try:
            return self.codes[name]
        except KeyError:
            raise KeyError(f"this kernel has no drop reason {name!r}") from None

    def direction(self, code: int, hint: int) -> int:
        key = (code, hint)
        d = self._direction_cache.get(key)
        if d is None:
            d = self._direction_cache[key] = direction_of(self.name(code), hint)
        return d

    def hubble(self, code: int) -> int:
        return hubble_drop_reason(self.name(code))

    def ignore_codes(self, names=DEFAULT_IGNORED) -> list[int]:
        """Codes for the reason names in ``names`` that this kernel has (unknown names are skipped)."""
        out = []
        for n in names:
            try:
                out.append(self.code(n))
            except KeyError:
                log.warning("dropreason: ignoring unknown reason name %r in the ignore list", n)
        return out


@functools.cache
def kernel_table() -> ReasonTable:
    """The running kernel's table, built once per process (tools and tests; the plugin builds its own)."""
    return ReasonTable.from_kernel()
