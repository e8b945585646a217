"""Mount what the agent needs when it is missing: ``ip netns exec`` gives a process a fresh /sys without tracefs
or bpffs, as a DaemonSet without host mounts would have."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"


def is_mounted(path: str, fstype: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == fstype for line in f)
    except OSError:
        return False


def ensure_mount(path: str, fstype: str) -> bool:
    """Mount ``fstype`` at ``path`` unless it is there. Returns True when it is mounted afterwards."""
    if is_mounted(path, fstype):
        return True
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        pass
    if _libc.mount(fstype.encode(), path.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        log.warning("cannot mount %s at %s: %s (mount it on the host, or give the agent CAP_SYS_ADMIN)",
                    fstype, path, os.strerror(err))
        return False
    log.info("mounted %s at %s", fstype, path)
    return True


def ensure_bpffs() -> bool:
    return ensure_mount(BPFFS, "bpf")


def ensure_tracefs() -> bool:
    return ensure_mount(TRACEFS, "tracefs")


CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(caps: int | None = None) -> list[str]:
    """Capabilities the agent lacks for loading BPF and attaching TC programs (empty when it has them)."""
    if caps is None:
        caps = effective_capabilities()
    missing = []
    if not caps & (1 << CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    if not caps & (1 << CAP_SYS_ADMIN) and not caps & (1 << CAP_BPF):
        missing.append("CAP_BPF (or CAP_SYS_ADMIN)")
    return missing
