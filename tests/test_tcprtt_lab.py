"""TCP round-trip time end to end: the real agent (packetparser, pod level, inventory) in a lab's node namespace,
a long-lived ping-pong connection between two pods, and ``ss -ti``'s ``rtt`` (the kernel's srtt of the same
socket) as ground truth.

There is no netem or fq on this kernel to add a known delay, so the test reads the client socket's srtt with
``ss`` first and starts the agent with histogram bounds at a quarter and four times that value: the median
(p50) bucket of the client pod's ``adv_tcp_rtt_seconds`` must be the middle one, which holds what ``ss`` reports
while the samples are taken. The per-socket rate limit is checked too: one socket yields at most one sample per
``rttSampleInterval``.

With a known added delay: a TUN forwarder of the test (``tests/support/delayer.py``) inside pod 1 holds every
packet to pod 0 for 20 ms; the median RTT sample of pod 0's socket, ``ss``'s srtt and the connection's one connect
latency sample must all land in the (10 ms, 30 ms] bucket.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retina_exporter.lab.agent_process import AgentProcess

from tests.test_metrics_lab import lab, scrape, total  # noqa: F401 - lab: the module fixture (2 pods, inventory)

PORT = 5711
INTERVAL_S = 0.1

_SERVER = r"""
import socket, sys
ls = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(1); print("ready", flush=True)
c, _ = ls.accept()
while True:
    d = c.recv(4096)
    if not d:
        break
    c.sendall(d)
