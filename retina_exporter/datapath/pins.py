"""Pinned BPF objects in bpffs, so that a restarted agent takes over its attachments and in-kernel state.

Layout (``root`` is the ``bpfPinPath`` config key, default ``/sys/fs/bpf/retina``)::

    <root>/<plugin>/<stamp>/maps/<map name>           conntrack, ring buffer, counters ... (per plugin)
    <root>/<plugin>/<stamp>/links/<ifindex>-<direction>   one TCX link per hook

``stamp`` (:func:`layout_stamp`) is a hash of the program's C source, every header in its directory and the
compile-time defines that size its maps: a program whose map layout may have changed gets a new directory, and
:meth:`PinStore.open` removes every other stamp's directory of the plugin (detaching its links) before anything
is reused, so an upgrade never hands an old map to a new program. A regular file cannot live in bpffs, hence
the stamp is a directory name.

Maps: bcc creates a plugin's maps when it compiles, and writes their fds into the programs' instructions when it
loads them. :meth:`PinStore.adopt_maps` runs in between: a pinned map is opened (``BPF_OBJ_GET``) and
``dup2``'ed onto the fd number bcc created, so bcc's tables *and* the programs loaded afterwards use the pinned
map; a map not pinned yet is pinned (``BPF_OBJ_PIN``). A ring buffer keeps its consumer position in the map, so
the records the kernel wrote while no agent ran are read by the next one.

Links: :class:`~retina_exporter.datapath.tc.TcAttacher` pins each TCX link it creates and, on the next start,
opens the pin and swaps its program with ``BPF_LINK_UPDATE`` (no detach/attach gap, one attachment per hook).
A link survives its agent, even a SIGKILL, so observation continues in the kernel while no agent runs.

:func:`remove_pins` (``retina-exporter cleanup --pins``) detaches every pinned link and removes the pins.

One agent at a time: :meth:`PinStore.open` takes an exclusive ``flock`` on ``<root>/<plugin>`` (held until
:meth:`PinStore.close` or the process ends, SIGKILL included), so a second agent on the same ``bpfPinPath`` stops
with an error instead of sharing the ring buffer and the links.

Kernel minimums: pinning maps >= 4.4, links >= 5.7, TCX links and their update >= 6.6.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.syscall import BpfError
from retina_exporter.datapath.sysfs import BPFFS, ensure_bpffs
from retina_exporter.errors import StartupError

__all__ = ["PinError", "PinStore", "bpffs_mount_of", "drop_pins", "layout_stamp", "open_pins", "remove_pins"]

log = logging.getLogger(__name__)

MAPS = "maps"
LINKS = "links"


class PinError(StartupError):
    """The pin directory cannot be used; the message names ``bpfPinPath`` and the fix (the agent exits 2)."""


def layout_stamp(source: str | os.PathLike, defines: Mapping[str, int | str] | None = None) -> str:
    """16 hex digits of SHA-256 over ``source``, every ``*.h`` next to it (sorted) and ``defines`` (in order)."""
    src = Path(source)
    h = hashlib.sha256()
    for path in [src, *sorted(src.parent.glob("*.h"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name, value in (defines or {}).items():
        h.update(f"-D{name}={value}\0".encode())
    return h.hexdigest()[:16]


def bpffs_mount_of(path: str | os.PathLike, mounts: str = "/proc/self/mounts") -> str | None:
    """The bpffs mount point that holds ``path`` (the longest mount point above it is a bpffs), else None."""
    target = os.path.realpath(path)
    best, best_type = "", ""
    with open(mounts) as f:
        for line in f:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, best_type = point, fields[2]
    return best if best_type == "bpf" else None


def _ensure_on_bpffs(root: str) -> None:
    if bpffs_mount_of(root) is None and (root == BPFFS or root.startswith(BPFFS + "/")):
        ensure_bpffs()
    mount = bpffs_mount_of(root)
    if mount is None:
        raise PinError(
            f"bpfPinPath {root!r} is not on a bpffs mount: use a path under {BPFFS} (mounted by the agent when "
            "missing; in a pod, mount the host's /sys/fs/bpf) or mount one there with `mount -t bpf bpf DIR`"
        )
    if os.path.realpath(root) == mount:
        raise PinError(f"bpfPinPath {root!r} is a bpffs mount point, shared with other software: use a directory "
                       f"of its own below it, e.g. {os.path.join(root, 'retina')}")


def _link_pin_name(ifindex: int, direction: str) -> str:
    return f"{ifindex}-{direction}"


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != _errno.ENOTEMPTY:
            raise
        log.warning("left %s in place: it holds something that is not ours", path)


def _remove_stamp(path: Path) -> tuple[int, int]:
    """Detach the links pinned in one ``<plugin>/<stamp>`` directory, remove its pins (only our ``maps/`` and
    ``links/`` layout: nothing else is touched) and the directory; ``(links detached, pins removed)``."""
    links = pins = 0
    for sub in (LINKS, MAPS):
        d = path / sub
        if not d.is_dir():
            continue
        for entry in sorted(d.iterdir()):
            if sub == LINKS:
                try:
                    fd = bpfsys.obj_get(str(entry))
                except BpfError as e:
                    log.warning("cannot open pinned link %s: %s", entry, e)
                else:
                    try:
                        bpfsys.link_detach(fd)
                        links += 1
                    except BpfError as e:
                        if e.errno not in (_errno.ENOLINK, _errno.ENOENT, _errno.EINVAL):
                            raise
                    finally:
                        os.close(fd)
            entry.unlink()
            pins += 1
        _rmdir_if_empty(d)
    _rmdir_if_empty(path)
    return links, pins


def _lock_plugin_dir(root: Path, base: Path) -> int:
    """An fd holding the exclusive ``flock`` of a plugin's pin directory; :class:`PinError` when an agent has it."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PinError(f"bpfPinPath {str(root)!r}: another agent holds the pins of {base.name} ({base}); stop it "
                       "first, or give this agent another bpfPinPath") from None
    return fd


