"""Compile and load ``bpf/packetforward.bpf.c`` with bcc, and read its per-CPU counters.

bcc compiles at run time against ``/lib/modules/$(uname -r)/build``; only uapi types are used. Compiling takes
about a second: load once per process (tests share one program per module).
"""

from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

from retina_exporter.datapath.compiler import BPF_DIR, check_kernel_headers
from retina_exporter.datapath.sysfs import missing_capabilities

SOURCE = BPF_DIR / "packetforward.bpf.c"

# Program names (at most 15 characters). They start with PROGRAM_PREFIX, which is how our own stale TC attachments
# are recognised after a crash -- and which must not start with packetparser's "retina_", whose stale clean-up
# removes every program whose name starts with that.
PROGRAM_PREFIX = "rpfwd_"
INGRESS_PROG = "rpfwd_ingress"
EGRESS_PROG = "rpfwd_egress"
MAP_NAME = "rpfwd_metrics"

INGRESS, EGRESS = "ingress", "egress"
SLOTS = {INGRESS: 0, EGRESS: 1}  # PF_DIR_INGRESS, PF_DIR_EGRESS in bpf/packetforward.h
PROGRAMS = {INGRESS: INGRESS_PROG, EGRESS: EGRESS_PROG}


class PfMetric(ct.Structure):
    """``struct pf_metric`` of bpf/packetforward.h: packets and bytes on one hook, one CPU."""

    _fields_ = [("count", ct.c_uint64), ("bytes", ct.c_uint64)]


class PacketForwardError(RuntimeError):
    """packetforward cannot load or attach; the message says why and how to fix it. Deliberately not a
    StartupError: the plugin manager isolates it and the other plugins keep running."""


class PacketForwardProgram:
    """The loaded BPF object: the two classifiers' fds and the per-CPU counter array.

    ``source`` is for tests (e.g. a program the verifier rejects)."""

    def __init__(self, source: str | os.PathLike = SOURCE) -> None:
        self.bpf = None
        check_kernel_headers(PacketForwardError)
        missing = missing_capabilities()
        if missing:
            raise PacketForwardError(
                f"packetforward needs {', '.join(missing)}: run the agent as root or grant the capabilities"
            )
        from bcc import BPF

        try:
            self.bpf = BPF(src_file=str(source).encode(), cflags=[f"-I{BPF_DIR}", "-Wno-unused-function"])
        except Exception as exc:  # bcc raises bare Exception; the compiler output went to stderr
            raise PacketForwardError(
                f"compiling {source} failed ({exc}); check the kernel headers ('make setup') and the compiler "
                "output above"
            ) from exc
        self.functions = {}
        try:
            for name in PROGRAMS.values():
                try:
                    self.functions[name] = self.bpf.load_func(name.encode(), BPF.SCHED_CLS)
                except Exception as exc:
                    raise PacketForwardError(
                        f"the kernel rejected BPF program {name} from {source}: {exc} (verifier log above)"
                    ) from exc
            self.metrics = self.bpf[MAP_NAME.encode()]
        except BaseException:
            self.close()
            raise

    def prog_fd(self, direction: str) -> int:
        return self.functions[PROGRAMS[direction]].fd

    def totals(self) -> dict[str, tuple[int, int]]:
        """``{"ingress": (packets, bytes), "egress": (packets, bytes)}`` summed over all CPUs, since load (or the
        last :meth:`reset`)."""
        out = {}
        for direction, slot in SLOTS.items():
            per_cpu = self.metrics[ct.c_int(slot)]
            out[direction] = (sum(int(v.count) for v in per_cpu), sum(int(v.bytes) for v in per_cpu))
        return out

    def reset(self) -> None:
        """Zero every counter (tests)."""
        for slot in SLOTS.values():
            self.metrics[ct.c_int(slot)] = self.metrics.Leaf()  # bcc: Leaf is the per-CPU array of struct values

    def close(self) -> None:
        """Release maps and programs (the kernel frees them once nothing else holds them)."""
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()
