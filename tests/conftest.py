"""Shared fixtures. Everything that compiles BPF does so once per session; everything that creates kernel
objects removes them in a finalizer, also on failure."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite needs root (BPF, network namespaces): run 'make test' as root")


@pytest.fixture(scope="session")
def pp_program_low():
    """packetparser compiled once, configured for dataAggregationLevel=low. Tests must not attach it."""
    from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram

    prog = PacketParserProgram(LoadOptions(ct_map_size=4096, ring_buffer_bytes=1 << 20))
    yield prog
    prog.close()


@pytest.fixture
def pin_root(tmp_path):
    """``<tmp>/bpffs/retina``: a pin directory on a private bpffs mount (agents of other tests never see it). What is
    pinned under it is detached and removed afterwards (:func:`remove_pins`), then the mount goes, also on failure."""
    import subprocess

    from retina_exporter.datapath.pins import remove_pins
    from retina_exporter.datapath.sysfs import ensure_mount

    mnt = tmp_path / "bpffs"
    if not ensure_mount(str(mnt), "bpf"):
        raise OSError(f"cannot mount a bpffs at {mnt}")
    try:
        yield str(mnt / "retina")
    finally:
        try:
            remove_pins(mnt / "retina")
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
