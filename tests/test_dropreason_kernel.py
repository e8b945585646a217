"""dropreason pieces that need no traffic: the tracepoint format, the reason table, the C/Python layouts, and the
errors for a missing tracefs or tracepoint. The program is compiled once for this module."""

from __future__ import annotations

import ctypes as ct
from types import SimpleNamespace

import pytest

from retina_core import dropreason
from retina_core.record import DIRECTION_LABELS

from metrics_module.registry import FamilyRegistry
from retina_exporter.datapath import btf as btfmod
from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import PluginContext
from retina_exporter.bpf import dropreason as layout
from retina_exporter.plugins.dropreason import reasons
from retina_exporter.plugins.dropreason.loader import DropReasonProgram, LoadOptions
from retina_exporter.plugins.dropreason.plugin import DropReasonPlugin
from retina_exporter.datapath.tracepoint import (
    DEFAULT_TRACEFS,
    TracepointMissing,
    parse_format,
    read_format,
)
from retina_exporter.plugins.manager import PluginManager
from retina_exporter.datapath.sysfs import ensure_tracefs
from retina_core.telemetry import ControlPlane

ensure_tracefs()


@pytest.fixture(scope="module")
def program():
    prog = DropReasonProgram(LoadOptions(ring_buffer_bytes=1 << 16))
    yield prog
    prog.close()


class ListSink:
    def __init__(self):
        self.items = []

    def write_batch(self, items):
        self.items.extend(items)


def make_ctx(**cfg):
    config = SimpleNamespace(enable_pod_level=False, host_interfaces=(), node_name="n", **cfg)
    return PluginContext(config=config, flow_sink=ListSink(), telemetry=ControlPlane(), metrics=FamilyRegistry())


# --- tracepoint format -------------------------------------------------------------------------------------

OLD_FORMAT = """name: kfree_skb
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:char comm[16];\toffset:32;\tsize:16;\tsigned:1;

print fmt: "skbaddr=%p protocol=%u location=%p reason: %s", REC->skbaddr, REC->protocol, REC->location, \
__print_symbolic(REC->reason, { 1, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, { 0x10, "HEX" })
"""


def test_parse_a_5_17_style_format():
    fmt = parse_format(OLD_FORMAT, "skb", "kfree_skb")
    assert fmt.id == 1234
    assert fmt.field("reason").offset == 28 and fmt.field("reason").ctype == "enum skb_drop_reason"
    assert fmt.field("skbaddr").ctype == "void *"
    assert fmt.field("comm").size == 16 and fmt.field("comm").signed
    assert fmt.symbolic("reason") == {1: "NOT_SPECIFIED", 2: "NO_SOCKET", 16: "HEX"}
    assert fmt.symbolic("protocol") == {}


def test_a_kernel_without_the_reason_field_is_reported():
    text = OLD_FORMAT.replace("\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n", "")
    with pytest.raises(TracepointMissing, match="no field 'reason'.*5.17"):
        parse_format(text, "skb", "kfree_skb").field("reason")


def test_running_kernel_format_has_the_fields_and_names():
    fmt = read_format("skb", "kfree_skb")
    for name in ("skbaddr", "location", "protocol", "reason"):
        assert name in fmt.fields
    names = fmt.symbolic("reason")
    enum = btfmod.load().enum_values("skb_drop_reason")
    for code, name in names.items():
        if name != "MAX":
            assert enum["SKB_DROP_REASON_" + name] == code


def test_missing_tracefs_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match=f"tracefs is not mounted at {tmp_path}"):
        DropReasonProgram(LoadOptions(tracefs=str(tmp_path)))


def test_missing_tracepoint_is_a_plugin_error(tmp_path):
    (tmp_path / "events" / "sched").mkdir(parents=True)
    with pytest.raises(TracepointMissing, match="no tracepoint skb:kfree_skb"):
        DropReasonProgram(LoadOptions(tracefs=str(tmp_path)))
    # Through the plugin manager: the agent keeps running, /readyz names the failure.
    ctx = make_ctx()
    manager = PluginManager([DropReasonPlugin(tracefs=str(tmp_path))], ctx)
    manager.start()
    try:
        assert "no tracepoint skb:kfree_skb" in manager.failures["dropreason"]
        assert any("dropreason failed" in r and "kfree_skb" in r for r in manager.not_ready_reasons())
        assert ctx.telemetry.failed_reconcile == {"dropreason": 1}
    finally:
        manager.stop()


def test_plugin_with_unmounted_tracefs_stops_the_agent(tmp_path):
    manager = PluginManager([DropReasonPlugin(tracefs=str(tmp_path))], make_ctx())
    with pytest.raises(StartupError, match="tracefs is not mounted"):
        manager.start()
    manager.stop()


# --- reasons -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table():
    return reasons.ReasonTable.from_kernel()


def test_reason_table_of_the_running_kernel(table):
    assert table.source == "btf+tracefs"
    enum = btfmod.load().enum_values("skb_drop_reason")
    assert table.name(enum["SKB_DROP_REASON_NETFILTER_DROP"]) == "NETFILTER_DROP"
    assert table.name(enum["SKB_DROP_REASON_NO_SOCKET"]) == "NO_SOCKET"
    assert table.name(enum["SKB_CONSUMED"]) == "CONSUMED"
    assert table.name(enum["SKB_NOT_DROPPED_YET"]) == "NOT_DROPPED_YET"
    assert table.code("SKB_DROP_REASON_TCP_INVALID_SEQUENCE") == table.code("TCP_INVALID_SEQUENCE")
    assert sorted(table.ignore_codes()) == [0, 1, enum["SKB_DROP_REASON_NOT_SPECIFIED"]]
    assert table.name(7 << 16 | 5) == "SUBSYS_7_5"  # a subsystem this kernel does not name
    assert table.name(0xFFFF) == "UNKNOWN_65535"
    subsys = btfmod.load().enum_values("skb_drop_reason_subsys")
    ovs = subsys["SKB_DROP_REASON_SUBSYS_OPENVSWITCH"]
    assert table.name(ovs << 16 | 3) == "SUBSYS_OPENVSWITCH_3"


