"""Soak: the real agent with every plugin in a lab for ``--minutes`` (default 20) of steady traffic, a Hubble
follower (``retina-exporter observe --follow`` in another process) and an OTLP push to a local receiver; every
``--interval`` seconds (default 30) it samples the agent process's

* ``rss_mib``: resident memory (``VmRSS``, MiB),
* ``fds``: open file descriptors (``/proc/<pid>/fd``, the least of 5 reads 50 ms apart),
* ``threads``: ``Threads`` of ``/proc/<pid>/status``,
* ``map_entries``: entries of the agent's hash maps (conntrack, DNS, ... found through ``/proc/<pid>/fdinfo``,
  counted with ``bpftool map dump``; arrays and ring buffers have a fixed size and are left out),
* ``series``: sample lines of ``/metrics``,

prints every sample, then the least-squares slope of each quantity per minute over the samples after the
warm-up (the first 20 % of the run, ``--warmup``), and exits 1 when a slope exceeds its threshold:

=============  ===================  ==============================================================================
quantity       threshold (/minute)  why
=============  ===================  ==============================================================================
rss_mib        0.5                  10 MiB over 20 minutes would be a leak; allocator noise is well below
fds            0.1                  the agent opens no fd per flow: any steady growth is a leak
threads        0.1                  likewise
map_entries    2 % of the mean      conntrack entries come and go with the traffic (lifetimes 30-360 s)
series         0.5                  the traffic's pods are fixed: the series set stops growing after warm-up
=============  ===================  ==============================================================================

Not part of ``make test`` (minutes): ``make soak`` (``SOAK_ARGS="--minutes 3"`` for a short run). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retina_exporter.lab import traffic  # noqa: E402
from retina_exporter.lab.agent_process import AgentProcess  # noqa: E402
from retina_exporter.lab.topology import Lab, in_netns  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402

ALL_PLUGINS = ["packetparser", "dropreason", "packetforward", "linuxutil", "dns", "tcpretrans"]
HASH_MAP_TYPES = {1, 5, 9, 10}  # BPF_MAP_TYPE_HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH
QUANTITIES = ("rss_mib", "fds", "threads", "map_entries", "series")
THRESHOLDS = {"rss_mib": 0.5, "fds": 0.1, "threads": 0.1, "series": 0.5}  # per minute
MAP_ENTRIES_RELATIVE = 0.02  # per minute, of the mean after warm-up


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        out[key] = val.strip()
    return out


def hash_maps(pid: int) -> dict[int, str]:
    """``{map id: name}`` of the hash maps the process holds an fd of (``map_type``/``map_id`` of
    ``/proc/<pid>/fdinfo``; names from ``bpftool map show``)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                        if ":" in line)
        except OSError:
            continue
        if "map_id" in info and int(info.get("map_type", "0")) in HASH_MAP_TYPES:
            ids.add(int(info["map_id"]))
    out = {}
    for map_id in sorted(ids):
        show = subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True, text=True)
        out[map_id] = json.loads(show.stdout).get("name", "?") if show.returncode == 0 else "?"
    return out


def map_entries(maps: dict[int, str]) -> dict[str, int]:
    """Entries per map name (``bpftool map dump``)."""
    out: dict[str, int] = {}
    for map_id, name in maps.items():
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)], capture_output=True, text=True)
        if dump.returncode == 0:
            out[name] = out.get(name, 0) + len(json.loads(dump.stdout or "[]"))
    return out


def series_by_metric(body: str) -> dict[str, int]:
    """Sample lines of a ``/metrics`` body per metric name."""
    out: dict[str, int] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0) + 1
    return out


def steady_fds(pid: int, reads: int = 5, gap_s: float = 0.05) -> int:
    """Open descriptors, the least of a few reads ``gap_s`` apart: a connection that happens to be open for a
    moment (an OTLP export, a Hubble or HTTP client) is not a leak."""
    least = len(os.listdir(f"/proc/{pid}/fd"))
    for _ in range(reads - 1):
        time.sleep(gap_s)
        least = min(least, len(os.listdir(f"/proc/{pid}/fd")))
    return least


