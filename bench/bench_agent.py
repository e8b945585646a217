"""The real agent process (``retina-exporter agent`` in a lab's node namespace): start to ready, /metrics over HTTP
at 80k series, the OTLP export of the same series, and the process's memory under repeated scrapes.

* **Start to ready**: seconds from spawning the agent to ``/readyz`` answering 200, for each plugin alone and for
  the default plugin set, with the per-plugin init/start durations the agent reports on ``/debug/plugins``.
* **Series**: ``connections`` TCP connections among ``identities`` pods of an inventory (all on this node) are
  driven through the agent's own packetparser program on pod veth 0 (``BPF_PROG_TEST_RUN`` with that veth's
  ifindex, ``dataAggregationLevel: low``), one packet per direction, with the README's example labels (``ip,
  namespace, podname, workload, service, port, zone``) on ``forward_count`` and ``forward_bytes``, both sides.
* **Scrape**: ``/metrics`` over HTTP (median of ``scrapes``), ms per 10k series; the same-run baseline is the
  in-process render of the same number of series (``bench_metrics.populate``). OTLP: the exporter's conversion
  of the same families (``/debug/otlp`` is not involved; the agent's OTLP export runs in-process here).
* **Memory**: RSS and anonymous RSS (``/proc/<pid>/status`` ``VmRSS``/``RssAnon``) at ready, after the series
  exist, and after each scrape.

``code_root`` runs the agent from another checkout (e.g. ``/work/main``) for a same-run before/after.
Run: ``.venv/bin/python bench/bench_agent.py [--quick] [--baseline-root DIR]``. Prints results; asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retina_exporter.lab.agent_process import AgentProcess  # noqa: E402
from retina_exporter.lab.topology import Lab, in_netns  # noqa: E402

#: Retina's default plugin set (the agent's default ``enabledPlugin``).
DEFAULT_PLUGINS = ("dropreason", "packetforward", "linuxutil", "dns")
#: Every plugin this build implements.
ALL_PLUGINS = ("packetparser", "dropreason", "packetforward", "linuxutil", "dns", "tcpretrans")
#: The README's example context labels.
README_LABELS = ["ip", "namespace", "podname", "workload", "service", "port", "zone"]
#: Pod addresses of the synthetic identities (one /16, all on the lab's node).
POD_BASE = int(ipaddress.IPv4Address("10.77.0.0"))


def proc_memory(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``RssAnon``/``RssFile`` of ``pid`` in MiB (from ``/proc/<pid>/status``)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def agent_pid(agent: AgentProcess) -> int:
    """The agent's own pid (``ip netns exec`` execs the interpreter, so it is the Popen's pid)."""
    return agent.proc.pid


def _env_for(code_root: Path | None):
    """A context that makes AgentProcess start the agent from ``code_root`` (None: this checkout)."""

    class _Ctx:
        def __enter__(self):
            self.old = os.environ.get("PYTHONPATH")
            if code_root is not None:
                os.environ["PYTHONPATH"] = str(code_root)
            return self

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = self.old

    return _Ctx()


def start_agent(lab: Lab, config: dict, code_root: Path | None = None, port: int = 0,
                timeout: float = 180.0) -> tuple[AgentProcess, float]:
    """Start the agent; returns it and its seconds to ready. ``code_root``: run that checkout's agent."""
    port = port or 20000 + os.getpid() % 20000
    agent = AgentProcess(lab.node_ns, config, port=port)
    with _env_for(code_root):
        argv_root = code_root
        t0 = time.monotonic()
        if argv_root is not None:
            import retina_exporter.lab.agent_process as ap

            saved = ap.ROOT
            ap.ROOT = argv_root
            try:
                agent.start(timeout)
            finally:
                ap.ROOT = saved
        else:
            agent.start(timeout)
    return agent, time.monotonic() - t0


def plugin_durations(agent: AgentProcess) -> dict[str, dict]:
    """``{plugin: {"init_s": .., "start_s": ..}}`` from /debug/plugins (empty for an agent that does not say)."""
    import json

    status, body = agent.get("/debug/plugins")
    if status != 200:
        return {}
    return {name: d["start_durations"] for name, d in json.loads(body).items() if "start_durations" in d}