@pytest.mark.parametrize("name,hint,expected", [
    ("NETFILTER_DROP", reasons.HINT_RECEIVED, "ingress"),
    ("NETFILTER_DROP", reasons.HINT_LOCAL, "egress"),
    ("NETFILTER_DROP", reasons.HINT_UNKNOWN, "unknown"),
    ("QDISC_DROP", reasons.HINT_RECEIVED, "egress"),  # a forwarded packet dropped by the egress qdisc
    ("NEIGH_FAILED", reasons.HINT_RECEIVED, "egress"),
    ("TCP_INVALID_SEQUENCE", reasons.HINT_LOCAL, "ingress"),
    ("NO_SOCKET", reasons.HINT_UNKNOWN, "ingress"),
    ("IP_INHDR", reasons.HINT_LOCAL, "ingress"),
    ("SOCKET_CLOSE", reasons.HINT_RECEIVED, "ingress"),
])
def test_direction_rules(name, hint, expected):
    assert DIRECTION_LABELS[reasons.direction_of(name, hint)] == expected


def test_hubble_mapping(table):
    assert table.hubble(table.code("NETFILTER_DROP")) == dropreason.HUBBLE_POLICY_DENIED == 133
    assert table.hubble(table.code("IP_CSUM")) == 134
    assert table.hubble(table.code("IP_OUTNOROUTES")) == 169
    assert table.hubble(table.code("NO_SOCKET")) == 0
    from retina_core.proto import flow_pb2

    for code in set(dropreason.HUBBLE_BY_NAME.values()):  # every number we produce is a named Hubble reason
        assert flow_pb2.DropReason.Name(code)


def test_ignore_mask_words():
    words = layout.ignore_mask([0, 1, 2, 64, 511, 512, -1])
    assert words[0] == 0b111 and words[1] == 1 and words[7] == 1 << 63 and sum(1 for w in words if w) == 3


# --- layouts and the compiled program ----------------------------------------------------------------------


def test_layouts_match_the_compiled_c(program):
    assert ct.sizeof(program.counts.sLeaf) == ct.sizeof(layout.DrValue) == 16
    assert ct.sizeof(program.counts.Key) == ct.sizeof(layout.DrKey) == 8
    assert ct.sizeof(program.config_map.Leaf) == ct.sizeof(layout.DrConfig) == 72
    theirs = program.bpf[b"event_layout"].Leaf
    assert ct.sizeof(theirs) == ct.sizeof(layout.DropEvent) == layout.EVENT_SIZE == 80
    for name, *_ in layout.DropEvent._fields_:
        if not name.startswith("_"):
            assert getattr(layout.DropEvent, name).offset == getattr(theirs, name).offset, name
    for ours, c in ((layout.DrKey, program.counts.Key), (layout.DrConfig, program.config_map.Leaf)):
        for name, *_ in ours._fields_:
            if not name.startswith("_"):
                assert getattr(ours, name).offset == getattr(c, name).offset, name


def test_offsets_come_from_btf_and_the_format_file(program):
    b = btfmod.load()
    fmt = read_format("skb", "kfree_skb", DEFAULT_TRACEFS)
    assert program.defines["TP_OFF_REASON"] == fmt.fields["reason"].offset
    assert program.defines["TP_OFF_PROTOCOL"] == fmt.fields["protocol"].offset
    assert program.defines["OFF_SKB_LEN"] == b.member_offset("sk_buff", "len")[0]
    assert program.defines["OFF_SKB_DEV"] == b.member_offset("sk_buff", "dev")[0]
    assert program.defines["OFF_NET_INUM"] == b.member_offset("net", "ns.inum")[0]


def test_configure_writes_mask_events_and_netns_filter(program):
    program.configure([2, 70], emit_events=True, netns={11, 22})
    cfg = program.config_map[ct.c_int(0)]
    assert cfg.ignore_mask[0] == 1 << 2 and cfg.ignore_mask[1] == 1 << 6
    assert cfg.emit_events == 1 and cfg.filter_netns == 1
    assert program.netns_in_filter() == {11, 22}
    program.configure([], netns={22, 33})
    assert program.netns_in_filter() == {22, 33}
    program.configure([])
    cfg = program.config_map[ct.c_int(0)]
    assert cfg.filter_netns == 0 and cfg.emit_events == 0


def test_plugin_lifecycle_registers_and_unregisters_metrics(program):
    ctx = make_ctx()
    plugin = DropReasonPlugin(program)
    plugin.init(ctx)
    plugin.start()
    try:
        assert program.attached
        names = [f[0] for f in ctx.metrics.families()]
        assert names == ["networkobservability_drop_count", "networkobservability_drop_bytes"]
        assert plugin.debug()["ignored_reasons"] == ["NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED"]
    finally:
        plugin.stop()
    assert not program.attached
    assert list(ctx.metrics.families()) == []
    plugin.stop()  # idempotent


def test_unknown_scope_is_a_startup_error(program):
    with pytest.raises(StartupError, match="scope 'pods'"):
        DropReasonPlugin(program, scope="pods").init(make_ctx())