def sample(agent: AgentProcess, maps: dict[int, str]) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
    """The sampled quantities, the entries per map and the series per metric."""
    pid = agent.proc.pid
    st = proc_status(pid)
    status, body = agent.get("/metrics", timeout=30)
    per_metric = series_by_metric(body.decode()) if status == 200 else {}
    per_map = map_entries(maps)
    row = {"rss_mib": int(st["VmRSS"].split()[0]) / 1024, "fds": steady_fds(pid),
           "threads": int(st["Threads"]), "map_entries": sum(per_map.values()),
           "series": sum(per_metric.values()) if status == 200 else float("nan")}
    return row, per_map, per_metric


def changes(first: dict[str, int], last: dict[str, int]) -> str:
    diff = {k: last.get(k, 0) - first.get(k, 0) for k in sorted(set(first) | set(last))}
    return ", ".join(f"{k} {v:+d}" for k, v in diff.items() if v) or "none"


def slope_per_minute(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute."""
    n = len(ts)
    mt, my = sum(ts) / n, sum(ys) / n
    den = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / den if den else 0.0


class TrafficLoop(threading.Thread):
    """Steady traffic between the lab's pods and to the world: TCP transfers, UDP bursts, pings, UDP to a closed
    port (drops for dropreason), each round on new ports (new conntrack entries that expire)."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True, name="soak-traffic")
        self.lab, self.stop = lab, threading.Event()
        self.rounds = 0
        self.errors = 0

    def run(self) -> None:
        p0, p1 = self.lab.pods
        while not self.stop.is_set():
            try:
                traffic.tcp_transfer(self.lab, p0, p1, nbytes=200_000, port=traffic.next_port())
                traffic.udp_burst(self.lab, p1, p0, count=50, payload_size=200, dport=traffic.next_port())
                traffic.udp_burst(self.lab, p0, "world", count=20, payload_size=100, dport=traffic.next_port())
                traffic.ping(self.lab, p0, p1.ipv4, count=2)
                traffic.tcp_connect_refused(self.lab, p1, p0, port=traffic.next_port())
                self.rounds += 1
            except Exception as exc:  # a failed round is reported, the soak goes on
                self.errors += 1
                print(f"traffic round failed: {exc}", file=sys.stderr)
            self.stop.wait(1.0)


class Follower:
    """``retina-exporter observe --follow`` against the agent's Hubble socket; counts the flows it prints."""

    def __init__(self, sock: Path) -> None:
        self.flows = 0
        self.proc = subprocess.Popen([sys.executable, "-m", "retina_exporter.cli", "observe", "--server",
                                      f"unix://{sock}", "--follow", "-o", "json"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self) -> None:
        for _ in self.proc.stdout:
            self.flows += 1

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def agent_config(lab: Lab, sock: Path, otlp_endpoint: str) -> dict:
    return {
        "enabledPlugin": ALL_PLUGINS,
        "enablePodLevel": True,
        "conntrackReportInterval": "5s",
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": lab.node_name,
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "forward_count", "sourceLabels": ["podname"], "destinationLabels": ["podname"]},
            {"metricName": "forward_bytes", "sourceLabels": ["podname"]},
            {"metricName": "drop_count", "sourceLabels": ["podname"]},
            {"metricName": "dns_request_count", "sourceLabels": ["podname"]}]},
        "dropReason": {"scope": "node"},  # this lab's drops and retransmissions, not those of whatever else runs
        "tcpRetrans": {"scope": "node"},
        "hubble": {"enabled": True, "socketPath": str(sock)},
        "otlp": {"enabled": True, "protocol": "grpc", "interval": "10s", "insecure": True, "endpoint": otlp_endpoint},
    }