def start_to_ready(lab: Lab, code_root: Path | None = None, sets=None) -> dict[str, dict]:
    """``{label: {"ready_s": s, "plugins": {...}}}`` for each plugin alone and the default set."""
    sets = sets or [(p,) for p in ALL_PLUGINS] + [DEFAULT_PLUGINS]
    out = {}
    for plugins in sets:
        agent, ready = start_agent(lab, {"enabledPlugin": list(plugins), "hostInterfaces": [lab.uplink],
                                         "nodeName": lab.node_name}, code_root)
        try:
            out[",".join(plugins)] = {"ready_s": ready, "plugins": plugin_durations(agent)}
        finally:
            agent.close()
    return out


# --- 80k series -------------------------------------------------------------------------------------------------
def pod_ip(i: int) -> str:
    return str(ipaddress.IPv4Address(POD_BASE + i))


def write_inventory(lab: Lab, identities: int, path: Path) -> Path:
    """The lab's inventory plus ``identities`` synthetic pods on the lab's node (10.77.0.0/16)."""
    import yaml

    inv = lab.inventory()
    for i in range(identities):
        inv["endpoints"].append({
            "ips": [pod_ip(i)], "namespace": f"ns-{i % 20}", "podName": f"app-{i}-7d9f8c-x{i:04d}",
            "labels": {"app.kubernetes.io/name": f"app-{i % 100}", "tier": "web"},
            "workload": {"kind": "Deployment", "name": f"app-{i % 100}"}, "node": lab.node_name,
        })
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def series_config(lab: Lab, inventory: Path) -> dict:
    opts = [{"metricName": m, "sourceLabels": README_LABELS, "destinationLabels": README_LABELS, "ttl": "30m"}
            for m in ("forward_count", "forward_bytes")]
    return {
        "enabledPlugin": ["packetparser"], "dataAggregationLevel": "low", "enablePodLevel": True,
        "enrichment": {"source": "inventory", "inventoryFile": str(inventory)},
        "hostInterfaces": [lab.uplink], "nodeName": lab.node_name,
        "metricsConfiguration": {"contextOptions": opts, "podLabelKeys": ["app.kubernetes.io/name"],
                                 "maxSeriesPerMetric": 1_000_000},
    }


