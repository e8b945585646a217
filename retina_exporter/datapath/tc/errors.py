"""The error the TC attachment layer raises, and how it tells a permission problem apart.

Owns :class:`AttachError` (a message that says what failed and how to fix it, plus the errno when there is
one), the capability hint for ``EPERM``/``EACCES`` and :func:`err_code`, which reads the errno out of both a
bpf() :class:`~retina_exporter.datapath.syscall.BpfError` (an ``OSError``) and a pyroute2 ``NetlinkError``.

Kernel minimums: none of its own. The hint names ``CAP_BPF`` (kernel >= 5.8) and ``CAP_NET_ADMIN``, and
``CAP_SYS_ADMIN`` for kernels before 5.8.
"""

from __future__ import annotations

__all__ = ["AttachError", "PERM_HINT", "err_code"]

PERM_HINT = (
    "permission denied: attaching TC programs needs CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels "
    "before 5.8); run the agent as root or grant those capabilities"
)


class AttachError(Exception):
    """An attachment could not be made or undone; the message says what and how to fix it."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def err_code(e: BaseException) -> int | None:
    """The errno of a pyroute2 ``NetlinkError`` (its ``code``) or of an ``OSError``; None otherwise."""
    code = getattr(e, "code", None)  # pyroute2 NetlinkError
    if code is None and isinstance(e, OSError):
        code = e.errno
    return code
