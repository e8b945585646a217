"""Cost of FlowRecord -> flow.Flow conversion (retina_core.convert), in µs per record.

Run: ``.venv/bin/python bench/bench_convert.py``. Prints results; asserts nothing about time.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retina_core.proto import generate as proto_gen  # noqa: E402

proto_gen.generate()

from retina_core.convert import to_json_dict, to_proto  # noqa: E402
from retina_core.record import (  # noqa: E402
    DIR_EGRESS,
    OBS_FROM_ENDPOINT,
    TCP_ACK,
    TCP_PSH,
    FlowRecord,
)

N = 20_000


class _Peer:
    namespace = "shop"
    pod_name = "cart-7d9f-abcde"
    labels = ("app=cart", "pod-template-hash=7d9f")
    workloads = (("Deployment", "cart"),)
    identity = 12345


def records() -> dict[str, FlowRecord]:
    a, b = socket.inet_aton("10.244.1.5"), socket.inet_aton("10.244.2.7")
    tcp = FlowRecord(
        time_ns=time.time_ns(), ip_version=4, src_ip=a, dst_ip=b, proto=6, src_port=8080, dst_port=51234,
        tcp_flags=TCP_PSH | TCP_ACK, obs_point=OBS_FROM_ENDPOINT, direction=DIR_EGRESS, is_reply=False,
        ifindex=17, ifname="veth1a2b", packets=120, bytes=150_000, packet_bytes=1500,
        flag_counts=(0, 1, 0, 40, 120, 0, 0, 0, 0, 1), report_reason=4, node_name="node-a",
    )
    udp = FlowRecord(
        time_ns=time.time_ns(), ip_version=6, src_ip=socket.inet_pton(socket.AF_INET6, "fd00::1"),
        dst_ip=socket.inet_pton(socket.AF_INET6, "fd00::53"), proto=17, src_port=40000, dst_port=53,
        packets=1, bytes=80, packet_bytes=80, node_name="node-a",
    )
    icmp = FlowRecord(time_ns=time.time_ns(), ip_version=4, src_ip=a, dst_ip=b, proto=1, icmp_type=8,
                      packets=1, bytes=98, packet_bytes=98)
    enriched = FlowRecord(**{k: getattr(tcp, k) for k in (
        "time_ns", "ip_version", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "tcp_flags", "obs_point",
        "direction", "is_reply", "ifindex", "ifname", "packets", "bytes", "packet_bytes", "flag_counts",
        "report_reason", "node_name")})
    enriched.source = _Peer()
    enriched.destination = _Peer()
    return {"tcp aggregated": tcp, "udp ipv6": udp, "icmpv4": icmp, "tcp + 2 endpoints": enriched}


def per_call_us(fn, arg, n: int = N) -> float:
    for _ in range(200):
        fn(arg)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    print(f"python {sys.version.split()[0]}, {N:,} calls each")
    for name, rec in records().items():
        f = to_proto(rec)
        print(
            f"{name:18s} to_proto {per_call_us(to_proto, rec):6.2f} µs | +SerializeToString "
            f"{per_call_us(lambda r: to_proto(r).SerializeToString(), rec):6.2f} µs | "
            f"to_json_dict {per_call_us(to_json_dict, f, N // 4):6.2f} µs | {len(f.SerializeToString())} B"
        )


if __name__ == "__main__":
    main()
