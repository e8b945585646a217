"""Overhead of the TCP metrics (issue 14: connect latency and failed connections from packetparser's conntrack,
RTT from tcp:tcp_probe) on the data plane, in one run.

Two lab pods; the agent runs with packetparser (dataAggregationLevel high, pod level with an inventory and the
three adv_tcp_* metrics configured) with ``tcpMetrics`` **on** (defaults: connect and rtt), **off** (both false),
and each family alone (**connect**, **rtt**), in interleaved rounds (the order rotating every round) so that
machine noise hits every configuration alike. Per round and configuration:

* TCP throughput: iperf3 from pod 0 to pod 1 (``tcp:tcp_probe`` fires for every segment received);
* connection rate: a client in pod 0 opening and closing connections to a listener in pod 1 as fast as it can
  (every SYN takes the connection-attempt path: one ``tcp_attempts`` insert, a SYN-ACK one compare-and-swap).

Reported: the median over rounds per configuration and its ratio to off.

The shared 2-core machine moves single rounds by +-20 %, more than these features cost, so the run also measures
the packet path itself: packetparser's ``retina_from_ep`` through ``BPF_PROG_TEST_RUN`` (``repeat``, kernel ns
per run) on a data segment of an established connection, a SYN (a new attempt each time: a new ISN) and its
retransmission, with connection tracking on and off, interleaved. Run as root:
``.venv/bin/python bench/bench_tcpmetrics.py [--rounds N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from bench.bench_packetparser import iperf, wait_listening  # noqa: E402
from retina_exporter.datapath.syscall import prog_test_run  # noqa: E402
from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram  # noqa: E402
from retina_core.telemetry import LATENCY_BUCKETS_S  # noqa: E402
from retina_exporter.lab.agent_process import AgentProcess  # noqa: E402
from retina_exporter.lab.topology import Lab  # noqa: E402

CONNECT_PORT = 5302

_ACCEPT = r"""
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(1024)
while True:
    c, _ = ls.accept(); c.close()
"""

_CONNECT = r"""
import json, socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.connect((dst, port)); s.close(); n += 1   # linger 0: RST, no TIME_WAIT pile-up
print(json.dumps({"per_s": n / seconds}))
"""


def connect_rate(lab: Lab, seconds: float) -> float:
    server = lab.popen(1, [sys.executable, "-c", _ACCEPT, lab.pods[1].ipv4, str(CONNECT_PORT)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(lab, 1, CONNECT_PORT)
        res = lab.run(0, [sys.executable, "-c", _CONNECT, lab.pods[1].ipv4, str(CONNECT_PORT), str(seconds)],
                      capture_output=True, text=True)
        return json.loads(res.stdout.strip().splitlines()[-1])["per_s"]
    finally:
        server.kill()
        server.wait()


CONFIGS = {"off": (False, False), "connect": (True, False), "rtt": (False, True), "on": (True, True)}


def agent_config(inventory: str, connect: bool, rtt: bool) -> dict:
    return {
        "dataAggregationLevel": "high",
        "enablePodLevel": True,
        "enrichment": {"source": "inventory", "inventoryFile": inventory},
        "outputRingCapacity": 65535,
        "tcpMetrics": {"connect": connect, "rtt": rtt},
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "forward_count", "sourceLabels": ["podname"]},
            {"metricName": "tcp_connect_latency_seconds", "sourceLabels": ["podname"]},
            {"metricName": "tcp_failed_connections", "sourceLabels": ["podname"]},
            {"metricName": "tcp_rtt_seconds", "sourceLabels": ["podname"]},
        ]},
    }


def run(rounds: int, seconds: int) -> dict:
    results: dict[str, dict[str, list[float]]] = {c: {"tcp_bps": [], "conn_per_s": []} for c in CONFIGS}
    labels = list(CONFIGS)
    with Lab(pods=2) as lab, tempfile.TemporaryDirectory() as tmp:
        inventory = str(lab.write_inventory(Path(tmp) / "inventory.yaml"))
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                agent = AgentProcess(lab.node_ns, agent_config(inventory, *CONFIGS[label])).start()
                try:
                    results[label]["tcp_bps"].append(iperf(lab, False, seconds))
                    results[label]["conn_per_s"].append(connect_rate(lab, seconds))
                finally:
                    agent.close()
    return results


def packet_path(rounds: int, repeat: int = 200_000) -> dict:
    """Median ns per run of retina_from_ep (high aggregation) with connection tracking on and off."""
    prog = PacketParserProgram(LoadOptions(ct_map_size=65536, ring_buffer_bytes=1 << 20, aggregation_high=True,
                                           report_interval_ns=3600 * 10**9))
    fd = prog.prog_fd("retina_from_ep")

    def pkt(flags: str, seq: int, payload: bytes = b"") -> bytes:
        return bytes(Ether() / IP(src="10.9.0.1", dst="10.9.0.2") / TCP(sport=40000, dport=80, flags=flags, seq=seq)
                     / Raw(payload))

    data = pkt("PA", 1001, b"x" * 1000)
    out: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    bounds = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)
    try:
        for r in range(rounds):
            for label in (("on", "off") if r % 2 == 0 else ("off", "on")):
                prog.configure(LoadOptions(aggregation_high=True, report_interval_ns=3600 * 10**9,
                                           conn_enabled=label == "on", bounds_ns=bounds))
                prog.conntrack.clear()
                prog.bpf[b"tcp_attempts"].clear()
                prog_test_run(fd, pkt("S", 1000))  # the connection's entry
                res = out[label]
                res.setdefault("data_segment", []).append(prog_test_run(fd, data, repeat=repeat).duration_ns)
                res.setdefault("syn_retransmission", []).append(
                    prog_test_run(fd, pkt("S", 1000), repeat=repeat).duration_ns)
                # a new attempt per run: the SYN's ISN changes (one packet per run, no repeat)
                t = [prog_test_run(fd, pkt("S", 5000 + i)).duration_ns for i in range(2000)]
                res.setdefault("syn_new_attempt", []).append(statistics.median(t))
    finally:
        prog.close()
    return {label: {k: statistics.median(v) for k, v in r.items()} for label, r in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--packet-path-only", action="store_true")
    args = ap.parse_args()
    pp = packet_path(max(args.rounds, 4))
    print(json.dumps({"packet_path_ns": pp}, indent=1))
    for case in pp["off"]:
        print(f"packet path {case:20s}: on {pp['on'][case]:5.0f} ns, off {pp['off'][case]:5.0f} ns per run")
    if args.packet_path_only:
        return
    res = run(args.rounds, args.seconds)
    med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in res.items()}
    print(json.dumps({"rounds": res, "median": med}, indent=1))
    off = med["off"]
    for label, m in med.items():
        print(f"{label:8s} TCP {m['tcp_bps'] / 1e9:6.2f} Gbit/s ({m['tcp_bps'] / off['tcp_bps']:.3f}x off)   "
              f"connections {m['conn_per_s']:7.0f}/s ({m['conn_per_s'] / off['conn_per_s']:.3f}x off)")


if __name__ == "__main__":
    main()
