"""Compiling the agent's C programs with bcc: where the sources are, and what the compiler needs.

The C sources (``*.bpf.c``, one layout header ``*.h`` per event, the shared ``common.h``) ship as package data in
``retina_exporter/bpf/`` so an installed agent (container image, wheel) finds them without the repository.
bcc compiles at run time against ``/lib/modules/$(uname -r)/build``; only uapi and stable types are used, so a
distribution's headers for another kernel version are fine; internal struct offsets come from BTF
(:mod:`retina_exporter.datapath.btf`) and are passed as ``-D`` defines.
"""

from __future__ import annotations

import ctypes as ct
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from retina_core.heap import release_free_heap
from retina_exporter.datapath.capabilities import LOAD_BPF, missing_capabilities
from retina_exporter.errors import StartupError

__all__ = [
    "BPF_DIR",
    "PAGE_SIZE",
    "BccProgram",
    "check_kernel_headers",
    "compile_program",
    "load_functions",
    "ring_pages",
    "source_path",
]

#: The directory of the C sources (package data).
BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"

#: BPF ring buffers are a power-of-two number of pages.
PAGE_SIZE = 4096

#: What to do about missing capabilities, in every plugin's message.
CAPABILITY_FIX = (
    "run the agent as root or grant the capabilities (securityContext.capabilities.add in the DaemonSet)"
)


def source_path(name: str) -> Path:
    """Absolute path of a C source in :data:`BPF_DIR`, e.g. ``source_path("packetparser.bpf.c")``."""
    return BPF_DIR / name


def check_kernel_headers(error: type[Exception] = StartupError) -> None:
    """Raise ``error`` with the fix when bcc cannot find kernel headers: ``/lib/modules/$(uname -r)/build``, the
    directory ``$BCC_KERNEL_SOURCE`` names (bcc reads it too; the container entrypoint sets it when /lib/modules is
    read-only), or the kernel's own ``/sys/kernel/kheaders.tar.xz``."""
    build = Path("/lib/modules") / os.uname().release / "build"
    candidates = [build] + ([Path(os.environ["BCC_KERNEL_SOURCE"])] if os.environ.get("BCC_KERNEL_SOURCE") else [])
    if not any((c / "include" / "generated").exists() for c in candidates) \
            and not Path("/sys/kernel/kheaders.tar.xz").exists():
        raise error(
            f"kernel headers not found at {build}: run 'make setup' (links the distribution's headers there) "
            "or install linux-headers-$(uname -r)"
        )


def ring_pages(nbytes: int, what: str, error: type[Exception] = StartupError) -> int:
    """Pages of a ring buffer of ``nbytes`` (``-DRINGBUF_PAGES``); ``error`` naming ``what`` unless ``nbytes`` is a
    power of two of at least one page."""
    if nbytes < PAGE_SIZE or nbytes & (nbytes - 1):
        raise error(f"{what} {nbytes} must be a power of two >= {PAGE_SIZE}")
    return nbytes // PAGE_SIZE


#: libbcc is not safe to call from two threads at once (two concurrent ``BPF()`` compiles crash the process with
#: SIGSEGV, measured with bcc 0.26 on this kernel): compiles are serialised. A compile frees most of what clang and
#: LLVM allocated when it returns (~50 MiB for the default plugin set): given back at once (``release_free_heap``).
_COMPILE_LOCK = threading.Lock()


