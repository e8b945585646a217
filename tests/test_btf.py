"""retina_exporter.datapath.btf against bpftool's view of the running kernel's BTF, plus hand-built BTF for every kind."""

from __future__ import annotations

import collections
import re
import shutil
import struct
import subprocess
import time

import pytest

from retina_exporter.datapath import btf as btfmod
from retina_exporter.datapath.btf import BTF, BtfError

pytestmark = pytest.mark.skipif(not btfmod.os.path.exists(btfmod.VMLINUX), reason="kernel without BTF")

_TYPE_RE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER_RE = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")
_ENUM_RE = re.compile(r"^\t'([^']*)' val=(-?\d+)")


class BpftoolBTF:
    """The raw ``bpftool btf dump`` text, parsed independently of the module under test."""

    def __init__(self, text: str):
        self.types: dict[int, dict] = {}
        cur = None
        for line in text.splitlines():
            m = _TYPE_RE.match(line)
            if m:
                attrs = dict(kv.split("=", 1) for kv in m.group(4).split() if "=" in kv)
                cur = {"kind": m.group(2), "name": m.group(3), "attrs": attrs, "members": [], "enums": []}
                self.types[int(m.group(1))] = cur
                continue
            m = _MEMBER_RE.match(line)
            if m and cur is not None and cur["kind"] in ("STRUCT", "UNION"):
                cur["members"].append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)))
                continue
            m = _ENUM_RE.match(line)
            if m and cur is not None:
                cur["enums"].append((m.group(1), int(m.group(2))))

    def find(self, name: str, kinds=("STRUCT", "UNION")) -> int:
        return next(i for i, t in self.types.items() if t["name"] == name and t["kind"] in kinds)

    def strip(self, tid: int) -> int:
        while self.types[tid]["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = int(self.types[tid]["attrs"]["type_id"])
        return tid

    def lookup(self, tid: int, name: str, base: int = 0):
        for mname, mtype, bits, bsize in self.types[tid]["members"]:
            if mname == name:
                return mtype, base + bits, bsize
        for mname, mtype, bits, _ in self.types[tid]["members"]:
            if mname == "(anon)":
                inner = self.strip(mtype)
                if self.types[inner]["kind"] in ("STRUCT", "UNION"):
                    found = self.lookup(inner, name, base + bits)
                    if found:
                        return found
        return None

    def member(self, struct_name: str, path: str):
        tid, bits, bsize = self.find(struct_name), 0, 0
        for part in path.split("."):
            tid, bits, bsize = self.lookup(self.strip(tid), part, bits)
        return tid, bits, bsize

    def size(self, tid: int) -> int:
        t = self.types[self.strip(tid)]
        if t["kind"] == "PTR":
            return 8
        if t["kind"] == "ARRAY":
            return self.size(int(t["attrs"]["type_id"])) * int(t["attrs"]["nr_elems"])
        return int(t["attrs"]["size"])


@pytest.fixture(scope="module")
def bpftool():
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed")
    text = subprocess.run(["bpftool", "btf", "dump", "file", btfmod.VMLINUX], check=True, capture_output=True,
                          text=True).stdout
    return BpftoolBTF(text)


@pytest.fixture(scope="module")
def vmlinux():
    return btfmod.load()


SK_BUFF_MEMBERS = ("len", "data_len", "dev", "sk", "head", "data", "network_header", "transport_header",
                   "mac_header", "protocol", "skb_iif", "end", "tail", "mark", "hash", "truesize", "cb")


@pytest.mark.parametrize("member", SK_BUFF_MEMBERS)
def test_sk_buff_members_match_bpftool(vmlinux, bpftool, member):
    tid, bits, bsize = bpftool.member("sk_buff", member)
    assert bsize == 0 and bits % 8 == 0
    assert vmlinux.member_offset("sk_buff", member) == (bits // 8, bpftool.size(tid))


@pytest.mark.parametrize("struct_name,path", [
    ("sock", "__sk_common.skc_net.net"),
    ("sock", "__sk_common.skc_family"),
    ("net_device", "ifindex"),
    ("net_device", "nd_net.net"),
    ("net", "ns.inum"),
    ("skb_shared_info", "gso_segs"),
    ("iphdr", "daddr"),
])
def test_nested_paths_match_bpftool(vmlinux, bpftool, struct_name, path):
    tid, bits, _ = bpftool.member(struct_name, path)
    assert vmlinux.member_offset(struct_name, path) == (bits // 8, bpftool.size(tid))


def test_bitfield_member(vmlinux, bpftool):
    _tid, bits, bsize = bpftool.member("sk_buff", "pkt_type")
    m = vmlinux.member("sk_buff", "pkt_type")
    assert (m.bit_offset, m.bit_size) == (bits, bsize) and m.is_bitfield and bsize == 3
    with pytest.raises(BtfError, match="bitfield"):
        vmlinux.member_offset("sk_buff", "pkt_type")


def test_skb_drop_reason_enum_matches_bpftool(vmlinux, bpftool):
    ours = vmlinux.enum_values("skb_drop_reason")
    theirs = dict(bpftool.types[bpftool.find("skb_drop_reason", ("ENUM", "ENUM64"))]["enums"])
    assert ours == theirs
    assert ours["SKB_DROP_REASON_NETFILTER_DROP"] > ours["SKB_DROP_REASON_NOT_SPECIFIED"]


def test_type_count_and_kinds_match_bpftool(vmlinux, bpftool):
    assert vmlinux.type_count == max(bpftool.types)
    ours = collections.Counter(btfmod.KIND_NAMES[vmlinux.kind(i)] for i in range(1, vmlinux.type_count + 1))
    theirs = collections.Counter(t["kind"] for t in bpftool.types.values())
    assert ours == theirs


def test_struct_sizes_match_bpftool(vmlinux, bpftool):
    for name in ("sk_buff", "sock", "net_device", "skb_shared_info"):
        assert vmlinux.struct_size(name) == int(bpftool.types[bpftool.find(name)]["attrs"]["size"])


def test_lookup_errors_are_clear(vmlinux):
    with pytest.raises(BtfError, match="no STRUCT/UNION named 'no_such_struct'"):
        vmlinux.member_offset("no_such_struct", "x")
    with pytest.raises(BtfError, match="has no member 'no_such_member'"):
        vmlinux.member_offset("sk_buff", "no_such_member")
    with pytest.raises(BtfError, match="not a struct or union"):
        vmlinux.member_offset("sk_buff", "dev.ifindex")  # through a pointer
    with pytest.raises(BtfError):
        vmlinux.enum_values("no_such_enum")


def test_parse_is_fast_and_cached():
    t0 = time.perf_counter()
    b = BTF.from_file(btfmod.VMLINUX)
    cold = time.perf_counter() - t0
    b.member("sk_buff", "len")
    assert cold < 2.0, f"parsing {btfmod.VMLINUX} took {cold:.2f}s"
    assert btfmod.load() is btfmod.load()
    t0 = time.perf_counter()
    for _ in range(1000):
        btfmod.load().member_offset("sk_buff", "len")
    assert time.perf_counter() - t0 < 0.5


# --- hand-built BTF with every kind ------------------------------------------------------------------------


class Builder:
    def __init__(self):
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.n = 0

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + extra
        self.n += 1
        return self.n

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def test_every_kind_in_hand_built_btf():
    b = Builder()
    u32 = b.add("unsigned int", btfmod.KIND_INT, 0, 4, struct.pack("<I", 32))  # 1
    ulong = b.add("long unsigned int", btfmod.KIND_INT, 0, 8, struct.pack("<I", 64))  # 2
    ptr = b.add("", btfmod.KIND_PTR, 0, u32)  # 3
    arr = b.add("", btfmod.KIND_ARRAY, 0, 0, struct.pack("<III", u32, u32, 6))  # 4: u32[6]
    vol = b.add("", btfmod.KIND_VOLATILE, 0, u32)  # 5
    const = b.add("", btfmod.KIND_CONST, 0, vol)  # 6
    td = b.add("u32_t", btfmod.KIND_TYPEDEF, 0, const)  # 7
    restrict = b.add("", btfmod.KIND_RESTRICT, 0, ptr)  # 8
    tag = b.add("user", btfmod.KIND_TYPE_TAG, 0, restrict)  # 9
    fwd = b.add("later", btfmod.KIND_FWD, 0, 0)  # 10
    flt = b.add("float", btfmod.KIND_FLOAT, 0, 4)  # 11
    inner = b.add("", btfmod.KIND_UNION, 2, 8, struct.pack("<III", b.s("x"), u32, 0)
                  + struct.pack("<III", b.s("y"), ulong, 0))  # 12: anonymous union {u32 x; ulong y;}
    # struct outer { u32_t a; (anon union) at 64; u32 bits:3 at bit 128; u32 arr[6] at 160; ptr p at 384 }
    outer = b.add("outer", btfmod.KIND_STRUCT, 5, 56,
                  struct.pack("<III", b.s("a"), td, 0)
                  + struct.pack("<III", 0, inner, 64)
                  + struct.pack("<III", b.s("bits"), u32, (3 << 24) | 128)
                  + struct.pack("<III", b.s("arr"), arr, 160)
                  + struct.pack("<III", b.s("p"), tag, 384), kflag=1)  # 13
    wrap = b.add("wrap", btfmod.KIND_STRUCT, 1, 64, struct.pack("<III", b.s("o"), outer, 64))  # 14
    en = b.add("color", btfmod.KIND_ENUM, 2, 4, struct.pack("<Ii", b.s("RED"), -1)
               + struct.pack("<Ii", b.s("BLUE"), 7), kflag=1)  # 15 signed
    big = (1 << 40) + 5
    en64 = b.add("wide", btfmod.KIND_ENUM64, 1, 8, struct.pack("<III", b.s("W"), big & 0xFFFFFFFF, big >> 32))  # 16
    proto = b.add("", btfmod.KIND_FUNC_PROTO, 2, u32, struct.pack("<II", b.s("a"), u32) + struct.pack("<II", 0, ptr))
    func = b.add("f", btfmod.KIND_FUNC, 1, proto)
    var = b.add("v", btfmod.KIND_VAR, 0, u32, struct.pack("<I", 1))
    b.add(".data", btfmod.KIND_DATASEC, 1, 4, struct.pack("<III", var, 0, 4))
    b.add("kfunc", btfmod.KIND_DECL_TAG, 0, func, struct.pack("<i", -1))
    btf = BTF(b.blob())
    assert btf.type_count == 21
    assert [btf.kind(i) for i in (fwd, flt, func, var)] == [btfmod.KIND_FWD, btfmod.KIND_FLOAT, btfmod.KIND_FUNC,
                                                              btfmod.KIND_VAR]
    assert btf.member_offset("outer", "a") == (0, 4)  # through typedef -> const -> volatile
    assert btf.member_offset("outer", "x") == (8, 4)  # anonymous union
    assert btf.member_offset("outer", "y") == (8, 8)
    assert btf.member_offset("outer", "arr") == (20, 24)
    assert btf.member_offset("outer", "p") == (48, 8)  # pointer size from 'long unsigned int'
    assert btf.member_offset("wrap", "o.y") == (16, 8)
    m = btf.member("outer", "bits")
    assert (m.bit_offset, m.bit_size, m.size) == (128, 3, 4)
    assert btf.enum_values("color") == {"RED": -1, "BLUE": 7}
    assert btf.enum_values("wide") == {"W": big}
    assert btf.struct_size("outer") == 56


def test_rejects_what_is_not_btf():
    with pytest.raises(BtfError, match="not BTF"):
        BTF(b"\x00" * 64)
    with pytest.raises(BtfError, match="too short"):
        BTF(b"\x9f\xeb")
    b = Builder()
    b.add("x", 25, 0, 0)  # no such kind
    with pytest.raises(BtfError, match="unknown BTF kind 25"):
        BTF(b.blob())
    with pytest.raises(BtfError, match="cannot read BTF"):
        btfmod.load("/nonexistent/btf")
