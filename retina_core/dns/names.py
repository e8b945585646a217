"""Names of DNS RR types and response codes, as the IANA registry (and miekg/dns, which Cilium prints) spell
them. Unknown types are written as in RFC 3597 (``"TYPE65280"``), unknown codes as their number."""

from __future__ import annotations

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_ANY = 255

TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR", 10: "NULL",
    11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB", 19: "X25",
    20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA",
    29: "LOC", 30: "NXT", 31: "EID", 32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT",
    38: "A6", 39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP",
    56: "NINFO", 57: "RKEY", 58: "TALINK", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "NID",
    105: "L32", 106: "L64", 107: "LP", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR",
    252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA", 258: "AVC", 259: "DOA",
    260: "AMTRELAY", 261: "RESINFO", 32768: "TA", 32769: "DLV",
}
TYPE_NUMBERS: dict[str, int] = {v: k for k, v in TYPE_NAMES.items()}

RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
    7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
}

_type_cache: dict[int, str] = dict(TYPE_NAMES)


def type_name(t: int) -> str:
    """``1`` -> ``"A"``; an unassigned number -> ``"TYPE<n>"`` (RFC 3597)."""
    name = _type_cache.get(t)
    if name is None:
        name = f"TYPE{t}"
        if len(_type_cache) < 70000:  # at most 65536 distinct values anyway
            _type_cache[t] = name
    return name


def type_number(name: str) -> int:
    """``"AAAA"`` -> ``28``; also accepts ``"TYPE<n>"``. Raises ValueError for anything else."""
    upper = name.upper()
    n = TYPE_NUMBERS.get(upper)
    if n is not None:
        return n
    if upper.startswith("TYPE") and upper[4:].isdigit() and int(upper[4:]) <= 0xFFFF:
        return int(upper[4:])
    raise ValueError(f"unknown DNS type {name!r}")


def rcode_name(code: int) -> str:
    """``3`` -> ``"NXDOMAIN"``; an unassigned code -> its number as text."""
    return RCODE_NAMES.get(code) or str(code)
