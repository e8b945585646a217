"""Opening the network namespace a :class:`~retina_exporter.datapath.tc.TcAttacher` is bound to, with a
description of it for error messages.

Owns only the naming: :func:`open_described` opens the namespace through :func:`retina_core.netns.open_netns`
and returns a description ("network namespace 'x'", "the current network namespace (net:[INODE])", ...) that
the attacher puts in its errors; a missing namespace becomes an :class:`AttachError`. Entering the namespace
(``setns(2)``, per thread) is :func:`retina_core.netns.enter_netns`, used as is.

Kernel minimums: ``setns(2)`` with ``CLONE_NEWNET`` (kernel >= 3.0); ``/proc/thread-self`` (kernel >= 3.17)
for the calling thread's namespace.
"""

from __future__ import annotations

import errno as _errno
import os

from retina_core.netns import THREAD_NETNS, netns_path, open_netns

from .errors import AttachError

__all__ = ["open_described"]


def open_described(spec: str | int | None) -> tuple[int, str]:
    """Open a netns; returns (fd, description). None = the calling thread's namespace."""
    if spec is None:
        spec, desc = THREAD_NETNS, "the current network namespace"
    elif isinstance(spec, int):
        desc = f"network namespace fd {spec}"
    elif "/" in spec:
        desc = f"network namespace {spec}"
    else:
        desc = f"network namespace {spec!r}"
    try:
        fd = open_netns(spec)
    except FileNotFoundError:
        raise AttachError(f"{desc} not found ({netns_path(str(spec))}); list them with `ip netns list`",
                          _errno.ENOENT) from None
    if desc == "the current network namespace":
        desc += f" (net:[{os.fstat(fd).st_ino}])"
    return fd, desc