def connection_packets(connections: int, identities: int) -> list[bytes]:
    """Two frames per connection (request and reply) between synthetic pods: distinct (pod pair, port)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    template = bytes(Ether() / IP(src="10.77.0.1", dst="10.77.0.2", ttl=64) / TCP(sport=40000, dport=80,
                                                                                      flags="PA") / (b"x" * 40))
    out = []
    for c in range(connections):
        a, b = c % identities, (c * 7 + 1 + c // identities) % identities
        if a == b:
            b = (b + 1) % identities
        port = 1000 + c % 5000
        for src, dst, sport, dport in ((a, b, 40000 + c % 20000, port), (b, a, port, 40000 + c % 20000)):
            f = bytearray(template)
            f[26:30] = ipaddress.IPv4Address(pod_ip(src)).packed
            f[30:34] = ipaddress.IPv4Address(pod_ip(dst)).packed
            struct.pack_into("!HH", f, 34, sport, dport)
            f[24:26] = b"\0\0"  # the program does not check the IP checksum
            out.append(bytes(f))
    return out


def drive(lab: Lab, frames: list[bytes], repeat: int = 1, paced: bool = True, both: bool = True) -> int:
    """Run the agent's FROM_ENDPOINT program on pod veth 0 and its TO_ENDPOINT program on pod veth 1 (each with
    its veth's ifindex in the skb) ``repeat`` times per frame: the source pod's egress and the destination pod's
    ingress. ``paced``: pause every 256 frames so that the default 4095-record rings never overflow; otherwise as
    fast as the kernel runs them (a flood). ``both=False``: FROM_ENDPOINT only. Returns the packets each program
    saw."""
    from retina_exporter.datapath.syscall import prog_get_fd_by_id, prog_test_run
    from retina_exporter.datapath.tc import TcAttacher

    def program(ifname: str, direction: str, name: str) -> tuple[int, bytes]:
        import socket

        with TcAttacher(prefix="retina_", netns=lab.node_ns) as att:
            ids = [a.prog_id for a in att.list_attachments(ifname, direction) if a.prog_name == name]
        if not ids:
            raise RuntimeError(f"no {name} on {ifname}")
        ctx = bytearray(48)  # struct __sk_buff up to ifindex (@40)
        struct.pack_into("=I", ctx, 40, socket.if_nametoindex(ifname))
        return prog_get_fd_by_id(ids[0]), bytes(ctx)

    def run():
        progs = [program(lab.pods[0].host_ifname, "ingress", "retina_from_ep")]
        if both:
            progs.append(program(lab.pods[1].host_ifname, "egress", "retina_to_ep"))
        try:
            for i, f in enumerate(frames):
                for fd, ctx in progs:
                    prog_test_run(fd, f, repeat=repeat, ctx=ctx)
                if paced and i % 256 == 255:
                    time.sleep(0.02)
        finally:
            for fd, _ in progs:
                os.close(fd)

    in_netns(lab.node_ns, run)
    return len(frames) * repeat


def series_count(body: bytes, prefix: bytes = b"networkobservability_adv_forward") -> int:
    return sum(1 for line in body.split(b"\n") if line.startswith(prefix))


def scrape_and_memory(lab: Lab, connections: int, identities: int, scrapes: int,
                      code_root: Path | None = None) -> dict:
    """Series, /metrics timings over HTTP and the agent's memory (see the module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="retina-bench-"))
    inventory = write_inventory(lab, identities, tmp / "inventory.yaml")
    agent, ready = start_agent(lab, series_config(lab, inventory), code_root)
    pid = agent_pid(agent)
    try:
        mem_ready = proc_memory(pid)
        frames = connection_packets(connections, identities)
        drive(lab, frames)
        deadline = time.monotonic() + 120
        want = 0
        n = 0
        while time.monotonic() < deadline:  # the series stop growing once every record is counted
            status, body = agent.get("/metrics", timeout=60)
            n = series_count(body)
            if n and n == want:
                break
            want = n
            time.sleep(1.0)
        mem_series = proc_memory(pid)
        times, mems = [], []
        size = 0
        for _ in range(scrapes):
            t0 = time.perf_counter()
            status, body = agent.get("/metrics", timeout=60)
            times.append(time.perf_counter() - t0)
            size = len(body)
            time.sleep(0.3)  # the reply's last bytes are read before the server's thread is done with it
            mems.append(proc_memory(pid))
        total = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        return {"ready_s": ready, "adv_series": n, "series": total, "bytes": size,
                "scrape_ms": [t * 1000 for t in times], "median_ms": statistics.median(times) * 1000,
                "mem_ready": mem_ready, "mem_series": mem_series, "mem_scrapes": mems}
    finally:
        agent.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def otlp_export(lab: Lab, connections: int, identities: int, code_root: Path | None = None,
                exports: int = 3) -> dict:
    """The agent's OTLP push of the same series to a receiver in the node namespace: CPU seconds of the last
    export (``/debug/otlp`` ``last_export_cpu_s``) once ``exports`` exports carried every series."""
    import json

    sys.path.insert(0, str(ROOT))
    from tests.support.otlp_receiver import OtlpReceiver

    tmp = Path(tempfile.mkdtemp(prefix="retina-bench-"))
    inventory = write_inventory(lab, identities, tmp / "inventory.yaml")
    receiver = OtlpReceiver()
    in_netns(lab.node_ns, receiver.start)
    cfg = series_config(lab, inventory)
    cfg["otlp"] = {"enabled": True, "protocol": "grpc", "interval": "2s", "insecure": True,
                   "endpoint": receiver.endpoint("grpc")}
    agent, _ = start_agent(lab, cfg, code_root)
    try:
        drive(lab, connection_packets(connections, identities))
        deadline = time.monotonic() + 180
        status: dict = {}
        seen, last, exports_at = 0, -1, 0
        while time.monotonic() < deadline and seen < exports:  # series stable over ``exports`` exports
            status = json.loads(agent.get("/debug/otlp")[1])
            if status["exports"] > exports_at:
                exports_at = status["exports"]
                seen = seen + 1 if status["series_tracked"] == last else 0
                last = status["series_tracked"]
            time.sleep(0.5)
        return {"series": status["series_tracked"], "cpu_s": status["last_export_cpu_s"],
                "points": status["last_export_points"], "requests": status["last_export_requests"]}
    finally:
        agent.close()
        receiver.stop()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def metric_sum(body: bytes, name: bytes, **labels: str) -> float:
    """Sum of the samples of ``name`` in a text exposition whose labels include ``labels``."""
    want = [f'{k}="{v}"'.encode() for k, v in labels.items()]
    total = 0.0
    for line in body.split(b"\n"):
        if line.startswith(name + b"{") and all(w in line for w in want):
            total += float(line.rsplit(b" ", 1)[1])
    return total