"""

# A message every 5 ms and its echo: the socket keeps receiving, so tcp:tcp_probe keeps firing.
_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); print("ready", flush=True)
while True:
    s.sendall(b"x" * 100)
    n = 0
    while n < 100:
        n += len(s.recv(4096))
    time.sleep(0.005)
"""


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def ping_pong(lab, request):
    """The long-lived connection; its value: True for IPv6."""
    ipv6 = request.param
    p0, p1 = lab.pods
    procs = []
    try:
        for pod, script, args in ((p1, _SERVER, (p1.ip(ipv6), PORT)), (p0, _CLIENT, (p1.ip(ipv6), PORT))):
            proc = lab.popen(pod, [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        yield ipv6
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def ss_srtt(lab, ipv6: bool) -> float:
    """The client socket's srtt in seconds, from ``ss -ti`` in pod 0 (``rtt:<srtt ms>/<rttvar ms>``)."""
    p0, p1 = lab.pods
    dst = f"[{p1.ipv6}]:{PORT}" if ipv6 else f"{p1.ipv4}:{PORT}"
    out = lab.run(p0, ["ss", "-tin", "dst", dst]).stdout
    m = re.findall(r"\brtt:([0-9.]+)/", out)
    assert len(m) == 1, out
    return float(m[0]) / 1000


def median_ss(lab, ipv6: bool, n: int = 5) -> float:
    values = []
    for _ in range(n):
        values.append(ss_srtt(lab, ipv6))
        time.sleep(0.05)
    return statistics.median(values)


def p50_bucket(buckets: list[tuple[float, float]]) -> float:
    """The ``le`` of the bucket holding the median, from cumulative (le, count) pairs (+Inf last)."""
    count = buckets[-1][1]
    return next(le for le, c in buckets if c >= count / 2)


def rtt_agent(lab, buckets: list[float], metrics: tuple[str, ...]) -> AgentProcess:
    """The agent with pod-level ``metrics`` (by podname), a fast RTT sample interval and ``buckets``."""
    return AgentProcess(lab.node_ns, {
        "enablePodLevel": True,
        "dataAggregationLevel": "high",
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": "node",
        "tcpMetrics": {"rttSampleInterval": f"{int(INTERVAL_S * 1000)}ms", "buckets": buckets},
        "metricsConfiguration": {"contextOptions": [{"metricName": m, "sourceLabels": ["podname"]}
                                                    for m in metrics]},
    })


def test_rtt_median_bucket_holds_the_ss_srtt(lab, ping_pong):
    ipv6 = ping_pong
    before = median_ss(lab, ipv6)
    low, high = before / 4, before * 4
    agent = rtt_agent(lab, [low, high], ("tcp_rtt_seconds",))
    name = "networkobservability_adv_tcp_rtt_seconds"
    try:
        t0 = time.monotonic()  # the program is attached during start()
        agent.start()
        deadline = time.monotonic() + 30
        count = 0
        while count < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
            count = total(scrape(agent)[name + "_count"], podname="pod-0")
        m = scrape(agent)
        elapsed = time.monotonic() - t0
        during = median_ss(lab, ipv6)
        got = {k: total(m[name + suffix], podname="pod-0") for k, suffix in (("count", "_count"), ("sum", "_sum"))}
        buckets = sorted(((float(lbl["le"]), v) for lbl, v in m[name + "_bucket"] if lbl.get("podname") == "pod-0"))
    finally:
        agent.close()
    assert got["count"] >= 20
    # one socket in pod 0: at most one sample per interval since the agent started (+1 for the first)
    assert got["count"] <= elapsed / INTERVAL_S + 1
    assert [le for le, _ in buckets] == [pytest.approx(low), pytest.approx(high), float("inf")]
    assert low < during <= high, f"ss srtt moved from {before} to {during}: the bracket no longer holds it"
    assert p50_bucket(buckets) == pytest.approx(high), (buckets, before, during)
    assert got["sum"] > 0
    # the server pod's socket is sampled too (its own series: source = the socket's own address)
    assert total(m[name + "_count"], podname="pod-1") >= 1
    node = total(m["networkobservability_tcp_rtt_seconds_count"])
    assert node >= got["count"] + total(m[name + "_count"], podname="pod-1")


DELAY_MS = 20
DELAY_BUCKETS = [0.005, 0.010, 0.030, 0.1]  # the delay must land in (10 ms, 30 ms]
DELAYER = Path(__file__).resolve().parent / "support" / "delayer.py"


@pytest.fixture
def delayed_path(lab):
    """Pod 1 -> pod 0 (IPv4) through a TUN forwarder of the test inside pod 1 that holds every packet DELAY_MS
    (pod 0 -> pod 1 is direct): a known added delay, as this kernel has no netem. It sits before the node's
    observation points, in the answering direction, so the node sees it in the connect latency too (first SYN at
    pod 0's veth -> SYN-ACK back at pod 0's veth)."""
    p0, p1 = lab.pods
    proc = lab.popen(p1, [sys.executable, str(DELAYER), "dly0", p1.ifname, p1.mac, p0.mac, str(DELAY_MS)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        lab.run(p1, ["ip", "link", "set", "dly0", "up"])
        lab.run(p1, ["ip", "route", "add", f"{p0.ipv4}/32", "dev", "dly0", "src", p1.ipv4])
        yield
    finally:
        proc.kill()
        proc.wait()  # the TUN device, and its route, go with the process


def bucket_of(buckets: list[tuple[float, float]], low: float, high: float) -> float:
    """Samples in (low, high] from cumulative (le, count) pairs."""
    cum = dict(buckets)
    return cum[high] - cum[low]


def test_known_delay_lands_in_its_bucket(lab, delayed_path):
    p0, p1 = lab.pods
    agent = rtt_agent(lab, DELAY_BUCKETS, ("tcp_rtt_seconds", "tcp_connect_latency_seconds"))
    rtt, connect = "networkobservability_adv_tcp_rtt_seconds", "networkobservability_adv_tcp_connect_latency_seconds"
    procs = []
    try:
        agent.start()
        for pod, script in ((p1, _SERVER), (p0, _CLIENT)):  # connected after the agent started: one connect sample
            proc = lab.popen(pod, [sys.executable, "-c", script, p1.ipv4, str(PORT)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        deadline = time.monotonic() + 30
        m = scrape(agent)
        while total(m[rtt + "_count"], podname="pod-0") < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
            m = scrape(agent)
        ss = median_ss(lab, False)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        agent.close()

    def buckets(name: str, pod: str) -> list[tuple[float, float]]:
        return sorted((float(lbl["le"]), v) for lbl, v in m[name + "_bucket"] if lbl.get("podname") == pod)

    assert 0.010 < ss <= 0.030, f"ss reports srtt {ss} s: the delayer did not add {DELAY_MS} ms"
    client = buckets(rtt, "pod-0")
    assert client[-1][1] >= 10
    assert p50_bucket(client) == pytest.approx(0.030), client
    # the handshake's SYN-ACK took the delayed path: the one connect, of pod 0, lands in the same bucket
    lat = buckets(connect, "pod-0")
    assert lat[-1][1] == 1 and bucket_of(lat, 0.010, 0.030) == 1, lat
