"""The C headers in retina_exporter/bpf/ and their Python mirrors agree, checked against the compiler.

One small program includes ``common.h`` and every layout header; bcc builds ctypes types from the C types of its
maps (one array per struct, so every struct's compiled size and offsets are visible), and a classifier run with
BPF_PROG_TEST_RUN writes the value of every integer ``#define`` into an array. Each value must equal its Python
definition: the shared ones (observation points, directions, TCP flags, report reasons, flag indexes) that of
``retina_core.record``, the per-program ones that of the plugin's ``layout`` module. A constant added to a header
without a Python counterpart fails ``test_every_define_is_pinned``.

Also the one compile path (:func:`retina_exporter.datapath.compiler.compile_program`): its errors name the plugin,
what is missing and the source.
"""

from __future__ import annotations

import ctypes as ct
import re

import pytest

import retina_core.record as R
from retina_exporter.datapath import compiler
from retina_exporter.datapath.compiler import BPF_DIR, compile_program, load_functions, ring_pages
from retina_exporter.datapath.syscall import prog_test_run
from retina_exporter.errors import StartupError
from retina_exporter.bpf import dns as dns
from retina_exporter.bpf import dropreason as dr
from retina_exporter.bpf import packetforward as pf
from retina_exporter.plugins.packetforward.loader import PacketForwardError
from retina_exporter.bpf import packetparser as pp
from retina_exporter.bpf import tcpretrans as rt
from retina_exporter.bpf import tcprtt

HEADERS = ("common.h", "packetparser.h", "dns.h", "dropreason.h", "tcpretrans.h", "packetforward.h", "tcprtt.h")
DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(0x[0-9A-Fa-f]+|\d+)\b", re.M)

# Defines only the C side uses (wire constants, parser limits): nothing in Python mirrors them.
C_ONLY = {
    "common.h": {"ETH_P_8021Q_BE", "ETH_P_8021AD_BE", "ETH_P_IP_BE", "ETH_P_IPV6_BE", "IP_OFFSET_MASK", "IPV6_EXT_HOP",
                 "IPV6_EXT_ROUTING", "IPV6_EXT_FRAGMENT", "IPV6_EXT_AUTH", "IPV6_EXT_DEST", "IPV6_EXT_MAX", "L4_NONE"},
}

# ctypes mirror -> (C struct, short map name for the layout array)
STRUCTS = (
    (pp.CtKey, "ct_key", "l_ct_key"),
    (pp.CtCounters, "ct_counters", "l_ct_counters"),
    (pp.CtEntry, "ct_entry", "l_ct_entry"),
    (pp.PacketEvent, "packet_event", "l_pkt_event"),
    (pp.PpConfig, "pp_config", "l_pp_config"),
    (pp.FilterKey, "filter_key", "l_filter_key"),
    (pp.SweepRequest, "sweep_request", "l_sweep_req"),
    (pp.AttemptKey, "attempt_key", "l_attempt_key"),
    (dns.DnsEvent, "dns_event", "l_dns_event"),
    (dr.DrKey, "dr_key", "l_dr_key"),
    (dr.DrValue, "dr_value", "l_dr_value"),
    (dr.DrConfig, "dr_config", "l_dr_config"),
    (dr.DropEvent, "drop_event", "l_drop_event"),
    (rt.RtConfig, "rt_config", "l_rt_config"),
    (rt.RtEvent, "rt_event", "l_rt_event"),
    (pf.PfMetric, "pf_metric", "l_pf_metric"),
    (tcprtt.RttConfig, "rtt_config", "l_rtt_config"),
    (tcprtt.RttEvent, "rtt_event", "l_rtt_event"),
)


def header_defines() -> dict[str, dict[str, int]]:
    """``{header: {NAME: value}}`` of the plain integer defines, as written in each header."""
    return {h: {n: int(v, 0) for n, v in DEFINE.findall((BPF_DIR / h).read_text())} for h in HEADERS}


