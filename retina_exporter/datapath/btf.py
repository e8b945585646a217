"""A small reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``): struct member offsets and enum values of the
*running* kernel, so that BPF programs compiled against other headers read internal structs (``sk_buff``,
``sock``, ``net_device``) at the right places.

The binary format (Documentation/bpf/btf.rst) is parsed here directly, without libbpf or bpftool:

* a header (``magic 0xEB9F``, version, flags, ``hdr_len``, then the offsets and lengths of the type and string
  sections, both relative to the end of the header);
* the type section: ``struct btf_type {u32 name_off; u32 info; u32 size_or_type}`` followed by kind-specific
  data (INT: one u32; ARRAY: ``btf_array``; STRUCT/UNION: ``vlen`` ``btf_member``; ENUM: ``vlen`` ``btf_enum``;
  ENUM64: ``vlen`` ``btf_enum64``; FUNC_PROTO: ``vlen`` ``btf_param``; VAR: one u32; DATASEC: ``vlen``
  ``btf_var_secinfo``; DECL_TAG: one u32; PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG:
  nothing). Type ids count from 1 in section order (0 is ``void``);
* the string section (NUL-terminated names, addressed by offset).

Loading is lazy and cheap: one pass records where each type starts and indexes the named structs, unions,
enums and typedefs; members and enumerators are decoded only for the types asked about. On Linux 6.18 the
5.5 MB vmlinux BTF (126k types) loads in about 0.1 s (``python -m retina_exporter.datapath.btf --bench``); :func:`load`
caches the parsed object per (path, size, mtime), and lookups are memoised.

``member_offset("sk_buff", "len")`` resolves members of anonymous unions and structs (``sk_buff.len`` lives at
top level, ``sk_buff.dev`` inside an anonymous union), and dotted paths through embedded (not pointed-to)
structs: ``member_offset("sock", "__sk_common.skc_net")``.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass

__all__ = [
    "BTF",
    "BtfError",
    "Member",
    "VMLINUX",
    "load",
]

VMLINUX = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h).
KIND_UNKN = 0
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    KIND_UNKN: "UNKN", KIND_INT: "INT", KIND_PTR: "PTR", KIND_ARRAY: "ARRAY", KIND_STRUCT: "STRUCT",
    KIND_UNION: "UNION", KIND_ENUM: "ENUM", KIND_FWD: "FWD", KIND_TYPEDEF: "TYPEDEF", KIND_VOLATILE: "VOLATILE",
    KIND_CONST: "CONST", KIND_RESTRICT: "RESTRICT", KIND_FUNC: "FUNC", KIND_FUNC_PROTO: "FUNC_PROTO",
    KIND_VAR: "VAR", KIND_DATASEC: "DATASEC", KIND_FLOAT: "FLOAT", KIND_DECL_TAG: "DECL_TAG",
    KIND_TYPE_TAG: "TYPE_TAG", KIND_ENUM64: "ENUM64",
}

# Bytes of kind-specific data after the 12-byte btf_type: (fixed, per vlen item).
_EXTRA = {
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = frozenset((KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG))
_INDEXED = frozenset((KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_TYPEDEF, KIND_FWD))
_COMPOSITE = (KIND_STRUCT, KIND_UNION)


class BtfError(LookupError):
    """A BTF file that cannot be parsed, or a name or member that is not in it."""


@dataclass(frozen=True)
class Member:
    """Where a (possibly nested) member lives in its outermost struct.

    ``byte_offset``/``size``: byte position and size of the member's storage (for a bitfield: the byte holding
    its first bit, and ``size`` of its declared integer type); ``bit_offset``: absolute offset in bits;
    ``bit_size``: the bitfield width, 0 for an ordinary member; ``type_id``: the member's BTF type id.
    """

    name: str
    byte_offset: int
    size: int
    bit_offset: int
    bit_size: int
    type_id: int

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size != 0


class BTF:
    """Parsed BTF of one file. Build it with :func:`load` (cached) or ``BTF.from_bytes``."""

    def __init__(self, data: bytes, path: str = "<bytes>") -> None:
        self.path = path
        self._data = data
        if len(data) < 24:
            raise BtfError(f"{path}: too short for a BTF header ({len(data)} bytes)")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            if struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
                raise BtfError(f"{path}: big-endian BTF is not supported")
            raise BtfError(f"{path}: not BTF (magic {magic:#06x}, expected {BTF_MAGIC:#06x})")
        if version != 1:
            raise BtfError(f"{path}: unsupported BTF version {version}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(data) or self._str_end > len(data):
            raise BtfError(f"{path}: sections run past the end of the file")
        self._offsets: list[int] = [0]  # type id -> byte offset of its btf_type (id 0 = void)
        self._by_name: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._member_cache: dict[tuple[str, str], Member] = {}
        self._enum_cache: dict[str, dict[str, int]] = {}
        self._ptr_size: int | None = None
        self._scan()

    @classmethod
    def from_file(cls, path: str = VMLINUX) -> "BTF":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BtfError(f"cannot read BTF from {path}: {exc.strerror or exc} "
                           "(the kernel needs CONFIG_DEBUG_INFO_BTF=y)") from exc
        return cls(data, path)

    # --- the one pass --------------------------------------------------------------------------------------

    def _scan(self) -> None:
        data = self._data
        unpack = struct.Struct("<III").unpack_from
        off, end = self._types_start, self._types_end
        offsets = self._offsets
        by_name = self._by_name
        extra = _EXTRA
        indexed = _INDEXED
        string = self.string
        while off < end:
            if off + 12 > end:
                raise BtfError(f"{self.path}: truncated type at byte {off}")
            name_off, info, _ = unpack(data, off)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            try:
                fixed, per = extra[kind]
            except KeyError:
                raise BtfError(f"{self.path}: unknown BTF kind {kind} at type id {len(offsets)}") from None
            offsets.append(off)
            if name_off and kind in indexed:
                by_name.setdefault(string(name_off), []).append(len(offsets) - 1)
            off += 12 + fixed + per * vlen
        if off != end:
            raise BtfError(f"{self.path}: type section ends mid-type")

    # --- raw access ----------------------------------------------------------------------------------------

    def string(self, offset: int) -> str:
        start = self._str_start + offset
        if start >= self._str_end:
            raise BtfError(f"{self.path}: string offset {offset} out of range")
        stop = self._data.find(b"\0", start, self._str_end)
        return self._data[start:stop if stop >= 0 else self._str_end].decode("utf-8", "replace")

    @property
    def type_count(self) -> int:
        """Number of types (ids 1 .. type_count)."""
        return len(self._offsets) - 1

    def _header(self, type_id: int) -> tuple[int, int, int, int, int, int]:
        """(offset, name_off, kind, vlen, kind_flag, size_or_type) of a type."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"{self.path}: no type id {type_id}")
        off = self._offsets[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", self._data, off)
        return off, name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def kind(self, type_id: int) -> int:
        return self._header(type_id)[2]

    def name(self, type_id: int) -> str:
        if type_id == 0:
            return "void"
        name_off = self._header(type_id)[1]
        return self.string(name_off) if name_off else ""

    def find(self, name: str, kinds: tuple[int, ...] = _COMPOSITE) -> int:
        """Type id of the named type of one of ``kinds`` (a complete definition rather than a FWD)."""
        ids = [i for i in self._by_name.get(name, ()) if self.kind(i) in kinds]
        if not ids:
            wanted = "/".join(KIND_NAMES[k] for k in kinds)
            raise BtfError(f"{self.path}: no {wanted} named {name!r}")
        # Prefer the definition with members (vmlinux BTF is deduplicated, so there is normally exactly one).
        return max(ids, key=lambda i: self._header(i)[3])

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers (const, volatile, restrict, type tags)."""
        seen = 0
        while type_id:
            _, _, kind, _, _, ref = self._header(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref
            seen += 1
            if seen > 64:
                raise BtfError(f"{self.path}: type reference loop at id {type_id}")
        return 0

    def pointer_size(self) -> int:
        """Size of a pointer: the size of ``long unsigned int`` (BTF has no pointer-size record), else 8."""
        if self._ptr_size is None:
            ids = [i for i in self._by_name_all("long unsigned int") if self.kind(i) == KIND_INT]
            self._ptr_size = self._header(ids[0])[5] if ids else 8
        return self._ptr_size

    def _by_name_all(self, name: str) -> list[int]:
        """Ids of every type named ``name`` (a linear scan: for the rare kinds the index leaves out)."""
        return [i for i in range(1, len(self._offsets)) if self._header(i)[1] and self.name(i) == name]

    def size(self, type_id: int) -> int:
        """Byte size of a type (after typedefs and qualifiers)."""
        type_id = self.resolve(type_id)
        if type_id == 0:
            raise BtfError("void has no size")
        off, _, kind, _, _, size_or_type = self._header(type_id)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT, KIND_DATASEC):
            return size_or_type
        if kind == KIND_PTR:
            return self.pointer_size()
        if kind == KIND_ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._data, off + 12)
            return self.size(elem) * nelems
        raise BtfError(f"{self.path}: type {type_id} ({KIND_NAMES.get(kind, kind)}) has no size")

    def members(self, type_id: int) -> list[tuple[str, int, int, int]]:
        """Members of a STRUCT/UNION: ``(name, type_id, bit_offset, bitfield_size)``; anonymous ones have name ''."""
        off, _, kind, vlen, kind_flag, _ = self._header(type_id)
        if kind not in _COMPOSITE:
            raise BtfError(f"{self.path}: type {type_id} is a {KIND_NAMES.get(kind, kind)}, not a struct or union")
        out = []
        unpack = struct.Struct("<III").unpack_from
        for i in range(vlen):
            name_off, mtype, moff = unpack(self._data, off + 12 + 12 * i)
            if kind_flag:
                bit_size, bit_off = moff >> 24, moff & 0xFFFFFF
            else:
                bit_size, bit_off = 0, moff
            out.append((self.string(name_off) if name_off else "", mtype, bit_off, bit_size))
        return out

    def enumerators(self, type_id: int) -> dict[str, int]:
        """Values of an ENUM or ENUM64 (signed when the enum's kind_flag says so)."""
        off, _, kind, vlen, kind_flag, _ = self._header(type_id)
        data = self._data
        out: dict[str, int] = {}
        if kind == KIND_ENUM:
            fmt = struct.Struct("<Ii" if kind_flag else "<II")
            for i in range(vlen):
                name_off, val = fmt.unpack_from(data, off + 12 + 8 * i)
                out[self.string(name_off)] = val
        elif kind == KIND_ENUM64:
            for i in range(vlen):
                name_off, lo, hi = struct.unpack_from("<III", data, off + 12 + 12 * i)
                val = (hi << 32) | lo
                if kind_flag and val >= 1 << 63:
                    val -= 1 << 64
                out[self.string(name_off)] = val
        else:
            raise BtfError(f"{self.path}: type {type_id} is a {KIND_NAMES.get(kind, kind)}, not an enum")
        return out

    # --- the public lookups --------------------------------------------------------------------------------

    def _find_member(self, type_id: int, name: str, base_bits: int) -> tuple[int, int, int] | None:
        """(type_id, absolute bit offset, bitfield size) of ``name`` in a struct/union, looking into anonymous
        members; None when absent."""
        anonymous = []
        for mname, mtype, bit_off, bit_size in self.members(type_id):
            if mname == name:
                return mtype, base_bits + bit_off, bit_size
            if not mname:
                anonymous.append((mtype, base_bits + bit_off))
        for mtype, bits in anonymous:
            inner = self.resolve(mtype)
            if inner and self.kind(inner) in _COMPOSITE:
                found = self._find_member(inner, name, bits)
                if found is not None:
                    return found
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Locate ``path`` (``"a.b.c"``: members of embedded structs/unions, anonymous levels skipped) in the
        struct or union named ``struct_name``."""
        key = (struct_name, path)
        cached = self._member_cache.get(key)
        if cached is not None:
            return cached
        type_id = self.find(struct_name)
        bits = 0
        bit_size = 0
        parts = path.split(".")
        walked = []
        for i, part in enumerate(parts):
            holder = self.resolve(type_id)
            if holder == 0 or self.kind(holder) not in _COMPOSITE:
                raise BtfError(f"{struct_name}.{'.'.join(walked)} is a {self.describe(type_id)}, not a struct or "
                               f"union: cannot look up {part!r} in it (the path must not go through pointers)")
            found = self._find_member(holder, part, bits)
            if found is None:
                raise BtfError(f"{self.path}: {self.describe(holder)} has no member {part!r}"
                               f" (looking up {struct_name}.{path})")
            type_id, bits, bit_size = found
            walked.append(part)
        size = self.size(type_id)
        result = Member(path, bits // 8, size, bits, bit_size, type_id)
        with self._lock:
            self._member_cache[key] = result
        return result

    def member_offset(self, struct_name: str, path: str) -> tuple[int, int]:
        """``(byte_offset, size)`` of a member; raises :class:`BtfError` for a bitfield (use :meth:`member`)."""
        m = self.member(struct_name, path)
        if m.bit_size or m.bit_offset % 8:
            raise BtfError(f"{struct_name}.{path} is a {m.bit_size}-bit bitfield at bit {m.bit_offset}: "
                           "use BTF.member() for its bit position")
        return m.byte_offset, m.size

    def struct_size(self, struct_name: str) -> int:
        return self.size(self.find(struct_name))

    def enum_values(self, enum_name: str) -> dict[str, int]:
        """``{enumerator: value}`` of the ENUM or ENUM64 named ``enum_name``."""
        cached = self._enum_cache.get(enum_name)
        if cached is None:
            cached = self.enumerators(self.find(enum_name, (KIND_ENUM, KIND_ENUM64)))
            with self._lock:
                self._enum_cache[enum_name] = cached
        return dict(cached)

    def describe(self, type_id: int) -> str:
        type_id_r = self.resolve(type_id)
        if type_id_r == 0:
            return "void"
        kind = self.kind(type_id_r)
        name = self.name(type_id_r) or "(anon)"
        return f"{KIND_NAMES.get(kind, kind).lower()} {name}"


_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int], BTF]] = {}


def load(path: str = VMLINUX) -> BTF:
    """The parsed BTF of ``path``, parsed once per process (re-parsed if the file's size or mtime changes)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BtfError(f"cannot read BTF from {path}: {exc.strerror or exc} "
                       "(the kernel needs CONFIG_DEBUG_INFO_BTF=y)") from exc
    stamp = (st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    btf = BTF.from_file(path)
    with _cache_lock:
        _cache[path] = (stamp, btf)
    return btf


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Look up struct member offsets and enum values in kernel BTF")
    ap.add_argument("--file", default=VMLINUX)
    ap.add_argument("--bench", action="store_true", help="time a cold parse")
    ap.add_argument("--enum", help="print the values of this enum")
    ap.add_argument("members", nargs="*", help="struct:path, e.g. sk_buff:len")
    args = ap.parse_args(argv)
    if args.bench:
        t0 = time.perf_counter()
        btf = BTF.from_file(args.file)
        t1 = time.perf_counter()
        btf.member("sk_buff", "len")
        t2 = time.perf_counter()
        print(f"parsed {btf.type_count} types from {args.file} in {(t1 - t0) * 1e3:.1f} ms; "
              f"first member lookup {(t2 - t1) * 1e6:.0f} us")
    btf = load(args.file)
    for spec in args.members:
        struct_name, _, path = spec.partition(":")
        m = btf.member(struct_name, path)
        bits = f" bits {m.bit_offset}+{m.bit_size}" if m.bit_size else ""
        print(f"{struct_name}.{path}: offset {m.byte_offset} size {m.size}{bits}")
    if args.enum:
        for k, v in sorted(btf.enum_values(args.enum).items(), key=lambda kv: kv[1]):
            print(f"{v:6d} {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