def remove_pins(root: str | os.PathLike, plugin: str | None = None) -> tuple[int, int]:
    """Detach the links pinned under ``root`` (one plugin's, or every plugin's) and remove the pins and our
    directories; ``(links detached, pins removed)``. A missing ``root`` is nothing to do."""
    root = Path(root)
    if not root.exists():
        return 0, 0
    _ensure_on_bpffs(str(root))
    links = pins = 0
    for plugin_dir in [root / plugin] if plugin else sorted(p for p in root.iterdir() if p.is_dir()):
        if not plugin_dir.is_dir():
            continue
        lock = _lock_plugin_dir(root, plugin_dir)  # not under a running agent
        try:
            for stamp_dir in sorted(p for p in plugin_dir.iterdir() if p.is_dir()):
                n_links, n_pins = _remove_stamp(stamp_dir)
                links += n_links
                pins += n_pins
            _rmdir_if_empty(plugin_dir)
        finally:
            os.close(lock)
    if not plugin:
        _rmdir_if_empty(root)
    return links, pins


def drop_pins(root: str | os.PathLike, plugin: str) -> None:
    """``bpfPinning`` off: remove what a run with it left for ``plugin`` under ``root`` (links detached), logged. A
    ``root`` without such pins is nothing to do; one that cannot be cleaned is a warning, not an error."""
    path = Path(root) / plugin
    if not path.is_dir():
        return
    try:
        links, pins = remove_pins(root, plugin)
    except (PinError, OSError) as e:
        log.warning("%s: bpfPinning is off, but the pins in %s stay: %s", plugin, path, e)
        return
    log.info("%s: bpfPinning is off: removed the pins an earlier run left in %s (%d links detached, %d pins)",
             plugin, path, links, pins)


def open_pins(root: str | os.PathLike | None, plugin: str, source: str | os.PathLike,
              defines: Mapping[str, int | str] | None = None) -> "PinStore | None":
    """The opened :class:`PinStore` of ``plugin`` for this program and its defines, or None without ``root``."""
    if root is None:
        return None
    return PinStore(root, plugin, layout_stamp(source, defines)).open()


