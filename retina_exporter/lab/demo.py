"""``make run``: a lab with live traffic, the agent inside the lab's node, its endpoints on the host's loopback.

Ctrl-C (or SIGTERM) stops the agent and tears the lab down."""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.forward import PortForward
from retina_exporter.lab.topology import Lab

AGENT_PORT = 10093
DEMO_HUBBLE_SOCKET = "/var/run/retina-exporter/hubble.sock"  # the default: `retina-exporter observe` finds it


def demo_config(lab: Lab, inventory: Path) -> dict:
    context = ["ip", "namespace", "podname", "workload", "zone"]
    return {
        "apiServer": {"host": "127.0.0.1", "port": AGENT_PORT},
        "enabledPlugin": ["packetparser", "dropreason", "packetforward", "linuxutil", "dns", "tcpretrans"],
        "enablePodLevel": True,
        "enableConntrackMetrics": True,
        "enrichment": {"source": "inventory", "inventoryFile": str(inventory)},
        "hostInterfaces": [lab.uplink],
        "dataAggregationLevel": "high",
        "conntrackReportInterval": "5s",
        "nodeName": lab.node_name,
        "logLevel": "info",
        "hubble": {"enabled": True, "socketPath": DEMO_HUBBLE_SOCKET, "listenAddress": "127.0.0.1:4244"},
        "metricsConfiguration": {
            "contextOptions": [
                {"metricName": "forward_count", "sourceLabels": context, "ttl": "10m"},
                {"metricName": "forward_bytes", "sourceLabels": context, "ttl": "10m"},
                {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname", "namespace"], "ttl": "10m"},
                {"metricName": "drop_count", "sourceLabels": context, "ttl": "10m"},
                {"metricName": "drop_bytes", "sourceLabels": context, "ttl": "10m"},
                {"metricName": "tcp_retransmission_count", "sourceLabels": context, "ttl": "10m"},
                {"metricName": "dns_request_count", "sourceLabels": context, "ttl": "10m"},
                {"metricName": "dns_response_count", "sourceLabels": context, "ttl": "10m"},
            ],
        },
    }


def run_demo(pods: int = 3, port: int = AGENT_PORT) -> int:
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="retina-demo-"))
    with Lab(pods=pods) as lab:
        inventory = lab.write_inventory(workdir / "inventory.yaml")
        agent = AgentProcess(lab.node_ns, demo_config(lab, inventory), port=AGENT_PORT)
        forward = None
        dns = None
        tstats: dict = {}
        gen = threading.Thread(target=traffic.background_traffic, args=(lab, stop), kwargs={"stats": tstats},
                               name="traffic", daemon=True)
        try:
            agent.start()
            try:
                forward = PortForward(("127.0.0.1", port), lab.node_ns, ("127.0.0.1", AGENT_PORT)).start()
            except OSError as exc:
                print(f"retina-exporter demo: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                      f"use --port", file=sys.stderr)
            gen.start()
            from retina_exporter.lab.dns import LabDns

            dns = LabDns(lab).start()  # DNS queries from the pods to a server in the world namespace
            base = f"http://127.0.0.1:{port}"
            print(f"""
retina-exporter demo: lab {lab.id} with {pods} pods, agent running in namespace {lab.node_ns}.

  Metrics:        curl {base}/metrics
  Newest flows:   curl '{base}/debug/flows?last=20'
  Readiness:      curl {base}/readyz
  Effective conf: curl {base}/debug/config
  Hubble:         retina-exporter observe --last 20
                  retina-exporter observe -f --pod lab/pod-0
                  retina-exporter status
  Inside the lab: ip netns exec {lab.node_ns} curl 127.0.0.1:{AGENT_PORT}/metrics
  Agent log:      {agent._log.name}

Live traffic between pods and to the 'world' namespace (TCP, UDP, ICMP, IPv4 and IPv6). Ctrl-C stops.
""", flush=True)
            last = time.monotonic()
            while not stop.wait(1.0):
                if agent.proc is None or agent.proc.poll() is not None:
                    print("retina-exporter demo: the agent exited:\n" + agent.log(), file=sys.stderr)
                    return 1
                if time.monotonic() - last >= 30:
                    last = time.monotonic()
                    print(f"traffic so far: {tstats}, dns queries {dns.queries}", flush=True)
        finally:
            stop.set()
            if dns is not None:
                dns.stop()
            if forward is not None:
                forward.stop()
            agent.close()
            gen.join(15) if gen.is_alive() else None
    print("retina-exporter demo: stopped; lab removed.")
    return 0