def report(ts: list[float], rows: list[dict[str, float]], warmup: float) -> bool:
    print(f"{'t_s':>7} " + " ".join(f"{q:>12}" for q in QUANTITIES))
    for t, row in zip(ts, rows):
        print(f"{t:7.0f} " + " ".join(f"{row[q]:12.2f}" for q in QUANTITIES))
    keep = [i for i, t in enumerate(ts) if t >= warmup]
    if len(keep) < 3:
        print(f"too few samples after the warm-up ({len(keep)}): run longer or sample more often")
        return False
    ok = True
    print(f"\nslopes per minute over {len(keep)} samples after the {warmup:.0f} s warm-up:")
    for q in QUANTITIES:
        ys = [rows[i][q] for i in keep]
        slope = slope_per_minute([ts[i] for i in keep], ys)
        limit = THRESHOLDS.get(q, MAP_ENTRIES_RELATIVE * sum(ys) / len(ys))
        flat = abs(slope) <= limit
        ok &= flat
        print(f"  {q:>12}: {slope:+10.4f}/min  (mean {sum(ys) / len(ys):10.2f}, limit ±{limit:.4f}) "
              f"{'flat' if flat else 'GROWING' if slope > 0 else 'SHRINKING'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the run (default 20)")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default 30)")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="fraction of the run left out of the slopes (default 0.2: conntrack entries level off after "
                         "their longest lifetime, 60 s for non-TCP, 360 s for established TCP)")
    ap.add_argument("--port", type=int, default=10190, help="the agent's HTTP port in the lab's node namespace")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0:
        ap.error("--minutes and --interval must be positive")
    if not 0 <= args.warmup < 1:
        ap.error("--warmup must be a fraction from 0 to below 1")

    tmp = Path(tempfile.mkdtemp(prefix="retina-soak-"))
    receiver = OtlpReceiver()
    with Lab(pods=2) as lab:
        lab.inventory_path = lab.write_inventory(tmp / "inventory.yaml")
        in_netns(lab.node_ns, receiver.start)
        agent = AgentProcess(lab.node_ns, agent_config(lab, tmp / "hubble.sock", receiver.endpoint("grpc")),
                             port=args.port)
        loop, follower = TrafficLoop(lab), None
        try:
            agent.start(timeout=180)
            follower = Follower(tmp / "hubble.sock")
            loop.start()
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            ts, rows, details = [], [], []
            maps = hash_maps(agent.proc.pid)
            next_at = t0
            while True:
                now = time.monotonic()
                if now < next_at:
                    time.sleep(next_at - now)
                if agent.proc.poll() is not None:
                    print(f"the agent exited ({agent.proc.returncode}):\n{agent.log()[-3000:]}")
                    return 1
                ts.append(time.monotonic() - t0)
                row, per_map, per_metric = sample(agent, maps)
                rows.append(row)
                details.append((per_map, per_metric))
                print(f"sample {len(rows)} at {ts[-1]:.0f} s: "
                      + ", ".join(f"{q}={rows[-1][q]:.1f}" for q in QUANTITIES), flush=True)
                next_at += args.interval
                if next_at > end + 1e-6:
                    break
            loop.stop.set()
            loop.join(60)
            print(f"\n{args.minutes:g} minutes, {len(rows)} samples every {args.interval:g} s; traffic rounds "
                  f"{loop.rounds} ({loop.errors} failed); Hubble follower {follower.flows} flows; OTLP exports "
                  f"received {receiver.count()}\n")
            warmup = args.warmup * args.minutes * 60
            ok = report(ts, rows, warmup)
            first = next((i for i, t in enumerate(ts) if t >= warmup), len(ts) - 1)
            print("\nfrom the first sample after the warm-up to the last:\n  map entries: "
                  f"{changes(details[first][0], details[-1][0])}\n"
                  f"  series: {changes(details[first][1], details[-1][1])}")
            ok &= follower.flows > 0 and receiver.count() > 0 and loop.rounds > 0
            return 0 if ok else 1
        finally:
            loop.stop.set()
            if follower is not None:
                follower.close()
            agent.close()
            receiver.stop()


if __name__ == "__main__":
    sys.exit(main())