class PinStore:
    """The pins of one plugin under ``<root>/<plugin>/<stamp>/`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, plugin: str, stamp: str) -> None:
        self.root = Path(root)
        self.plugin = plugin
        self.stamp = stamp
        self.dir = self.root / plugin / stamp
        self.reused = False  # the directory was there from an earlier run with the same stamp
        self._lock_fd = -1

    def open(self) -> "PinStore":
        """Lock the plugin's directory, remove its directories of other stamps and make sure ours exists."""
        _ensure_on_bpffs(str(self.root))
        base = self.root / self.plugin
        base.mkdir(parents=True, exist_ok=True)
        self._lock(base)
        for other in sorted(base.iterdir()):
            if other.is_dir() and other.name != self.stamp:
                links, pins = _remove_stamp(other)
                log.warning("%s: pinned objects of another program layout (%s) replaced: %d links detached, "
                            "%d pins removed", self.plugin, other.name, links, pins)
        self.reused = (self.dir / MAPS).is_dir()
        for sub in (MAPS, LINKS):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._drop_defunct_links()
        return self

    def _lock(self, base: Path) -> None:
        fd = _lock_plugin_dir(self.root, base)
        self.close()
        self._lock_fd = fd

    def close(self) -> None:
        """Let another agent take the pins over (they stay)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _drop_defunct_links(self) -> None:
        """Remove the pins of links whose device went away while no agent ran (the kernel detached them)."""
        for path in (self.dir / LINKS).iterdir():
            fd = bpfsys.obj_get(str(path))
            try:
                defunct = bpfsys.link_get_info(fd).ifindex == 0
            except BpfError:
                defunct = True
            finally:
                os.close(fd)
            if defunct:
                path.unlink(missing_ok=True)
                log.info("%s: removed the pin of link %s (its device is gone)", self.plugin, path.name)

    # --- maps ------------------------------------------------------------------------------------------------
    def adopt_maps(self, bpf, names: Iterable[str]) -> list[str]:
        """For each map ``name`` of the compiled, not yet loaded ``bpf``: use the pinned map (``dup2`` onto
        bcc's fd) or pin bcc's. Call after compiling and before loading any program. Returns the reused names."""
        reused = []
        for name in names:
            fd = bpf[name.encode()].map_fd
            path = str(self.dir / MAPS / name)
            if os.path.exists(path):
                pinned = bpfsys.obj_get(path)
                try:
                    os.dup2(pinned, fd, inheritable=False)
                finally:
                    os.close(pinned)
                reused.append(name)
            else:
                bpfsys.obj_pin(fd, path)
        if reused:
            log.info("%s: reusing pinned maps %s from %s", self.plugin, ", ".join(reused), self.dir / MAPS)
        return reused

    # --- links -----------------------------------------------------------------------------------------------
    def link_path(self, ifindex: int, direction: str) -> Path:
        return self.dir / LINKS / _link_pin_name(ifindex, direction)

    def open_link(self, ifindex: int, direction: str) -> int | None:
        """A new fd on the link pinned for this hook when it is still attached there, else None (a pin of a
        link whose device went away is removed)."""
        path = self.link_path(ifindex, direction)
        if not path.exists():
            return None
        fd = bpfsys.obj_get(str(path))
        try:
            alive = bpfsys.link_get_info(fd).ifindex == ifindex
        except BpfError:
            alive = False
        if alive:
            return fd
        os.close(fd)
        path.unlink(missing_ok=True)
        return None

    def pin_link(self, link_fd: int, ifindex: int, direction: str) -> None:
        path = self.link_path(ifindex, direction)
        path.unlink(missing_ok=True)  # a dead link's pin (its device went away and the ifindex came back)
        bpfsys.obj_pin(link_fd, str(path))

    def unpin_link(self, ifindex: int, direction: str) -> None:
        self.link_path(ifindex, direction).unlink(missing_ok=True)
