"""Support for the DNS lab tests (no tests here): a small authoritative DNS server and a DNS client, both plain
Python sockets plus this repository's encoder/parser, run inside lab namespaces as separate processes.

Server zone (UDP and TCP, IPv4 and IPv6, port 53):

* ``a.example.``     A 10.1.0.1, A 10.1.0.2 (TTL 60)
* ``aaaa.example.``  AAAA 2001:db8::1 (TTL 30)
* ``cname.example.`` CNAME a.example. (TTL 120) plus a.example.'s A records
* ``big.example.``   120 A records (about 2 KB: for TCP, where it spans segments)
* ``slow20.example.`` / ``slow200.example.``: A 10.1.0.20 / 10.1.0.200, answered after 20 ms / 200 ms
* ``silent.example.``: never answered
* anything else: NXDOMAIN. A payload that does not parse as a query gets no answer.

The client's plan may list names in ``silent``: their queries are sent without waiting for an answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER = r"""
import socket, struct, sys, threading, time
from retina_core.dns.encoder import RR, build_response
from retina_core.dns.parser import ParseError, parse

A = [RR("a.example", "A", 60, "10.1.0.1"), RR("a.example", "A", 60, "10.1.0.2")]
ZONE = {
    "a.example.": A,
    "aaaa.example.": [RR("aaaa.example", "AAAA", 30, "2001:db8::1")],
    "cname.example.": [RR("cname.example", "CNAME", 120, "a.example")] + A,
    "big.example.": [RR("big.example", "A", 60, f"10.2.{i // 250}.{i % 250}") for i in range(120)],
    "slow20.example.": [RR("slow20.example", "A", 60, "10.1.0.20")],
    "slow200.example.": [RR("slow200.example", "A", 60, "10.1.0.200")],
}
DELAY_S = {"slow20.example.": 0.02, "slow200.example.": 0.2}
SILENT = {"silent.example."}
TYPES = {"A": 1, "AAAA": 28, "CNAME": 5}

def answer(data):
    try:
        q = parse(data)
    except ParseError:
        return None
    if q.qr or not q.questions:
        return None
    name, qtype = q.questions[0].name, q.questions[0].qtype
    if name in SILENT:
        return None
    time.sleep(DELAY_S.get(name, 0))
    rrs = ZONE.get(name)
    if rrs is None:
        return build_response(data, rcode=3)
    return build_response(data, [r for r in rrs if TYPES[r.rtype] in (qtype, 5)])

def udp_loop(s):
    while True:
        data, peer = s.recvfrom(65535)
        out = answer(data)
        if out is not None:
            s.sendto(out, peer)

def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf

def tcp_conn(c):
    with c:
        while True:
            head = recv_exact(c, 2)
            if head is None:
                return
            data = recv_exact(c, struct.unpack("!H", head)[0])
            if data is None:
                return
            out = answer(data)
            if out is not None:
                c.sendall(struct.pack("!H", len(out)) + out)

def tcp_loop(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()

u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", 53))
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", 53))
t.listen(64)
threading.Thread(target=udp_loop, args=(u,), daemon=True).start()
threading.Thread(target=tcp_loop, args=(t,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
"""

CLIENT = r"""
import json, socket, struct, sys
from retina_core.dns.encoder import build_query
from retina_core.dns.parser import parse
from retina_core.dns.record import DnsRecord

plan = json.loads(sys.argv[1])
server = plan["server"]
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
out = {"sent": 0, "received": 0, "answers": []}

def record(data):
    r = DnsRecord.from_message(parse(data))
    out["answers"].append([r.query, list(r.qtypes), r.rcode, list(r.ips), r.num_answers])

def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf

if plan["proto"] == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(3)
    for i, (name, qtype) in enumerate(plan["queries"]):
        s.sendto(build_query(name, qtype, msg_id=1000 + i), (server, 53))
        out["sent"] += 1
        if name in plan.get("silent", ()):
            continue
        data, _ = s.recvfrom(65535)
        out["received"] += 1
        record(data)
elif plan["proto"] == "tcp":
    c = socket.create_connection((server, 53), timeout=5)
    msgs = [build_query(name, qtype, msg_id=2000 + i) for i, (name, qtype) in enumerate(plan["queries"])]
    framed = [struct.pack("!H", len(m)) + m for m in msgs]
    if plan.get("one_write"):
        c.sendall(b"".join(framed))  # several messages in one segment
    else:
        for f in framed:
            c.sendall(f)
    out["sent"] = len(msgs)
    for _ in msgs:
        n = struct.unpack("!H", recv_exact(c, 2))[0]
        record(recv_exact(c, n))
        out["received"] += 1
    c.close()
else:  # raw: datagrams that are not (valid) DNS queries; no answer expected
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for hexdata in plan["payloads"]:
        s.sendto(bytes.fromhex(hexdata), (server, 53))
        out["sent"] += 1
print(json.dumps(out), flush=True)
"""


class DnsServer:
    """The server above in namespace ``ns`` (a lab's pod, node or world namespace)."""

    def __init__(self, lab, ns) -> None:
        self.proc = lab.popen(ns, [sys.executable, "-u", "-c", SERVER], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # blocks until bound (or the process died)
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"DNS server did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def dns_client(lab, ns, plan: dict, timeout: float = 30) -> dict:
    """Run one client plan in namespace ``ns``; returns ``{"sent", "received", "answers"}``."""
    t0 = time.monotonic()
    p = lab.run(ns, [sys.executable, "-c", CLIENT, json.dumps(plan)], cwd=ROOT, timeout=timeout)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["seconds"] = time.monotonic() - t0
    return out
