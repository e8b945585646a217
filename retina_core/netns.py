"""Entering a network namespace with ``setns(2)`` — the one place the project does it.

A network namespace is a property of a *thread*: ``setns(fd, CLONE_NEWNET)`` moves only the calling thread, and
sockets created there stay bound to that namespace when other threads use them later. Two ways to use it:

* :func:`enter_netns` switches the calling thread for a ``with`` block and switches it back (a no-op when it is
  already there);
* :func:`run_in_netns` runs a function in a throw-away thread that enters the namespace and ends there, so the
  caller's namespace never changes (no restore that could fail).

A namespace is named by a path (``/run/netns/x``, ``/proc/<pid>/ns/net``), a bare name (``x`` -> ``/run/netns/x``)
or an open file descriptor. Needs ``CAP_SYS_ADMIN`` in the target's user namespace (root on the host).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["CLONE_NEWNET", "NETNS_RUN_DIR", "THREAD_NETNS", "enter_netns", "netns_path", "open_netns",
           "run_in_netns", "setns"]

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` bind-mounts named namespaces
THREAD_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd``; raises ``OSError`` naming the errno."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def netns_path(spec: str) -> str:
    """The nsfs path of a namespace name or path: ``"x"`` -> ``/run/netns/x``; a path is returned unchanged."""
    return spec if "/" in spec else f"{NETNS_RUN_DIR}/{spec}"


def open_netns(spec: str | int | os.PathLike) -> int:
    """A new O_RDONLY|O_CLOEXEC descriptor of a namespace (name, path or fd, which is duplicated); the caller
    closes it. Raises ``FileNotFoundError`` naming the path."""
    if isinstance(spec, int):
        return os.dup(spec)
    return os.open(netns_path(os.fspath(spec)), os.O_RDONLY | os.O_CLOEXEC)


def _ns_key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def enter_netns(spec: str | int | os.PathLike) -> Iterator[None]:
    """Run the block with the *calling thread* in a network namespace (name, path or fd), then switch back."""
    fd = open_netns(spec)
    try:
        if _ns_key(os.fstat(fd)) == _ns_key(os.stat(THREAD_NETNS)):
            yield
            return
        saved = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
            try:
                yield
            finally:
                setns(saved)
        finally:
            os.close(saved)
    finally:
        os.close(fd)


def run_in_netns(spec: str | int | os.PathLike, fn: Callable[..., T], *args: Any, timeout_s: float | None = None,
                 thread_name: str = "netns", **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a new thread that has entered the namespace; return its result or raise
    its exception. ``timeout_s``: raise ``TimeoutError`` if it has not finished by then (the thread is a daemon
    and is abandoned)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = open_netns(spec)
            try:
                setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc
        # The thread ends here, still in the namespace: nothing to restore.

    t = threading.Thread(target=target, name=thread_name, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"{thread_name}: no answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]
