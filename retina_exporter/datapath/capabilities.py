"""The Linux capabilities the agent's plugins need, and which of them this process lacks.

Each plugin declares what it needs in ``Plugin.capabilities`` (docs/deploy.md has the table, found by running the
agent under ``capsh`` with one capability fewer at a time: tests/test_capabilities_lab.py):

* ``CAP_BPF``: create maps and load programs (kernel >= 5.8; ``CAP_SYS_ADMIN`` before, and still accepted);
* ``CAP_PERFMON``: tracing programs (tracepoints), and the verifier's checks for privileged programs that
  packetparser relies on (pointer arithmetic on map values; kernel >= 5.8; ``CAP_SYS_ADMIN`` also accepted);
* ``CAP_NET_ADMIN``: load ``SCHED_CLS`` programs and attach them to interfaces (TCX link or clsact + filter).

Capability numbers are those of ``linux/capability.h``; the effective set is read from ``/proc/self/status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: Capability name -> bit number (linux/capability.h).
CAPABILITY_BITS: dict[str, int] = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}

#: What the kernel's bpf_capable() and perfmon_capable() accept besides the capability itself.
_ALSO_GRANTED_BY_SYS_ADMIN = frozenset({"CAP_BPF", "CAP_PERFMON"})

#: What every BPF program needs (maps are created when a program is compiled).
LOAD_BPF: tuple[str, ...] = ("CAP_BPF",)


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """This process's effective capability set (``CapEff``, a bit mask)."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_capability(name: str, caps: int) -> bool:
    """True when ``caps`` (a mask) grants ``name``, directly or through ``CAP_SYS_ADMIN`` where the kernel allows."""
    if caps & (1 << CAPABILITY_BITS[name]):
        return True
    return name in _ALSO_GRANTED_BY_SYS_ADMIN and bool(caps & (1 << CAPABILITY_BITS["CAP_SYS_ADMIN"]))


def missing_capabilities(required: Iterable[str] = LOAD_BPF, caps: int | None = None) -> list[str]:
    """Those of ``required`` (names such as ``"CAP_BPF"``) that ``caps`` (default: this process's effective set)
    lacks, in ``required``'s order, each as the text of a message (``"CAP_BPF (or CAP_SYS_ADMIN)"``)."""
    if caps is None:
        caps = effective_capabilities()
    missing = []
    for name in dict.fromkeys(required):
        if not has_capability(name, caps):
            missing.append(f"{name} (or CAP_SYS_ADMIN)" if name in _ALSO_GRANTED_BY_SYS_ADMIN else name)
    return missing


def missing_for(needs: Mapping[str, Iterable[str]], caps: int | None = None) -> str:
    """What ``caps`` lacks for ``needs`` (user, e.g. a plugin name -> capability names), as message text:
    ``"CAP_PERFMON (or CAP_SYS_ADMIN) for packetparser, dropreason; CAP_NET_ADMIN for dns"``; empty when nothing
    is missing."""
    if caps is None:
        caps = effective_capabilities()
    users: dict[str, list[str]] = {}
    for user, required in needs.items():
        for name in missing_capabilities(required, caps):
            users.setdefault(name, []).append(user)
    return "; ".join(f"{name} for {', '.join(who)}" for name, who in users.items())