def loss_cost(lab: Lab, flows: int, repeat: int, code_root: Path | None = None) -> dict:
    """A flood far above the reader's capacity (``flows`` pod-to-pod flows, ``repeat`` packets each back to back
    through the sender's veth program (FROM_ENDPOINT) by BPF_PROG_TEST_RUN, unpaced, ``dataAggregationLevel:
    low``): the pod counts (``adv_forward_count{direction="egress"}``) against the packets sent, once they stop
    changing (deferred kernel counts arrive within 1.5 x ``conntrackReportInterval``), the records user space
    lost (``lost_events_counter`` other than ``type="kernel"``) and the kernel's failed reservations (``type=
    "kernel"``: events lost, their counts kept in conntrack)."""
    tmp = Path(tempfile.mkdtemp(prefix="retina-bench-"))
    identities = max(2, min(flows, 200))
    inventory = write_inventory(lab, identities, tmp / "inventory.yaml")
    cfg = series_config(lab, inventory)
    cfg["conntrackReportInterval"] = "2s"
    cfg["metricsConfiguration"] = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"]}]}
    agent, _ = start_agent(lab, cfg, code_root)
    try:
        frames = connection_packets(flows, identities)[::2]  # requests only: a reply never enters the sender's veth
        sent = drive(lab, frames, repeat=repeat, paced=False, both=False)
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            time.sleep(3.5)  # > 1.5 x conntrackReportInterval between looks
            body = agent.get("/metrics", timeout=60)[1]
            now = (metric_sum(body, b"networkobservability_adv_forward_count", direction="egress"),
                   metric_sum(body, b"networkobservability_adv_forward_count", direction="ingress"))
            if now == last:
                break
            last = now
        lost = metric_sum(body, b"controlplane_networkobservability_lost_events_counter")
        kernel = metric_sum(body, b"controlplane_networkobservability_lost_events_counter", type="kernel")
        return {"sent": sent, "egress": last[0], "ingress": last[1], "lost_records": lost - kernel,
                "kernel_deferred": kernel}
    finally:
        agent.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def in_process_render_ms(n_series: int) -> float:
    """Same-run baseline: the metrics module's in-process render of ``n_series`` series (ms, best of 3)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_metrics

    mod = bench_metrics.populate(n_series)
    mod.render()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        mod.render()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="another checkout whose agent runs first as the same-run 'before'")
    args = ap.parse_args()
    connections, identities, scrapes = (2000, 200, 3) if args.quick else (10_000, 1000, 6)
    roots = ([("before", args.baseline_root)] if args.baseline_root else []) + [("after", None)]
    with Lab(pods=2) as lab:
        for label, root in roots:
            r = start_to_ready(lab, root)
            for k, v in r.items():
                print(f"[{label}] start to ready {k:45s} {v['ready_s']:5.2f} s {v['plugins'] or ''}")
        for label, root in roots:
            m = scrape_and_memory(lab, connections, identities, scrapes, root)
            per10k = m["median_ms"] / (m["series"] / 10_000)
            print(f"[{label}] /metrics over HTTP: {m['series']:,} series ({m['adv_series']:,} adv_forward), "
                  f"{m['bytes'] / 1e6:.1f} MB, median {m['median_ms']:.0f} ms = {per10k:.1f} ms per 10k series; "
                  f"scrapes {[round(t) for t in m['scrape_ms']]} ms")
            print(f"[{label}] memory MiB: ready {m['mem_ready']}, with series {m['mem_series']}, "
                  f"after scrapes {[(round(x['VmRSS']), round(x['RssAnon'])) for x in m['mem_scrapes']]} (RSS, anon)")
        for label, root in roots:
            o = otlp_export(lab, connections, identities, root)
            print(f"[{label}] OTLP export (grpc) of {o['series']:,} series: {o['cpu_s'] * 1000:.0f} ms CPU = "
                  f"{o['cpu_s'] * 1000 / (o['series'] / 10_000):.1f} ms per 10k series ({o['requests']} requests)")
    base = in_process_render_ms(m["series"])
    print(f"baseline: in-process render of {m['series']:,} series {base:.0f} ms = "
          f"{base / (m['series'] / 10_000):.1f} ms per 10k series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