def python_value(header: str, name: str) -> int | None:
    """The Python definition of a header's constant (None: no counterpart)."""
    if header == "common.h":
        if name.startswith(("OBS_", "DIR_")) or name == "IPPROTO_ICMPV6":
            return getattr(R, name)
        if name.startswith("TCP_FLAG_"):
            return getattr(R, "TCP_" + name.removeprefix("TCP_FLAG_"))
        return None
    if header == "packetparser.h":
        if name.startswith("FLAG_IDX_"):
            return R.FLAG_NAMES.index(name.removeprefix("FLAG_IDX_"))
        if name.startswith("RARE_LANE_"):
            return pp.RARE_LANES.index(name.removeprefix("RARE_LANE_"))
        if name.startswith("REPORT_"):  # pp.REPORT_* are indexes into R.REPORT_REASONS
            return getattr(pp, name, None)
        return getattr(pp, name, None)
    prefix, module = {"dns.h": ("DNS_", dns), "dropreason.h": ("DR_", dr), "tcpretrans.h": ("RT_", rt),
                      "packetforward.h": ("", pf), "tcprtt.h": ("RTT_", tcprtt)}[header]
    value = getattr(module, name, None)
    return value if value is not None else getattr(module, name.removeprefix(prefix), None)


def all_pinned() -> list[tuple[str, str, int]]:
    return [(h, n, v) for h, defs in header_defines().items() for n, v in defs.items() if n not in C_ONLY.get(h, ())]


def program_text(pinned) -> str:
    lines = ['#include "common.h"'] + [f'#include "{h}"' for h in HEADERS[1:]]
    lines += [f"BPF_ARRAY({m}, struct {c}, 1);" for _, c, m in STRUCTS]
    lines += [f"BPF_ARRAY(pins, __s64, {len(pinned)});", "int pin_consts(struct __sk_buff *skb)", "{",
              "\t__u32 k;", "\t__s64 *v;"]
    for i, (_, name, _) in enumerate(pinned):
        lines.append(f"\tk = {i}; v = pins.lookup(&k); if (v) *v = ({name});")
    lines += ["\treturn TC_ACT_UNSPEC;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(bcc object, {(header, NAME): compiled value})."""
    pinned = all_pinned()
    src = tmp_path_factory.mktemp("bpf") / "layouts.bpf.c"
    src.write_text(program_text(pinned))
    bpf = compile_program("the layout test", src)
    try:
        fd = load_functions(bpf, ("pin_consts",), src)["pin_consts"].fd
        assert prog_test_run(fd, bytes(64)).retval == -1  # TC_ACT_UNSPEC
        pins = bpf[b"pins"]
        yield bpf, {(h, n): int(pins[ct.c_int(i)].value) for i, (h, n, _) in enumerate(pinned)}
    finally:
        bpf.cleanup()


# --- constants ------------------------------------------------------------------------------------------------


def test_every_define_is_pinned():
    unmapped = [f"{h}: {n}" for h, n, _ in all_pinned() if python_value(h, n) is None]
    assert not unmapped, f"header constants without a Python definition (add one, or list them in C_ONLY): {unmapped}"


def test_shared_constants_are_defined_once_in_c():
    """OBS_*, DIR_*, TCP_FLAG_* live in common.h only; no layout header or program redefines them."""
    shared = {n for n in header_defines()["common.h"] if n.startswith(("OBS_", "DIR_", "TCP_FLAG_", "ETH_P_"))}
    assert {"OBS_FROM_ENDPOINT", "OBS_TO_NETWORK", "DIR_EGRESS", "TCP_FLAG_NS"} <= shared
    for path in sorted(BPF_DIR.iterdir()):
        if path.name == "common.h" or path.suffix not in (".h", ".c"):
            continue
        again = {n for n in re.findall(r"^#define\s+(\w+)", path.read_text(), re.M)} & shared
        assert not again, f"{path.name} redefines {sorted(again)} (they belong to common.h)"


def test_compiled_constants_equal_the_python_definitions(compiled):
    _, values = compiled
    wrong = []
    for (header, name), got in values.items():
        want = python_value(header, name)
        if got != want:
            wrong.append(f"{header} {name} = {got}, Python says {want}")
        assert got == header_defines()[header][name], name  # the regex read the header as the compiler did
    assert not wrong, wrong


def test_shared_constants_are_retina_core_record(compiled):
    """Spelled out for the values every program and the whole user side share."""
    _, v = compiled
    c = "common.h"
    assert [v[(c, f"OBS_{p}")] for p in ("FROM_ENDPOINT", "TO_ENDPOINT", "FROM_NETWORK", "TO_NETWORK")] == [
        R.OBS_FROM_ENDPOINT, R.OBS_TO_ENDPOINT, R.OBS_FROM_NETWORK, R.OBS_TO_NETWORK]
    dirs = [v[(c, f"DIR_{d}")] for d in ("UNKNOWN", "INGRESS", "EGRESS")]
    assert dirs == [R.DIR_UNKNOWN, R.DIR_INGRESS, R.DIR_EGRESS]
    for flag in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"):
        assert v[(c, f"TCP_FLAG_{flag}")] == getattr(R, f"TCP_{flag}"), flag
        assert v[("packetparser.h", f"FLAG_IDX_{flag}")] == R.FLAG_NAMES.index(flag), flag
    assert v[("packetparser.h", "FLAG_COUNT")] == len(R.FLAG_NAMES)
    reasons = {n: val for (h, n), val in v.items() if h == "packetparser.h" and n.startswith("REPORT_")}
    assert sorted(reasons.values()) == list(range(len(R.REPORT_REASONS)))
    events = {n: val for (h, n), val in v.items() if h == "packetparser.h" and n.startswith("CONN_EV_")}
    assert events == {"CONN_EV_NONE": 0, "CONN_EV_ESTABLISHED": R.CONN_ESTABLISHED, "CONN_EV_RESET": R.CONN_RESET,
                      "CONN_EV_TIMEOUT": R.CONN_TIMEOUT}
    assert [R.CONN_EVENTS[i] for i in sorted(events.values())] == ["", "established", "reset", "timeout"]


# --- struct layouts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours,c_name,map_name", STRUCTS, ids=[s[1] for s in STRUCTS])
def test_struct_layout_matches_the_compiled_c(compiled, ours, c_name, map_name):
    bpf, _ = compiled
    theirs = bpf[map_name.encode()].Leaf
    assert ct.sizeof(ours) == ct.sizeof(theirs), c_name
    assert [f[0] for f in ours._fields_] == [f[0] for f in theirs._fields_], c_name
    for name, *_ in ours._fields_:
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a.offset, a.size) == (b.offset, b.size), f"{c_name}.{name}"


