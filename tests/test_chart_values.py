"""The Helm chart's templates only reference values that exist in values.yaml (no helm binary on our machines,
so this is the check we can make), and the agent config embedded in values.yaml is a valid agent config."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from retina_exporter.config import load_config

CHART = Path(__file__).resolve().parents[1] / "chart"


def test_every_values_reference_exists():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for tpl in sorted((CHART / "templates").glob("*.yaml")):
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", tpl.read_text()):
            node = values
            for part in ref.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{tpl.name}: .Values.{ref}")
                    break
                node = node[part]
    assert missing == []


def test_agent_config_in_values_is_valid(tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values["agent"]["config"]))
    cfg = load_config(str(path), env={})
    assert cfg.enable_pod_level and cfg.enrichment.source == "operator"
    assert cfg.api_server.port == 10093


def test_hubble_defaults_agree_with_the_agent():
    """Hubble is on in the chart (TLS with mTLS, Cilium's port and names); the socket path is the agent's default
    and the ring capacity one the agent accepts."""
    from retina_exporter.hubble.config import DEFAULT_PORT, DEFAULT_SOCKET_PATH

    h = yaml.safe_load((CHART / "values.yaml").read_text())["hubble"]
    assert h["enabled"] is True and h["listenPort"] == DEFAULT_PORT == 4244
    assert h["socketPath"] == DEFAULT_SOCKET_PATH
    assert h["eventBufferCapacity"] == 4095 and (h["eventBufferCapacity"] + 1) & h["eventBufferCapacity"] == 0
    assert h["tls"]["enabled"] is True and h["tls"]["mtls"] is True
    assert h["peerService"]["name"] == "hubble-peer"
    assert h["relay"]["enabled"] is False and h["ui"]["enabled"] is False
    images = [h["relay"]["image"], h["ui"]["backend"]["image"], h["ui"]["frontend"]["image"]]
    assert [i["repository"] for i in images] == [
        "quay.io/cilium/hubble-relay", "quay.io/cilium/hubble-ui-backend", "quay.io/cilium/hubble-ui"]
    assert all(i["tag"] for i in images)
