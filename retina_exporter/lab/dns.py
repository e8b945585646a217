"""A tiny authoritative DNS server and a query loop for the lab (``make run``), so DNS metrics and L7 flows have
something to show. Both are threads of this process whose sockets live in lab namespaces (created there with
setns); traffic never leaves the lab.

Zone: ``web.lab.`` A, ``api.lab.`` AAAA, ``slow.lab.`` A answered after 200 ms, ``silent.lab.`` never answered
(so DNS latency and unanswered queries have something to show), anything else NXDOMAIN.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time

from retina_core.dns.encoder import RR, build_query, build_response
from retina_core.dns.parser import ParseError, parse
from retina_exporter.lab.topology import Lab, in_netns

log = logging.getLogger(__name__)

ZONE = {
    "web.lab.": [RR("web.lab", "A", 60, "10.99.0.1")],
    "api.lab.": [RR("api.lab", "AAAA", 30, "fd00:99::1")],
    "slow.lab.": [RR("slow.lab", "A", 60, "10.99.0.2")],
}
DELAY_S = {"slow.lab.": 0.2}
SILENT = frozenset({"silent.lab."})
QUERIES = (("web.lab", "A"), ("api.lab", "AAAA"), ("missing.lab", "A"), ("slow.lab", "A"), ("silent.lab", "A"))


def _answer(data: bytes) -> bytes | None:
    try:
        q = parse(data)
    except ParseError:
        return None
    if q.qr or not q.questions or q.questions[0].name in SILENT:
        return None
    time.sleep(DELAY_S.get(q.questions[0].name, 0))
    rrs = ZONE.get(q.questions[0].name)
    return build_response(data, rcode=3) if rrs is None else build_response(data, rrs)


class LabDns:
    """Server in the lab's world namespace (UDP port 53, IPv4 and IPv6); one query from a random pod every
    ``interval_s`` seconds until :meth:`stop`."""

    def __init__(self, lab: Lab, interval_s: float = 0.5) -> None:
        self.lab = lab
        self.interval_s = interval_s
        self.queries = 0
        self.answers = 0
        self.silent = 0  # queries for names that are never answered (not waited for)
        self._stop = threading.Event()

        def bind():
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 53))
            s.settimeout(0.5)
            return s

        self._server = in_netns(lab.world_ns, bind)
        self._clients = {p.netns: in_netns(p.netns, socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
                         for p in lab.pods}
        for c in self._clients.values():
            c.settimeout(1.0)
        self._threads = [threading.Thread(target=self._serve, name="lab-dns-server", daemon=True),
                         threading.Thread(target=self._ask, name="lab-dns-client", daemon=True)]

    def start(self) -> "LabDns":
        for t in self._threads:
            t.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._server.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            out = _answer(data)
            if out is not None:
                self._server.sendto(out, peer)

    def _ask(self) -> None:
        rng = random.Random(53)
        msg_id = 0
        while not self._stop.wait(self.interval_s):
            pod = rng.choice(self.lab.pods)
            name, qtype = rng.choice(QUERIES)
            v6 = rng.random() < 0.3
            server = self.lab.world_ipv6 if v6 else "::ffff:" + self.lab.world_ipv4
            msg_id = (msg_id + 1) & 0xFFFF
            sock = self._clients[pod.netns]
            try:
                sock.sendto(build_query(name, qtype, msg_id=msg_id), (server, 53))
                self.queries += 1
                if name + "." in SILENT:
                    self.silent += 1
                    continue
                sock.recvfrom(4096)
                self.answers += 1
            except OSError as exc:
                log.debug("lab DNS query failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(3)
        for s in [self._server, *self._clients.values()]:
            s.close()
