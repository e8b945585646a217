"""Python mirror of ``bpf/packetforward.h`` (tests/test_bpf_layouts.py compares it with the compiled C)."""

from __future__ import annotations

import ctypes as ct

# Slots of the per-CPU counter array.
PF_DIR_INGRESS = 0
PF_DIR_EGRESS = 1
PF_DIR_COUNT = 2


class PfMetric(ct.Structure):
    """``struct pf_metric``: packets and bytes on one hook, one CPU."""

    _fields_ = [("count", ct.c_uint64), ("bytes", ct.c_uint64)]
