"""Compiling the agent's C programs with bcc: where the sources are, and what the compiler needs.

The C sources (``*.bpf.c``, one layout header ``*.h`` per event, the shared ``common.h``) ship as package data in
``retina_exporter/bpf/`` so an installed agent (container image, wheel) finds them without the repository.
bcc compiles at run time against ``/lib/modules/$(uname -r)/build``; only uapi and stable types are used, so a
distribution's headers for another kernel version are fine; internal struct offsets come from BTF
(:mod:`retina_exporter.datapath.btf`) and are passed as ``-D`` defines.
"""

from __future__ import annotations

import os
from pathlib import Path

from retina_exporter.errors import StartupError

__all__ = ["BPF_DIR", "check_kernel_headers", "source_path"]

#: The directory of the C sources (package data).
BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"


def source_path(name: str) -> Path:
    """Absolute path of a C source in :data:`BPF_DIR`, e.g. ``source_path("packetparser.bpf.c")``."""
    return BPF_DIR / name


def check_kernel_headers(error: type[Exception] = StartupError) -> None:
    """Raise ``error`` with the fix when bcc cannot find kernel headers (``/lib/modules/$(uname -r)/build``)."""
    build = Path("/lib/modules") / os.uname().release / "build"
    if not (build / "include" / "generated").exists() and not Path("/sys/kernel/kheaders.tar.xz").exists():
        raise error(
            f"kernel headers not found at {build}: run 'make setup' (links the distribution's headers there) "
            "or install linux-headers-$(uname -r)"
        )
