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
