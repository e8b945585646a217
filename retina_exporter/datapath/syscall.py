"""A thin ctypes wrapper of the bpf(2) system call, for what bcc does not offer.

bcc loads programs and maps; this module does the rest that the TC attachment layer and the tests need:
TCX links (``BPF_LINK_CREATE``), hook queries (``BPF_PROG_QUERY``), ``BPF_PROG_TEST_RUN``, object info,
get-fd-by-id, link detach and bpffs pinning.

Conventions
-----------
* Every function builds the command's part of ``union bpf_attr`` as a zero-filled little/native-endian byte
  buffer; the offsets are written out in each docstring and were checked against the running kernel's BTF
  (``bpftool btf dump file /sys/kernel/btf/vmlinux format c``, kernel 6.18). The kernel copies
  ``min(size, sizeof(union bpf_attr))`` bytes and zero-fills the rest, so passing only the prefix a command
  uses is valid on older and newer kernels alike.
* File descriptors returned by the kernel for BPF objects are always ``O_CLOEXEC``; the caller owns them and
  must ``os.close()`` them.
* A failing call raises :class:`BpfError` (an ``OSError``) carrying ``errno`` and a message naming the bpf
  command, e.g. ``[Errno 19] bpf(BPF_LINK_CREATE) failed: No such device (ifindex 42)``.
* All ifindex arguments are resolved by the kernel in the network namespace of the *calling thread*.

Kernel minimums are given per function; everything here except TCX works on 5.x kernels.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import os
import platform
import struct
from typing import NamedTuple

__all__ = [
    "BpfError",
    "BPF_TCX_INGRESS",
    "BPF_TCX_EGRESS",
    "BPF_F_REPLACE",
    "BPF_F_BEFORE",
    "BPF_F_AFTER",
    "BPF_F_ID",
    "BPF_F_LINK",
    "BPF_PROG_TYPE_SCHED_CLS",
    "BPF_LINK_TYPE_TCX",
    "TC_ACT_UNSPEC",
    "TC_ACT_OK",
    "TC_ACT_SHOT",
    "TestRunResult",
    "ProgInfo",
    "LinkInfo",
    "bpf",
    "link_create_tcx",
    "link_detach",
    "link_update",
    "link_get_fd_by_id",
    "link_get_info",
    "prog_query",
    "prog_test_run",
    "prog_get_info",
    "prog_get_fd_by_id",
    "prog_attach",
    "prog_detach",
    "prog_load",
    "load_constant_prog",
    "obj_pin",
    "obj_get",
    "kernel_version",
    "kernel_has_tcx",
]

# --- syscall numbers ------------------------------------------------------------------------------------
# x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64/riscv64 use the generic table (include/uapi/asm-generic/unistd.h).
_NR_BPF = {
    "x86_64": 321,
    "amd64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
}

# --- enum bpf_cmd ---------------------------------------------------------------------------------------
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34

_CMD_NAMES = {
    BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_OBJ_PIN: "BPF_OBJ_PIN",
    BPF_OBJ_GET: "BPF_OBJ_GET",
    BPF_PROG_ATTACH: "BPF_PROG_ATTACH",
    BPF_PROG_DETACH: "BPF_PROG_DETACH",
    BPF_PROG_TEST_RUN: "BPF_PROG_TEST_RUN",
    BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_PROG_QUERY: "BPF_PROG_QUERY",
    BPF_LINK_CREATE: "BPF_LINK_CREATE",
    BPF_LINK_UPDATE: "BPF_LINK_UPDATE",
    BPF_LINK_GET_FD_BY_ID: "BPF_LINK_GET_FD_BY_ID",
    BPF_LINK_DETACH: "BPF_LINK_DETACH",
}

# --- enum bpf_attach_type (verified from this kernel's BTF) ---------------------------------------------
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

# --- attach flags (include/uapi/linux/bpf.h #defines; BPF_F_LINK is an enum value) ----------------------
BPF_F_REPLACE = 1 << 2
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_ID = 1 << 5
BPF_F_LINK = 1 << 13

# --- misc enums -----------------------------------------------------------------------------------------
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_LINK_TYPE_TCX = 11
BPF_OBJ_NAME_LEN = 16

# TC verdicts (include/uapi/linux/pkt_cls.h). Under TCX, TC_ACT_UNSPEC (== TCX_NEXT) continues to the next
# program of the chain and then to the legacy clsact filters; TC_ACT_OK (== TCX_PASS) ends the chain.
TC_ACT_UNSPEC = -1
TC_ACT_OK = 0
TC_ACT_SHOT = 2


class BpfError(OSError):
    """A failed bpf(2) call: ``errno`` is the kernel's error, ``cmd`` the command's name."""

    def __init__(self, err: int, cmd: str, detail: str = ""):
        msg = f"bpf({cmd}) failed: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg)
        self.cmd = cmd


# --- the raw call ---------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


@functools.lru_cache(maxsize=None)
def _nr_bpf() -> int:
    machine = platform.machine().lower()
    try:
        return _NR_BPF[machine]
    except KeyError:
        raise OSError(_errno.ENOSYS, f"bpf(2) syscall number unknown for architecture {machine!r}") from None


def bpf(cmd: int, attr: ctypes.Array, size: int | None = None, detail: str = "") -> int:
    """Issue ``bpf(cmd, attr, size)``; returns the (non-negative) result, raises :class:`BpfError`.

    ``attr`` is a ctypes char buffer (``ctypes.create_string_buffer``) which the kernel may write back to
    (e.g. ``retval``/``duration`` of a test run); ``size`` defaults to the buffer's length. EINTR is retried.
    """
    if size is None:
        size = ctypes.sizeof(attr)
    nr = _nr_bpf()
    while True:
        ret = _syscall(
            ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_uint(size)
        )
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err == _errno.EINTR:
            continue
        raise BpfError(err, _CMD_NAMES.get(cmd, f"cmd {cmd}"), detail)


def _attr(size: int) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def _ptr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


# --- links (TCX) ----------------------------------------------------------------------------------------
def link_create_tcx(
    prog_fd: int,
    ifindex: int,
    attach_type: int,
    flags: int = BPF_F_BEFORE,
    relative_fd: int = 0,
    expected_revision: int = 0,
) -> int:
    """Attach a SCHED_CLS program to a TCX hook with a BPF link; returns the link fd (kernel >= 6.6).

    ``attach_type`` is :data:`BPF_TCX_INGRESS` (46) or :data:`BPF_TCX_EGRESS` (47). Placement in the
    multi-program chain (``bpf_mprog``): ``BPF_F_BEFORE`` with ``relative_fd=0`` puts the program at the
    head (it runs first), ``BPF_F_AFTER`` with 0 at the tail; with a non-zero ``relative_fd`` it is placed
    before/after that program (or link with ``BPF_F_LINK``, or id with ``BPF_F_ID``).
    ``expected_revision`` (0 = don't care) makes the call fail with ESTALE if the chain changed.

    The program stays attached while the link lives: closing the last fd (or the process dying) detaches
    it, unless the link is pinned in bpffs (:func:`obj_pin`).

    attr (``link_create``): prog_fd u32 @0, target_ifindex u32 @4, attach_type u32 @8, flags u32 @12,
    tcx.relative_fd u32 @16, tcx.expected_revision u64 @24 (32 bytes).
    Errors: ENODEV (no such ifindex in the caller's netns), EINVAL (no TCX on this kernel, wrong program
    type), EEXIST (the program is already in this chain), EPERM (needs CAP_BPF + CAP_NET_ADMIN).
    """
    a = _attr(32)
    struct.pack_into("=IIII", a, 0, prog_fd, ifindex, attach_type, flags)
    struct.pack_into("=I", a, 16, relative_fd)
    struct.pack_into("=Q", a, 24, expected_revision)
    return bpf(BPF_LINK_CREATE, a, detail=f"prog fd {prog_fd}, ifindex {ifindex}, attach_type {attach_type}")


def link_detach(link_fd: int) -> None:
    """Forcefully detach a link from its hook (kernel >= 5.9; TCX links >= 6.6). The fd stays open (the link
    becomes defunct) and must still be closed. Works on links other holders (pins, other processes) keep alive.

    attr (``link_detach``): link_fd u32 @0.
    """
    a = _attr(4)
    struct.pack_into("=I", a, 0, link_fd)
    bpf(BPF_LINK_DETACH, a, detail=f"link fd {link_fd}")


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Atomically replace the program of a link (kernel >= 5.7; TCX links >= 6.6): packets before the call run
    the old program, packets after it the new one, and the hook is never empty (no detach/attach gap).

    attr (``link_update``): link_fd u32 @0, new_prog_fd u32 @4, flags u32 @8, old_prog_fd u32 @12 (unused:
    no ``BPF_F_REPLACE``). Errors: EINVAL (program type or attach type differs from the link's), ENOLINK
    (the link was detached, e.g. its device is gone).
    """
    a = _attr(16)
    struct.pack_into("=II", a, 0, link_fd, new_prog_fd)
    bpf(BPF_LINK_UPDATE, a, detail=f"link fd {link_fd}, prog fd {new_prog_fd}")


def link_get_fd_by_id(link_id: int) -> int:
    """Open a new fd on the link with this id (kernel >= 5.8). attr: link_id u32 @0, next_id @4, open_flags @8."""
    a = _attr(12)
    struct.pack_into("=I", a, 0, link_id)
    return bpf(BPF_LINK_GET_FD_BY_ID, a, detail=f"link id {link_id}")


class LinkInfo(NamedTuple):
    type: int  # enum bpf_link_type; 11 = BPF_LINK_TYPE_TCX
    id: int
    prog_id: int
    ifindex: int  # TCX links only (0 otherwise)
    attach_type: int  # TCX links only (0 otherwise)


def link_get_info(link_fd: int) -> LinkInfo:
    """struct bpf_link_info via BPF_OBJ_GET_INFO_BY_FD: type u32 @0, id u32 @4, prog_id u32 @8, and for
    TCX links the union at @16 holds tcx.ifindex u32 @16, tcx.attach_type u32 @20."""
    buf = _get_info(link_fd, 64)
    typ, lid, pid = struct.unpack_from("=III", buf, 0)
    ifindex = attach_type = 0
    if typ == BPF_LINK_TYPE_TCX:
        ifindex, attach_type = struct.unpack_from("=II", buf, 16)
    return LinkInfo(typ, lid, pid, ifindex, attach_type)


# --- queries --------------------------------------------------------------------------------------------
def prog_query(ifindex: int, attach_type: int) -> list[tuple[int, int]]:
    """Programs attached to a hook, in execution order: a list of ``(prog_id, link_id)``; ``link_id`` is 0
    for programs attached without a link (``BPF_PROG_ATTACH``). For TCX hooks (kernel >= 6.6) the order is
    the ``bpf_mprog`` chain order, head first. A hook with nothing attached gives ``[]``.

    attr (``query``): target_ifindex u32 @0, attach_type u32 @4, query_flags u32 @8, attach_flags u32 @12,
    prog_ids ptr @16, prog_cnt u32 @24, prog_attach_flags ptr @32, link_ids ptr @40,
    link_attach_flags ptr @48, revision u64 @56 (64 bytes). The first call (count 0, no arrays) returns the
    count; the second fills the arrays (retried if the chain grew in between: ENOSPC).
    """
    for _ in range(8):
        a = _attr(64)
        struct.pack_into("=II", a, 0, ifindex, attach_type)
        bpf(BPF_PROG_QUERY, a, detail=f"ifindex {ifindex}, attach_type {attach_type}")
        (count,) = struct.unpack_from("=I", a, 24)
        if count == 0:
            return []
        cap = count + 4
        prog_ids = (ctypes.c_uint32 * cap)()
        link_ids = (ctypes.c_uint32 * cap)()
        a = _attr(64)
        struct.pack_into("=II", a, 0, ifindex, attach_type)
        struct.pack_into("=Q", a, 16, ctypes.addressof(prog_ids))
        struct.pack_into("=I", a, 24, cap)
        struct.pack_into("=Q", a, 40, ctypes.addressof(link_ids))
        try:
            bpf(BPF_PROG_QUERY, a, detail=f"ifindex {ifindex}, attach_type {attach_type}")
        except BpfError as e:
            if e.errno == _errno.ENOSPC:
                continue
            raise
        (count,) = struct.unpack_from("=I", a, 24)
        return [(prog_ids[i], link_ids[i]) for i in range(min(count, cap))]
    raise BpfError(_errno.ENOSPC, "BPF_PROG_QUERY", f"ifindex {ifindex}: chain kept changing")


# --- test run -------------------------------------------------------------------------------------------
class TestRunResult(NamedTuple):
    retval: int  # the program's return value, sign-extended (TC_ACT_UNSPEC comes back as -1)
    duration_ns: int  # average run time per repetition, nanoseconds
    data_out: bytes  # packet after the run (b"" unless data_out_size > 0)
    ctx_out: bytes | None  # context after the run (None unless ctx was given)

    __test__ = False  # not a pytest class


_CTX_OUT_MIN = 1024


def prog_test_run(
    prog_fd: int,
    data: bytes,
    repeat: int = 1,
    ctx: bytes | None = None,
    data_out_size: int = 0,
) -> TestRunResult:
    """Run a program on a synthetic packet in the kernel (BPF_PROG_TEST_RUN, kernel >= 4.12; ctx >= 5.2).

    For SCHED_CLS the packet must be at least an Ethernet header (14 bytes); the kernel builds an skb on the
    caller's netns loopback device. The program runs ``repeat`` times (0 is treated as 1 by the kernel) and
    its side effects (map updates) happen every time. ``ctx`` is an optional ``struct __sk_buff`` prefix
    (fields the kernel does not accept as input must be zero); ``ctx_out`` is then the kernel's whole
    context after the run (192 bytes for ``__sk_buff`` on 6.x), not just the prefix.

    attr (``test``): prog_fd u32 @0, retval u32 @4 (out), data_size_in @8, data_size_out @12 (in: buffer
    size, out: packet size), data_in ptr @16, data_out ptr @24, repeat u32 @32, duration u32 @36 (out, ns
    per run), ctx_size_in @40, ctx_size_out @44, ctx_in ptr @48, ctx_out ptr @56, flags @64, cpu @68,
    batch_size @72 (76 bytes; we pass 80).
    """
    a = _attr(80)
    din = ctypes.create_string_buffer(bytes(data), len(data))
    dout = ctypes.create_string_buffer(data_out_size) if data_out_size > 0 else None
    cin = ctypes.create_string_buffer(bytes(ctx), len(ctx)) if ctx else None
    # the kernel copies out its whole context (sizeof(struct __sk_buff) = 192 on 6.x) and fails with ENOSPC
    # if ctx_size_out is smaller, whatever ctx_size_in was: give it room, return what it wrote
    cout_size = max(len(ctx), _CTX_OUT_MIN) if ctx else 0
    cout = ctypes.create_string_buffer(cout_size) if ctx else None
    struct.pack_into("=I", a, 0, prog_fd)
    struct.pack_into("=II", a, 8, len(data), data_out_size if dout is not None else 0)
    struct.pack_into("=QQ", a, 16, _ptr(din), _ptr(dout))
    struct.pack_into("=I", a, 32, repeat)
    if ctx:
        struct.pack_into("=II", a, 40, len(ctx), cout_size)
        struct.pack_into("=QQ", a, 48, _ptr(cin), _ptr(cout))
    bpf(BPF_PROG_TEST_RUN, a, detail=f"prog fd {prog_fd}")
    retval, _, size_out = struct.unpack_from("=iII", a, 4)
    (duration,) = struct.unpack_from("=I", a, 36)
    data_out = dout.raw[: min(size_out, data_out_size)] if dout is not None else b""
    ctx_out = None
    if ctx:
        (csize,) = struct.unpack_from("=I", a, 44)
        ctx_out = cout.raw[: min(csize, cout_size)]
    return TestRunResult(retval, duration, data_out, ctx_out)


# --- object info / ids ----------------------------------------------------------------------------------
def _get_info(fd: int, size: int) -> ctypes.Array:
    """BPF_OBJ_GET_INFO_BY_FD into a zeroed buffer; attr: bpf_fd u32 @0, info_len u32 @4, info ptr @8."""
    info = ctypes.create_string_buffer(size)
    a = _attr(16)
    struct.pack_into("=II", a, 0, fd, size)
    struct.pack_into("=Q", a, 8, ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, a, detail=f"fd {fd}")
    return info


class ProgInfo(NamedTuple):
    type: int  # enum bpf_prog_type; 3 = SCHED_CLS
    id: int
    tag: str  # 16 hex digits, as bpftool shows it
    name: str  # at most 15 characters (BPF_OBJ_NAME_LEN - 1); longer load names are truncated
    run_time_ns: int  # cumulative, only counted while kernel.bpf_stats_enabled=1
    run_cnt: int


# struct bpf_prog_info offsets (kernel 6.18 BTF): type u32 @0, id u32 @4, tag u8[8] @8, ..., name char[16]
# @64, ..., run_time_ns u64 @192, run_cnt u64 @200; sizeof = 232.
_PROG_INFO_SIZE = 232


def prog_get_info(prog_fd: int | None = None, *, prog_id: int | None = None) -> ProgInfo:
    """Minimal ``struct bpf_prog_info`` of a program given by fd, or by id (opened and closed here).

    Offsets: type u32 @0, id u32 @4, tag[8] @8, name[16] @64, run_time_ns u64 @192, run_cnt u64 @200
    (the last two need kernel >= 5.1; reported as 0 when the kernel's struct is shorter).
    """
    if (prog_fd is None) == (prog_id is None):
        raise TypeError("give exactly one of prog_fd or prog_id")
    if prog_id is not None:
        fd = prog_get_fd_by_id(prog_id)
        try:
            return prog_get_info(fd)
        finally:
            os.close(fd)
    buf = _get_info(prog_fd, _PROG_INFO_SIZE)
    typ, pid = struct.unpack_from("=II", buf, 0)
    tag = buf.raw[8:16].hex()
    name = buf.raw[64:80].split(b"\0", 1)[0].decode("utf-8", "replace")
    run_time_ns, run_cnt = struct.unpack_from("=QQ", buf, 192)
    return ProgInfo(typ, pid, tag, name, run_time_ns, run_cnt)


def prog_get_fd_by_id(prog_id: int) -> int:
    """Open a new fd on the program with this id (kernel >= 4.13). attr: prog_id u32 @0, next_id @4, open_flags @8."""
    a = _attr(12)
    struct.pack_into("=I", a, 0, prog_id)
    return bpf(BPF_PROG_GET_FD_BY_ID, a, detail=f"prog id {prog_id}")


# --- link-less attach/detach (used to clean up programs attached with BPF_PROG_ATTACH) --------------------
def _attach_attr(ifindex: int, prog_fd: int, attach_type: int, flags: int, relative_fd: int) -> ctypes.Array:
    """attr (attach/detach): target_ifindex u32 @0, attach_bpf_fd u32 @4, attach_type u32 @8,
    attach_flags u32 @12, replace_bpf_fd u32 @16, relative_fd u32 @20, expected_revision u64 @24."""
    a = _attr(32)
    struct.pack_into("=IIIIII", a, 0, ifindex, prog_fd, attach_type, flags, 0, relative_fd)
    return a


def prog_attach(prog_fd: int, ifindex: int, attach_type: int, flags: int = BPF_F_BEFORE, relative_fd: int = 0) -> None:
    """Attach without a link (TCX: kernel >= 6.6). The attachment outlives the process: prefer links."""
    bpf(BPF_PROG_ATTACH, _attach_attr(ifindex, prog_fd, attach_type, flags, relative_fd), detail=f"ifindex {ifindex}")


def prog_detach(prog_fd: int, ifindex: int, attach_type: int) -> None:
    """Detach a program that was attached without a link (BPF_PROG_DETACH)."""
    bpf(BPF_PROG_DETACH, _attach_attr(ifindex, prog_fd, attach_type, 0, 0), detail=f"ifindex {ifindex}")


# --- loading (tiny programs only: probes and test fixtures; real programs come from bcc) -----------------
def prog_load(prog_type: int, insns: bytes, name: str = "", license: str = "GPL", expected_attach_type: int = 0) -> int:
    """BPF_PROG_LOAD of raw instructions; returns the program fd.

    attr: prog_type u32 @0, insn_cnt u32 @4, insns ptr @8, license ptr @16, log_level @24, log_size @28,
    log_buf ptr @32, kern_version @40, prog_flags @44, prog_name[16] @48, prog_ifindex @64,
    expected_attach_type @68 (72 bytes).
    """
    if len(insns) % 8:
        raise ValueError("instructions must be a multiple of 8 bytes")
    ins = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode() + b"\0")
    a = _attr(72)
    struct.pack_into("=II", a, 0, prog_type, len(insns) // 8)
    struct.pack_into("=QQ", a, 8, ctypes.addressof(ins), ctypes.addressof(lic))
    nm = name.encode()[: BPF_OBJ_NAME_LEN - 1]
    a[48 : 48 + len(nm)] = nm
    struct.pack_into("=I", a, 68, expected_attach_type)
    return bpf(BPF_PROG_LOAD, a, detail=f"prog {name or '?'}")


def load_constant_prog(retval: int, name: str = "", prog_type: int = BPF_PROG_TYPE_SCHED_CLS) -> int:
    """Load ``r0 = retval; exit`` (2 instructions), e.g. a TC program that always returns TC_ACT_SHOT."""
    mov_r0_imm = struct.pack("=BBhi", 0xB7, 0, 0, retval)  # BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    exit_insn = struct.pack("=BBhi", 0x95, 0, 0, 0)  # BPF_JMP | BPF_EXIT
    return prog_load(prog_type, mov_r0_imm + exit_insn, name)


# --- pinning --------------------------------------------------------------------------------------------
def obj_pin(fd: int, path: str) -> None:
    """Pin a prog/map/link fd at a path in a bpffs mount (kernel >= 4.4; links >= 5.7).
    attr: pathname ptr @0, bpf_fd u32 @8, file_flags u32 @12, path_fd s32 @16."""
    p = ctypes.create_string_buffer(os.fsencode(path) + b"\0")
    a = _attr(20)
    struct.pack_into("=QI", a, 0, ctypes.addressof(p), fd)
    bpf(BPF_OBJ_PIN, a, detail=path)


def obj_get(path: str, file_flags: int = 0) -> int:
    """Open a pinned object; returns a new fd. attr: pathname ptr @0, bpf_fd @8 (0), file_flags u32 @12."""
    p = ctypes.create_string_buffer(os.fsencode(path) + b"\0")
    a = _attr(20)
    struct.pack_into("=QII", a, 0, ctypes.addressof(p), 0, file_flags)
    return bpf(BPF_OBJ_GET, a, detail=path)


# --- feature probes -------------------------------------------------------------------------------------
def kernel_version(release: str | None = None) -> tuple[int, int, int]:
    """``(major, minor, patch)`` parsed from ``uname -r`` (``6.18.44-fc-v669`` -> ``(6, 18, 44)``)."""
    rel = release if release is not None else os.uname().release
    nums: list[int] = []
    for part in rel.split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit()) or "0"
        nums.append(int(digits))
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


