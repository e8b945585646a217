"""Packets missed across an agent restart by SIGKILL, with and without ``bpfPinning``.

A lab, the agent with packetparser and packetforward, a paced UDP stream of 1000 packets from a pod to the world;
the agent is killed (SIGKILL) once it reported the stream's first packet and a new one is started while the stream
runs. Printed per mode: the restart time (kill -> ready), packetforward's egress counter after the restart against
the uplink's (kernel-held: exact with pins, only the packets after the restart without), and the per-record total
(old agent's last look + new agent's reports) against the packets the pod sent.

Run: ``.venv/bin/python bench/bench_restart.py``. Prints results; asserts nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retina_exporter.datapath.pins import remove_pins  # noqa: E402
from retina_exporter.datapath.sysfs import ensure_mount  # noqa: E402
from retina_exporter.lab import traffic  # noqa: E402
from retina_exporter.lab.agent_process import AgentProcess  # noqa: E402
from retina_exporter.lab.topology import Lab  # noqa: E402
from tests.support.restartlab import PORT, config, forward_counts, pod_packets, quiet_stats, wait_for  # noqa: E402

COUNT = 1000


def run(lab: Lab, root: str, pinning: bool) -> str:
    veth = lab.pods[0].host_ifname
    v0, u0 = quiet_stats(lab, veth), quiet_stats(lab, lab.uplink)
    cfg = config(lab, root, bpfPinning=pinning)
    old, new = AgentProcess(lab.node_ns, cfg), AgentProcess(lab.node_ns, cfg)
    stream = threading.Thread(target=traffic.udp_burst, args=(lab, lab.pods[0], "world"),
                              kwargs=dict(count=COUNT, payload_size=100, sport=PORT - 1, dport=PORT, interval=0.005))
    try:
        old.start()
        stream.start()
        wait_for("the stream's first packet", lambda: pod_packets(old, veth) > 0, True, old)
        last_look = pod_packets(old, veth)
        t0 = time.monotonic()
        old.stop(signal.SIGKILL)
        new.start()
        restart_s = time.monotonic() - t0
        stream.join()
        v1, u1 = quiet_stats(lab, veth), quiet_stats(lab, lab.uplink)
        sent, wire = v1["rx_packets"] - v0["rx_packets"], u1["tx_packets"] - u0["tx_packets"]
        time.sleep(3)  # > conntrackReportInterval and metricsInterval: the sweep and the counters caught up
        forwarded, reported = forward_counts(new)["egress"], pod_packets(new, veth)
    finally:
        old.close()
        new.close()
        for ifname in (lab.uplink, veth):
            subprocess.run(["tc", "-n", lab.node_ns, "qdisc", "del", "dev", ifname, "clsact"], capture_output=True)
    return (f"bpfPinning={str(pinning).lower():5}  restart {restart_s:.2f} s  packetforward egress {forwarded}/{wire} "
            f"(missed {wire - forwarded})  records {last_look}+{reported}={last_look + reported}/{sent} "
            f"(missed {sent - last_look - reported})")


def main() -> None:
    mnt = Path(tempfile.mkdtemp(prefix="bench-restart-")) / "bpffs"
    if not ensure_mount(str(mnt), "bpf"):
        sys.exit(f"cannot mount a bpffs at {mnt}")
    try:
        with Lab(pods=2) as lab:
            for pinning in (False, True):
                print(run(lab, str(mnt / "retina"), pinning), flush=True)
    finally:
        try:
            remove_pins(mnt / "retina")
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


if __name__ == "__main__":
    main()