def test_hot_path_decoders_have_the_struct_sizes():
    assert pp.EVENT_STRUCT.size == pp.EVENT_SIZE == ct.sizeof(pp.PacketEvent)
    assert pp.CT_KEY_STRUCT.size == ct.sizeof(pp.CtKey)
    assert dns.EVENT_HEADER.size == dns.HEADER_SIZE == dns.DnsEvent.data.offset
    assert dns.EVENT_SIZE == ct.sizeof(dns.DnsEvent)
    assert dr.EVENT_STRUCT.size == dr.EVENT_SIZE == ct.sizeof(dr.DropEvent)
    assert rt.EVENT_STRUCT.size == rt.EVENT_SIZE == ct.sizeof(rt.RtEvent)
    assert tcprtt.EVENT_STRUCT.size == tcprtt.EVENT_SIZE == ct.sizeof(tcprtt.RttEvent) == 56


# --- the compile path -----------------------------------------------------------------------------------------


def test_missing_capabilities_name_the_plugin_and_the_fix(monkeypatch):
    monkeypatch.setattr(compiler, "missing_capabilities", lambda required: ["CAP_NET_ADMIN", "CAP_BPF (or CAP_SYS_ADMIN)"])
    want = r"^dns needs CAP_NET_ADMIN, CAP_BPF \(or CAP_SYS_ADMIN\): run the agent as root or grant"
    with pytest.raises(StartupError, match=want):
        compile_program("dns", "dns.bpf.c")
    with pytest.raises(PacketForwardError, match="packetforward needs CAP_NET_ADMIN"):
        compile_program("packetforward", "packetforward.bpf.c", error=PacketForwardError)


def test_compile_error_names_the_source(tmp_path):
    bad = tmp_path / "bad.bpf.c"
    bad.write_text('#include "common.h"\nint f(struct __sk_buff *skb) { return no_such_symbol; }\n')
    with pytest.raises(PacketForwardError, match=f"compiling {re.escape(str(bad))} failed.*make setup"):
        compile_program("packetforward", bad, error=PacketForwardError)


def test_defines_reach_the_compiler(tmp_path):
    src = tmp_path / "d.bpf.c"
    src.write_text('#include "common.h"\n#if WANT != 7 || !defined(OTHER)\n#error "defines missing"\n#endif\n'
                   "int f(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }\n")
    bpf = compile_program("test", src, {"WANT": 7, "OTHER": "x"})
    bpf.cleanup()


def test_ring_pages():
    assert ring_pages(1 << 20, "x") == 256
    for bad in (0, 4095, 3 * 4096):
        with pytest.raises(StartupError, match=f"x {bad} must be a power of two >= 4096"):
            ring_pages(bad, "x")