def compile_program(
    plugin: str,
    source: str | os.PathLike,
    defines: Mapping[str, int | str] | None = None,
    error: type[Exception] = StartupError,
):
    """Compile ``source`` (a name in :data:`BPF_DIR`, or a path) with bcc for ``plugin``; returns the ``bcc.BPF``.

    The one compile path of every plugin: kernel headers present (:func:`check_kernel_headers`), capabilities
    (``error`` naming the plugin, what is missing and the fix), then bcc with ``-I BPF_DIR`` (``common.h`` and the
    layout headers), ``-D`` for each of ``defines`` (in their order) and ``-Wno-unused-function``. A compile error
    is ``error`` naming the source; bcc prints the compiler output on stderr. Compiles are serialised (libbcc is
    not thread-safe) and the compiler's freed heap is given back afterwards (:func:`release_free_heap`).
    """
    check_kernel_headers(error)
    missing = missing_capabilities(LOAD_BPF)
    if missing:
        raise error(f"{plugin} needs {', '.join(missing)}: {CAPABILITY_FIX}")
    from bcc import BPF  # imported late: importing bcc needs libbcc, and the checks above say what is missing first

    path = Path(source)
    if not path.is_absolute():
        path = BPF_DIR / path
    cflags = [f"-I{BPF_DIR}", *(f"-D{name}={value}" for name, value in (defines or {}).items()), "-Wno-unused-function"]
    with _COMPILE_LOCK:
        try:
            return BPF(src_file=str(path).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises a bare Exception; the compiler output went to stderr
            raise error(
                f"compiling {path} failed ({exc}); check the kernel headers ('make setup') and the compiler output "
                "above"
            ) from exc
        finally:
            release_free_heap()


def load_functions(
    bpf,
    names: Iterable[str],
    source: str | os.PathLike,
    prog_type: str = "SCHED_CLS",
    error: type[Exception] = StartupError,
) -> dict:
    """``{name: bcc function}`` for each of ``names`` of ``bpf`` (from :func:`compile_program`) loaded as
    ``prog_type`` (a ``bcc.BPF`` program type name: ``"SCHED_CLS"``, ``"TRACEPOINT"`` ...); ``error`` naming the
    program and ``source`` when the kernel rejects one (the verifier log is on stderr)."""
    kind = getattr(bpf, prog_type)
    out = {}
    for name in names:
        try:
            out[name] = bpf.load_func(name.encode(), kind)
        except Exception as exc:
            raise error(f"the kernel rejected BPF program {name} from {source}: {exc} (verifier log above)") from exc
    return out


class BccProgram:
    """Base of the plugins' loaded programs: owns ``bpf`` (the ``bcc.BPF``) and releases it in :meth:`close`.

    ``bpf`` is None until compiled and after :meth:`close`, so ``close`` is safe on a half-built object. Programs
    that attach themselves (tracepoints) override :meth:`detach`, which ``close`` calls first.
    """

    bpf = None
    #: The plugin's :class:`~retina_exporter.datapath.pins.PinStore` when its objects are pinned, else None.
    pins = None
    _ring_handler = None
    _ring_open = False

    def route_ring_buffer(self, map_name: str, handler) -> None:
        """Route the records of ring buffer ``map_name`` to ``handler(ctx, data, size)`` (None: discard). bcc
        opens a ring buffer only once per object, so a program shared by successive plugin instances (tests)
        switches handlers here."""
        self._ring_handler = handler
        if not self._ring_open:
            self.bpf[map_name.encode()].open_ring_buffer(self._ring_dispatch)
            self._ring_open = True

    def _ring_dispatch(self, ctx, data, size) -> int:
        handler = self._ring_handler
        return 0 if handler is None else handler(ctx, data, size)

    @staticmethod
    def sync_u32_set(table, wanted: set[int]) -> None:
        """Make a bcc hash map ``__u32 -> __u8`` (a set: interfaces, namespace inodes) hold exactly ``wanted``
        (value 1). Stale keys go first, so a full map still takes the new ones."""
        present = {int(k.value) for k in table.keys()}
        for key in present - wanted:
            try:
                del table[ct.c_uint32(key)]
            except KeyError:
                pass
        for key in wanted - present:
            table[ct.c_uint32(key)] = ct.c_uint8(1)

    def detach(self) -> None:
        """Undo the program's own attachments (none here: TC programs are attached by their plugin)."""

    def close(self) -> None:
        """Detach, then release maps and programs (the kernel frees them once nothing else holds them)."""
        self.detach()
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()
        if self.pins is not None:
            self.pins.close()