@functools.lru_cache(maxsize=1)
def kernel_has_tcx() -> bool:
    """Whether the kernel supports TCX links (mainline 6.6+; some distributions backport it).

    The probe is behavioural, not version-based (version numbers lie both ways with backports): load a
    2-instruction SCHED_CLS program and ask for a TCX link on ifindex 0, which never exists. A TCX-capable
    kernel gets as far as the device lookup and answers ENODEV; a kernel without TCX rejects the unknown
    attach type with EINVAL before that. Nothing is ever attached. ``kernel_version() >= (6, 6)`` is only
    used to explain the answer in logs. Raises :class:`BpfError` (EPERM) when bpf() itself is not allowed
    (the caller cannot attach anything then anyway). The answer is cached.
    """
    prog_fd = load_constant_prog(TC_ACT_UNSPEC, "tcx_probe")
    try:
        try:
            link_fd = link_create_tcx(prog_fd, 0, BPF_TCX_INGRESS)
        except BpfError as e:
            if e.errno == _errno.ENODEV:
                return True
            if e.errno in (_errno.EPERM, _errno.EACCES):
                raise
            return False  # EINVAL / EOPNOTSUPP / ENOTSUPP(524): no TCX
        os.close(link_fd)  # cannot happen (ifindex 0), but never leak an attachment
        return True
    finally:
        os.close(prog_fd)
