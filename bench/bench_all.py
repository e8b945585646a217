"""Issue 13's whole performance table in one run, each figure next to its same-run baseline and its target.

Rows:

1. end-to-end zero-loss events/s vs a minimal bcc consumer (``bench_pipeline.measure()`` when it exists, else the
   script's own output);
2. what a loss costs: a flood far above the reader's capacity through the real agent's packetparser program
   (``BPF_PROG_TEST_RUN``), pod counts against the packets sent (``bench_agent.loss_cost``);
3. ``/metrics`` over HTTP on the real agent at 80k series (10k connections, 1k identities, the README's labels);
   baseline: the in-process render of the same number of series; plus the agent's OTLP export of them;
4. start to ready per plugin and for the default plugin set, with the per-plugin init/start seconds;
5. memory (RSS, anonymous) at ready, with the series, and after each of N scrapes;
6. data plane ``high`` and ``low``: iperf3 between two lab pods (TCP and UDP 64 B), rounds of no agent, agent, no
   agent; medians of the per-round ratios.

``--baseline-root DIR`` (e.g. ``/work/main``) also runs another checkout's agent in rows 2-5 as the "before".
``--quick``: smaller and shorter (minutes less; figures noisier). Run as root: ``make bench``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_agent  # noqa: E402
from retina_exporter.lab.agent_process import AgentProcess  # noqa: E402
from retina_exporter.lab.topology import Lab  # noqa: E402


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def row(measure: str, figure: str, baseline: str, target: str, ok: bool | None) -> None:
    print(f"| {measure} | {figure} | {baseline} | {target} | {verdict(ok)} |", flush=True)


# --- 1. end to end ----------------------------------------------------------------------------------------------
def end_to_end(quick: bool) -> None:
    import bench_pipeline

    measure = getattr(bench_pipeline, "measure", None)
    if measure is None:  # an older bench_pipeline: its own printout
        out = subprocess.run(["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "bench_pipeline.py")],
                             capture_output=True, text=True, cwd=ROOT).stdout.strip()
        row("end-to-end zero-loss events/s", out.replace("\n", "; "), "(no minimal consumer in this build)",
            ">= 400k/s and >= 0.8 x minimal", None)
        return
    try:
        result = measure(events=50_000 if quick else 200_000)
    except TypeError:
        result = measure()
    for placement in ("pinned", "unpinned"):
        for burst, rows in (result.get(placement) or {}).items():
            minimal = rows["minimal"]["events_per_s"]
            for name in ("pipeline", "merged"):
                if name not in rows:
                    continue
                eps = rows[name]["events_per_s"]
                ratio = eps / minimal
                old = rows.get("threads")
                row(f"end-to-end zero-loss events/s ({name}, {placement}, {burst})", f"{eps / 1e3:,.0f}k/s",
                    f"minimal consumer {minimal / 1e3:,.0f}k/s (ratio {ratio:.2f})"
                    + (f"; old topology {old['events_per_s'] / 1e3:,.0f}k/s" if old else ""),
                    ">= 400k/s and >= 0.8", eps >= 400_000 and ratio >= 0.8)


# --- 2-5. the real agent ----------------------------------------------------------------------------------------
def agent_rows(lab: Lab, quick: bool, baseline_root: Path | None) -> None:
    roots = ([("before", baseline_root)] if baseline_root else []) + [("now", None)]
    flows, repeat = (100, 1000) if quick else (200, 2000)
    for label, root in roots:
        r = bench_agent.loss_cost(lab, flows, repeat, root)
        short = r["sent"] - r["egress"]
        row(f"what a loss costs [{label}]", f"pod count {r['egress']:,.0f} ({short:+,.0f} short)",
            f"sent {r['sent']:,} ({r['lost_records']:,.0f} records lost in user space; "
            f"{r['kernel_deferred']:,.0f} kernel events deferred)", "pod counts exact", short == 0)
    connections, identities, scrapes = (2000, 200, 3) if quick else (10_000, 1000, 6)
    mem = {}
    for label, root in roots:
        m = mem[label] = bench_agent.scrape_and_memory(lab, connections, identities, scrapes, root)
        per10k = m["median_ms"] / (m["series"] / 10_000)
        base = bench_agent.in_process_render_ms(m["series"])
        row(f"/metrics over HTTP, {m['series']:,} series [{label}]",
            f"median {m['median_ms']:.0f} ms = {per10k:.1f} ms per 10k series",
            f"in-process render {base:.0f} ms = {base / (m['series'] / 10_000):.1f} ms per 10k",
            "<= 50 ms per 10k series", per10k <= 50)
    for label, root in roots:
        o = bench_agent.otlp_export(lab, connections, identities, root)
        row(f"OTLP export (grpc), {o['series']:,} series [{label}]",
            f"{o['cpu_s'] * 1000:.0f} ms CPU = {o['cpu_s'] * 1e4 / o['series'] * 1000:.1f} ms per 10k",
            f"{o['requests']} requests", "(fast path, reported)", None)
    for label, root in roots:
        sets = [(p,) for p in bench_agent.ALL_PLUGINS] + [bench_agent.DEFAULT_PLUGINS]
        ready = bench_agent.start_to_ready(lab, root, sets)
        alone = {k: v["ready_s"] for k, v in ready.items() if "," not in k}
        default = ready[",".join(bench_agent.DEFAULT_PLUGINS)]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in alone.items())
        inits = ", ".join(f"{k} {d['init_s']:.2f}+{d['start_s']:.2f}" for k, d in default["plugins"].items())
        row(f"start to ready, default set [{label}]", f"{default['ready_s']:.2f} s"
            + (f" (init+start: {inits})" if inits else ""),
            f"each plugin alone: {parts} s", "<= 5 s", default["ready_s"] <= 5)
    for label, m in mem.items():
        after = m["mem_scrapes"]
        anon = [x["RssAnon"] for x in after]
        flat = max(anon) - min(anon) <= 5
        row(f"memory, {m['series']:,} series, after {len(after)} scrapes [{label}]",
            f"RSS {after[-1]['VmRSS']:.0f} MiB, anon {anon[-1]:.0f} MiB (anon per scrape "
            f"{', '.join(f'{a:.0f}' for a in anon)})",
            f"at ready: RSS {m['mem_ready']['VmRSS']:.0f}, anon {m['mem_ready']['RssAnon']:.0f}; with series, "
            f"before scrapes: anon {m['mem_series']['RssAnon']:.0f} MiB",
            "anon <= 100 MiB, flat", anon[-1] <= 100 and flat)


# --- 6. data plane ----------------------------------------------------------------------------------------------
def data_plane(lab: Lab, quick: bool) -> None:
    """Each round, for each level: no agent, agent, no agent again (each iperf3 TCP then UDP 64 B); the round's
    ratio is the agent's figure over the mean of the two no-agent figures around it (load from other processes on
    a shared machine moves both); the row is the median over the rounds."""
    import bench_packetparser

    rounds, seconds = (1, 1) if quick else (5, 2)

    def both() -> dict[str, float]:
        return {"tcp": bench_packetparser.iperf(lab, False, seconds), "udp": bench_packetparser.iperf(lab, True, seconds)}

    ratios: dict[str, dict[str, list[float]]] = {lvl: {"tcp": [], "udp": []} for lvl in ("high", "low")}
    bases: dict[str, list[float]] = {"tcp": [], "udp": []}
    cpu: dict[str, list[float]] = {"high": [], "low": []}
    for _ in range(rounds):
        for level in ("high", "low"):
            before = both()
            # as bench_packetparser.throughput: packetparser, a ring for 64k records
            agent = AgentProcess(lab.node_ns, {"dataAggregationLevel": level,
                                               "outputRingCapacity": 65535}).start(120)
            try:
                t0, c0 = time.monotonic(), agent_cpu_s(agent)
                got = both()
                cpu[level].append((agent_cpu_s(agent) - c0) / (time.monotonic() - t0))
            finally:
                agent.close()
            after = both()
            for k in ("tcp", "udp"):
                base = (before[k] + after[k]) / 2
                bases[k].append(base)
                ratios[level][k].append(got[k] / base)
    targets = {"high": {"udp": 0.92, "tcp": 0.97}, "low": {"udp": None, "tcp": None}}
    base_text = {"udp": f"{statistics.median(bases['udp']) / 1e3:,.0f} kpps",
                 "tcp": f"{statistics.median(bases['tcp']) / 1e9:.1f} Gbit/s"}
    for level in ("high", "low"):
        for k, what in (("udp", "UDP 64 B"), ("tcp", "TCP")):
            med = statistics.median(ratios[level][k])
            t = targets[level][k]
            row(f"data plane {level}, {what}", f"{med:.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios[level][k])})",
                f"no agent before and after each round (median {base_text[k]}); agent user space "
                f"{statistics.median(cpu[level]):.2f} core", f">= {t}x" if t else "report",
                (med >= t) if t else None)


def agent_cpu_s(agent: AgentProcess) -> float:
    """CPU seconds (user + system) the agent process has used (``/proc/<pid>/stat``)."""
    import os

    fields = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller and shorter runs")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="another checkout (e.g. /work/main) whose agent runs as the same-run 'before'")
    ap.add_argument("--skip", action="append", default=[], choices=["pipeline", "agent", "dataplane"],
                    help="leave a group of rows out")
    args = ap.parse_args()
    print("| measure | figure | same-run baseline | target | |")
    print("|---|---|---|---|---|", flush=True)
    if "pipeline" not in args.skip:
        end_to_end(args.quick)
    if "agent" not in args.skip or "dataplane" not in args.skip:
        with Lab(pods=2) as lab:
            if "agent" not in args.skip:
                agent_rows(lab, args.quick, args.baseline_root)
            if "dataplane" not in args.skip:
                data_plane(lab, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
