"""User-space owner of the IP-of-interest map (``retina_filter``, an LPM trie).

With annotation opt-in (``enableAnnotations``, unless ``bypassLookupIPOfInterest``) the kernel tracks and reports
only packets with an address in this map, so unobserved traffic costs a trie lookup and no user-space work.
Several owners (e.g. a namespace rule and a pod rule) may claim the same address; it stays in the map while any
owner claims it, so removing one rule never removes an address another still wants (IP reuse included).
Keys are IPv6 or IPv4-mapped IPv6 with a prefix length, so CIDRs work too.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import threading
from typing import Iterable

from retina_exporter.bpf.packetparser import FilterKey


def filter_key(text: str) -> tuple[bytes, int]:
    """``"10.0.0.1"``, ``"10.0.0.0/24"``, ``"fd00::1"``… -> (16 mapped address bytes, prefix length 0..128)."""
    net = ipaddress.ip_network(text, strict=False)
    if net.version == 4:
        mapped = ipaddress.IPv6Address("::ffff:" + str(net.network_address))
        return mapped.packed, 96 + net.prefixlen
    return net.network_address.packed, net.prefixlen


class IpFilterMap:
    def __init__(self, table, capacity: int) -> None:
        self._table = table
        self.capacity = capacity
        self._lock = threading.Lock()
        self._owners: dict[str, set[tuple[bytes, int]]] = {}
        self._in_map: set[tuple[bytes, int]] = set()
        self.overflow = 0  # addresses that did not fit

    def set_owner(self, owner: str, addresses: Iterable[str]) -> None:
        """Make ``owner`` claim exactly ``addresses`` (IPs or CIDRs); the map follows the union of all owners."""
        keys = {filter_key(a) for a in addresses}
        with self._lock:
            if keys:
                self._owners[owner] = keys
            else:
                self._owners.pop(owner, None)
            self._sync()

    def remove_owner(self, owner: str) -> None:
        self.set_owner(owner, ())

    def addresses(self) -> set[str]:
        out = set()
        for packed, plen in self._in_map:
            addr = ipaddress.IPv6Address(packed)
            if addr.ipv4_mapped is not None and plen >= 96:
                out.add(str(ipaddress.ip_network(f"{addr.ipv4_mapped}/{plen - 96}", strict=False)))
            else:
                out.add(str(ipaddress.ip_network(f"{addr}/{plen}", strict=False)))
        return out

    def _sync(self) -> None:
        wanted: set[tuple[bytes, int]] = set().union(*self._owners.values()) if self._owners else set()
        one = ct.c_uint8(1)
        for packed, plen in self._in_map - wanted:
            try:
                del self._table[self._key(packed, plen)]
            except KeyError:
                pass
        added = set()
        for packed, plen in wanted - self._in_map:
            if len(self._in_map) - len(self._in_map - wanted) + len(added) >= self.capacity:
                self.overflow += 1
                continue
            self._table[self._key(packed, plen)] = one
            added.add((packed, plen))
        self._in_map = (self._in_map & wanted) | added

    def _key(self, packed: bytes, plen: int):
        k = self._table.Key()
        k.prefixlen = plen
        ct.memmove(ct.addressof(k) + FilterKey.ip.offset, packed, 16)
        return k
