"""The pin store and the attacher's pinned links, in the kernel without bcc: a private network namespace with a
veth pair, 2-instruction programs, a private bpffs mount.

A released attacher leaves its pinned link attached; the next attacher adopts it and swaps the program
(``BPF_LINK_UPDATE``: same link id, one attachment); a link whose device went away while nobody held it loses its
pin at the next open; another stamp's directory is removed with its links detached; :func:`remove_pins` detaches
and removes everything of ours (nothing else); one agent at a time holds a plugin's pins (a lock, also against
``cleanup --pins``); a path outside bpffs, or a bpffs mount point itself, is an error naming ``bpfPinPath``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.pins import PinError, PinStore, layout_stamp, remove_pins
from retina_exporter.datapath.tc import TcAttacher
from retina_exporter.lab.topology import in_netns

pytestmark = pytest.mark.skipif(not bpfsys.kernel_has_tcx(), reason="TCX links need kernel >= 6.6")


@pytest.fixture
def netns():
    name = f"rxpin-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.fixture
def progs():
    fds = [bpfsys.load_constant_prog(bpfsys.TC_ACT_UNSPEC, f"rxpin_p{i}") for i in range(3)]
    yield fds
    for fd in fds:
        os.close(fd)


def chain(ns: str) -> list[tuple[int, int]]:
    return in_netns(ns, lambda: bpfsys.prog_query(socket.if_nametoindex("d0"), bpfsys.BPF_TCX_INGRESS))


def prog_id(fd: int) -> int:
    return bpfsys.prog_get_info(fd).id


def test_pinned_link_is_taken_over_and_cleaned_up(pin_root, netns, progs):
    root = Path(pin_root)
    store = PinStore(root, "plug", "s1").open()
    assert not store.reused
    with TcAttacher(prefix="rxpin_", netns=netns, pins=store) as att:
        first = att.attach("d0", "ingress", progs[0], "rxpin_p0")
    store.close()  # the agent is gone: attacher released, pin directory unlocked
    # the pinned link stays attached with the first program
    assert chain(netns) == [(prog_id(progs[0]), first.link_id)]

    store = PinStore(root, "plug", "s1").open()
    assert store.reused
    with TcAttacher(prefix="rxpin_", netns=netns, pins=store) as att:
        second = att.attach("d0", "ingress", progs[1], "rxpin_p1")
        assert chain(netns) == [(prog_id(progs[1]), first.link_id)]  # same link, new program, one attachment
        assert second.link_id == first.link_id
    store.close()

    # a new layout: the old directory goes, its link is detached, a new link is pinned
    store = PinStore(root, "plug", "s2").open()
    assert sorted(os.listdir(root / "plug")) == ["s2"] and chain(netns) == []
    with TcAttacher(prefix="rxpin_", netns=netns, pins=store) as att:
        third = att.attach("d0", "ingress", progs[2], "rxpin_p2")
    store.close()
    assert chain(netns) == [(prog_id(progs[2]), third.link_id)] and third.link_id != first.link_id
    assert os.listdir(store.dir / "links") == [f"{third.ifindex}-ingress"]

    # the device goes while no agent runs: the kernel detaches the link, the next open drops its pin
    subprocess.run(["ip", "-n", netns, "link", "del", "d0"], check=True)
    PinStore(root, "plug", "s2").open().close()
    assert os.listdir(store.dir / "links") == []
    assert remove_pins(root) == (0, 0)  # nothing pinned is left: only the directories go
    assert not root.exists()


def test_detach_unpins_and_remove_pins_detaches(pin_root, netns, progs):
    root = Path(pin_root)
    store = PinStore(root, "plug", "s1").open()
    att = TcAttacher(prefix="rxpin_", netns=netns, pins=store)
    try:
        a = att.attach("d0", "ingress", progs[0], "rxpin_p0")
        att.detach(a)  # an explicit detach (e.g. undoing a partial attach) also removes the pin
        assert chain(netns) == [] and os.listdir(store.dir / "links") == []
        att.attach("d0", "ingress", progs[0], "rxpin_p0")
        att.attach("d0", "egress", progs[1], "rxpin_p1")
    finally:
        att.close()
        store.close()
    assert len(chain(netns)) == 1
    (root / "foreign").mkdir()
    bpfsys.obj_pin(progs[2], str(root / "foreign" / "prog"))  # not ours: left alone
    assert remove_pins(root) == (2, 2)  # cleanup --pins: both links detached, both pins removed
    assert chain(netns) == [] and os.listdir(root) == ["foreign"] and os.listdir(root / "foreign") == ["prog"]
    os.unlink(root / "foreign" / "prog")


def test_one_agent_at_a_time(pin_root):
    held = PinStore(pin_root, "plug", "s1").open()
    with pytest.raises(PinError, match=r"bpfPinPath '.*': another agent holds the pins of plug .*another bpfPinPath"):
        PinStore(pin_root, "plug", "s2").open()
    assert os.listdir(os.path.join(pin_root, "plug")) == ["s1"]  # the refused one removed nothing
    with pytest.raises(PinError, match="another agent holds the pins of plug"):
        remove_pins(pin_root)  # cleanup --pins under a running agent
    PinStore(pin_root, "other", "s1").open().close()  # another plugin's pins are another lock
    held.close()
    PinStore(pin_root, "plug", "s2").open().close()


def test_pin_path_outside_bpffs_or_at_its_mount_point_names_the_key(tmp_path, pin_root):
    with pytest.raises(PinError, match=r"bpfPinPath '.*' is not on a bpffs mount"):
        PinStore(tmp_path / "root", "plug", "s1").open()
    mount_point = os.path.dirname(pin_root)  # shared with other software: never ours to clean
    with pytest.raises(PinError, match=r"bpfPinPath '.*' is a bpffs mount point.*e\.g\. .*/retina"):
        remove_pins(mount_point)


def test_layout_stamp_follows_source_headers_and_defines(tmp_path):
    (tmp_path / "x.bpf.c").write_text("int x;")
    (tmp_path / "x.h").write_text("struct a { int b; };")
    s1 = layout_stamp(tmp_path / "x.bpf.c", {"N": 1})
    assert s1 == layout_stamp(tmp_path / "x.bpf.c", {"N": 1}) and len(s1) == 16
    assert s1 != layout_stamp(tmp_path / "x.bpf.c", {"N": 2})
    (tmp_path / "x.h").write_text("struct a { long b; };")
    assert s1 != layout_stamp(tmp_path / "x.bpf.c", {"N": 1})
