"""tcprtt's per-socket state in the kernel: ``rtt_last`` gets an entry for a socket that tcp:tcp_probe sampled, and
loses it when the socket closes (``rtt_forget`` on sock:inet_sock_set_state), so the map holds live sockets only.

Real loopback TCP connections of this process; their sockets' cookies (``SO_COOKIE``, the value tcp_probe reads)
are the ground truth. The programs are attached host-wide, so other sockets come and go in the map meanwhile: only
these cookies are checked."""

from __future__ import annotations

import ctypes as ct
import socket
import time

import pytest

from retina_exporter.plugins.packetparser.rtt import TcpRttProgram

SO_COOKIE = 57  # include/uapi/asm-generic/socket.h (Linux >= 4.13)


@pytest.fixture(scope="module")
def rtt_program():
    prog = TcpRttProgram(ring_buffer_bytes=64 * 1024, map_size=4096)
    prog.configure(interval_ns=1_000_000, bounds_ns=(10**6,), emit_events=False, netns=None)
    prog.attach()
    try:
        yield prog
    finally:
        prog.detach()
        prog.close()


def cookie(s: socket.socket) -> int:
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def in_map(prog: TcpRttProgram, cookies: list[int]) -> list[bool]:
    table = prog.bpf[b"rtt_last"]
    out = []
    for c in cookies:
        try:
            table[ct.c_uint64(c)]
            out.append(True)
        except KeyError:
            out.append(False)
    return out


def connected_pair(family: int, host: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    ls = socket.socket(family)
    ls.bind((host, 0))
    ls.listen(1)
    client = socket.create_connection(ls.getsockname()[:2])
    server, _ = ls.accept()
    return ls, client, server


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                         ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("closer", ["client", "server"])
def test_a_closed_socket_leaves_rtt_last(rtt_program, family, host, closer):
    assert rtt_program.forgets_closed, "this kernel has BTF and sock:inet_sock_set_state: the close hook is built"
    ls, client, server = connected_pair(family, host)
    try:
        cookies = [cookie(client), cookie(server)]
        deadline = time.monotonic() + 10
        while in_map(rtt_program, cookies) != [True, True]:  # each side receives segments: tcp_probe samples it
            assert time.monotonic() < deadline, f"never sampled: {in_map(rtt_program, cookies)}"
            client.sendall(b"ping")
            assert server.recv(16) == b"ping"
            server.sendall(b"pong")
            assert client.recv(16) == b"pong"
        first, second = (client, server) if closer == "client" else (server, client)
        first.close()
        assert second.recv(16) == b""  # the FIN arrived
        second.close()
        deadline = time.monotonic() + 10
        while any(in_map(rtt_program, cookies)):
            assert time.monotonic() < deadline, f"still in rtt_last after close: {in_map(rtt_program, cookies)}"
            time.sleep(0.01)
    finally:
        for s in (ls, client, server):
            s.close()
