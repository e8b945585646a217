"""The MetricsConfiguration CRD's OpenAPI schema (chart/crds) agrees with the agent's own validation on the
structural rules it can express: what the schema rejects, parse_metrics_configuration rejects too, and valid
examples pass both."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.units import ConfigError

CRD = Path(__file__).resolve().parents[1] / "chart" / "crds" / "retina.sh_metricsconfigurations.yaml"


@pytest.fixture(scope="module")
def schema():
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "retina.sh" and crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]


def obj(spec):
    return {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": "m"}, "spec": spec}


VALID = [
    {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["ip", "podname"], "ttl": "10m"}]},
    {"contextOptions": [{"metricName": "drop_count", "destinationLabels": ["namespace"]}],
     "namespaces": {"include": ["default"]}},
    {"contextOptions": [{"metricName": "dns_request_count"}], "namespaces": {"exclude": ["kube-system"]}},
    {"contextOptions": [{"metricName": "dns_latency_seconds"}, {"metricName": "interzone_bytes"}],
     "podDeletionGrace": "1m"},
]
INVALID = [
    ({}, "contextOptions"),
    ({"contextOptions": []}, "contextOptions"),
    ({"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["pod"]}]}, "sourceLabels"),
    ({"contextOptions": [{"metricName": "forward_count"}], "namespaces": {"include": ["a"], "exclude": ["b"]}},
     "namespaces"),
    ({"contextOptions": [{"metricName": "forward_count", "ttl": "ten minutes"}]}, "ttl"),
    ({"contextOptions": [{"metricName": "forward_count"}], "podDeletionGrace": "a while"}, "podDeletionGrace"),
]


@pytest.mark.parametrize("spec", VALID)
def test_valid_examples_pass_schema_and_agent(schema, spec):
    jsonschema.validate(obj(spec), schema)
    parse_metrics_configuration(spec)


@pytest.mark.parametrize("spec,field", INVALID, ids=[f for _, f in INVALID])
def test_schema_rejects_what_the_agent_rejects(schema, spec, field):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj(spec), schema)
    with pytest.raises(ConfigError) as e:
        parse_metrics_configuration(spec)
    assert field in str(e.value)
