"""Compile and load ``bpf/packetforward.bpf.c`` with bcc, and read its per-CPU counters.

bcc compiles at run time against ``/lib/modules/$(uname -r)/build``; only uapi types are used. Compiling takes
about a second: load once per process (tests share one program per module).
"""

from __future__ import annotations

import ctypes as ct
import os

from retina_exporter.datapath.compiler import BPF_DIR, BccProgram, compile_program, load_functions
from retina_exporter.datapath.pins import open_pins
from retina_exporter.bpf import packetforward as layout

SOURCE = BPF_DIR / "packetforward.bpf.c"

# Program names (at most 15 characters). They start with PROGRAM_PREFIX, which is how our own stale TC attachments
# are recognised after a crash -- and which must not start with packetparser's "retina_", whose stale clean-up
# removes every program whose name starts with that.
PROGRAM_PREFIX = "rpfwd_"
INGRESS_PROG = "rpfwd_ingress"
EGRESS_PROG = "rpfwd_egress"
MAP_NAME = "rpfwd_metrics"

INGRESS, EGRESS = "ingress", "egress"
SLOTS = {INGRESS: layout.PF_DIR_INGRESS, EGRESS: layout.PF_DIR_EGRESS}
PROGRAMS = {INGRESS: INGRESS_PROG, EGRESS: EGRESS_PROG}
PfMetric = layout.PfMetric  # the mirror of struct pf_metric lives in layout.py; kept here for callers of loader


class PacketForwardError(RuntimeError):
    """packetforward cannot load or attach; the message says why and how to fix it. Deliberately not a
    StartupError: the plugin manager isolates it and the other plugins keep running."""


class PacketForwardProgram(BccProgram):
    """The loaded BPF object: the two classifiers' fds and the per-CPU counter array.

    ``source`` is for tests (e.g. a program the verifier rejects). ``pin_root``: keep the counters pinned under it
    (``bpfPinPath``), so they continue across restarts (:mod:`retina_exporter.datapath.pins`)."""

    def __init__(self, source: str | os.PathLike = SOURCE, pin_root: str | None = None) -> None:
        self.bpf = compile_program("packetforward", source, error=PacketForwardError)
        try:
            self.pins = open_pins(pin_root, "packetforward", source)  # after compiling: the shortest gap
            if self.pins is not None:
                self.pins.adopt_maps(self.bpf, (MAP_NAME,))
            self.functions = load_functions(self.bpf, PROGRAMS.values(), source, error=PacketForwardError)
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
