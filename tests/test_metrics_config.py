"""retina_core.metricsconfig: the MetricsConfiguration spec, its validation messages and warnings."""

from __future__ import annotations

import pytest

from retina_core.metricsconfig import (
    ACCEPTED_METRIC_NAMES,
    DEFAULT_MAX_SERIES_PER_METRIC,
    ContextOption,
    MetricsConfiguration,
    family_names,
    metric_kind,
    parse_metrics_configuration,
    sanitize_pod_label_key,
)
from retina_core.units import ConfigError

ACCEPTED_LIST = ", ".join(ACCEPTED_METRIC_NAMES)


def error(raw, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        parse_metrics_configuration(raw, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def one(**option) -> dict:
    return {"contextOptions": [{"metricName": "forward_count", **option}]}


def test_minimal_defaults():
    cfg = parse_metrics_configuration({"contextOptions": [{"metricName": "forward_count"}]})
    assert cfg == MetricsConfiguration(context_options=(ContextOption("forward_count", kind="forward"),))
    assert cfg.namespaces_include is None and cfg.namespaces_exclude is None
    assert cfg.namespace_allowed("anything")
    assert cfg.max_series_per_metric == DEFAULT_MAX_SERIES_PER_METRIC == 100000
    assert cfg.pod_label_keys == ()
    assert cfg.warnings == ()


def test_full_spec_normalised_and_round_trips():
    raw = {
        "contextOptions": [
            {"metricName": "Forward_Count", "sourceLabels": ["Zone", "ip", "PodName", "workload", "ip"],
             "destinationLabels": ["port", "namespace", "service"], "additionalLabels": ["is_reply"], "ttl": "1m30s"},
            {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"], "ttl": ""},
        ],
        "namespaces": {"exclude": ["kube-system", "kube-system", "monitoring"]},
        "podLabelKeys": ["app", "app.kubernetes.io/name"],
        "maxSeriesPerMetric": 5000,
        "podDeletionGrace": "45s",
    }
    cfg = parse_metrics_configuration(raw)
    fwd, flags = cfg.context_options
    assert fwd.metric_name == "forward_count" and fwd.kind == "forward"
    assert fwd.source_labels == ("ip", "podname", "workload", "zone")  # fixed order, deduplicated, lower case
    assert fwd.destination_labels == ("namespace", "service", "port")
    assert fwd.is_reply and fwd.ttl_ns == 90 * 10**9
    assert flags.kind == "tcpflags" and flags.ttl_ns == 0 and not flags.is_reply
    assert cfg.namespaces_exclude == frozenset({"kube-system", "monitoring"})
    assert not cfg.namespace_allowed("kube-system") and cfg.namespace_allowed("default")
    assert cfg.pod_label_keys == ("app", "app.kubernetes.io/name")
    assert cfg.max_series_per_metric == 5000
    assert cfg.pod_deletion_grace_ns == 45 * 10**9
    assert parse_metrics_configuration(cfg.to_dict()) == cfg
    assert parse_metrics_configuration(one()).pod_deletion_grace_ns == 30 * 10**9
    assert parse_metrics_configuration({**one(), "podDeletionGrace": "0"}).pod_deletion_grace_ns == 0


def test_unknown_label_message():
    raw = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["ip"]},
                              {"metricName": "drop_count", "sourceLabels": ["pod"]}]}
    assert error(raw) == (
        "metricsConfiguration.contextOptions[1].sourceLabels[0]: unknown label 'pod'; "
        "accepted: ip, namespace, podname, workload, service, port, zone"
    )
    assert error(one(destinationLabels=["ip", "node"])) == (
        "metricsConfiguration.contextOptions[0].destinationLabels[1]: unknown label 'node'; "
        "accepted: ip, namespace, podname, workload, service, port, zone"
    )


def test_both_include_and_exclude_is_an_error():
    raw = {**one(), "namespaces": {"include": ["a"], "exclude": ["b"]}}
    assert error(raw) == (
        "metricsConfiguration.namespaces: include and exclude are both set; set at most one "
        "(neither means all namespaces)"
    )


def test_namespaces_include_and_neither():
    cfg = parse_metrics_configuration({**one(), "namespaces": {"include": ["default", "prod"]}})
    assert cfg.namespaces_include == frozenset({"default", "prod"}) and cfg.namespaces_exclude is None
    assert cfg.namespace_allowed("prod") and not cfg.namespace_allowed("kube-system")
    cfg = parse_metrics_configuration({**one(), "namespaces": {}})
    assert cfg.namespace_allowed("kube-system")
    cfg = parse_metrics_configuration({**one(), "namespaces": {"include": []}})
    assert not cfg.namespace_allowed("default")
    assert cfg.warnings == ("metricsConfiguration.namespaces.include: empty list: no namespace is included, so no "
                            "pod-level metric is counted",)
    assert error({**one(), "namespaces": {"include": "default"}}) == (
        "metricsConfiguration.namespaces.include: must be a list of strings, not a string")
    assert error({**one(), "namespaces": {"inclde": ["x"]}}) == (
        "metricsConfiguration.namespaces: unknown key 'inclde' (did you mean 'include'?); accepted: include, exclude")


def test_unknown_metric_message():
    assert error(one(metricName="forward_cout")) == (
        "metricsConfiguration.contextOptions[0].metricName: unknown metric 'forward_cout' (did you mean "
        f"'forward_count'?); accepted: {ACCEPTED_LIST}"
    )
    assert error(one(metricName="adv_latency")) == (
        f"metricsConfiguration.contextOptions[0].metricName: unknown metric 'adv_latency'; accepted: {ACCEPTED_LIST}"
    )
    assert error({"contextOptions": [{"sourceLabels": ["ip"]}]}) == (
        f"metricsConfiguration.contextOptions[0].metricName: required; accepted: {ACCEPTED_LIST}")


def test_bad_ttl_message():
    assert error(one(ttl="5 minutes")) == (
        "metricsConfiguration.contextOptions[0].ttl: invalid duration '5 minutes': expected e.g. '30s', '1m30s', "
        "'500ms' (units ns, us, ms, s, m, h) or a number of seconds"
    )
    assert error(one(ttl="-1s")).startswith("metricsConfiguration.contextOptions[0].ttl: invalid duration '-1s'")
    assert parse_metrics_configuration(one(ttl="0")).context_options[0].ttl_ns == 0
    assert parse_metrics_configuration(one(ttl="500ms")).context_options[0].ttl_ns == 500_000_000


def test_unknown_keys():
    assert error({"contextOptions": [{"metricName": "forward_count"}], "namespace": {}}) == (
        "metricsConfiguration: unknown key 'namespace' (did you mean 'namespaces'?); accepted: contextOptions, "
        "namespaces, podLabelKeys, maxSeriesPerMetric, podDeletionGrace"
    )
    assert error(one(sourcelabels=["ip"])) == (
        "metricsConfiguration.contextOptions[0]: unknown key 'sourcelabels' (did you mean 'sourceLabels'?); "
        "accepted: metricName, sourceLabels, destinationLabels, additionalLabels, ttl"
    )


def test_context_options_required_non_empty():
    assert error({}) == ("metricsConfiguration.contextOptions: required, a non-empty list of context options "
                         "(missing)")
    assert error({"contextOptions": []}) == ("metricsConfiguration.contextOptions: required, a non-empty list of "
                                             "context options (got an empty list)")
    assert error({"contextOptions": ["forward_count"]}).startswith(
        "metricsConfiguration.contextOptions[0]: must be a mapping")
    assert error([]) == "metricsConfiguration: must be a mapping (a MetricsConfiguration spec), not a list"


def test_duplicate_metric_name():
    raw = {"contextOptions": [{"metricName": "forward_count"}, {"metricName": "drop_count"},
                              {"metricName": "FORWARD_COUNT"}]}
    assert error(raw) == ("metricsConfiguration.contextOptions[2].metricName: duplicate metric 'forward_count' "
                          "(already contextOptions[0])")


def test_additional_labels_warnings():
    cfg = parse_metrics_configuration({"contextOptions": [
        {"metricName": "forward_bytes", "additionalLabels": ["direction", "is_reply"]},
        {"metricName": "drop_count", "additionalLabels": ["is_reply", "reason"]},
    ]})
    assert cfg.context_options[0].is_reply
    assert not cfg.context_options[1].is_reply
    assert cfg.warnings == (
        "metricsConfiguration.contextOptions[0].additionalLabels[0]: 'direction' is ignored (only is_reply has an "
        "effect, as in Retina)",
        "metricsConfiguration.contextOptions[1].additionalLabels[0]: 'is_reply' is ignored: only forward_count and "
        "forward_bytes have it (as in Retina)",
        "metricsConfiguration.contextOptions[1].additionalLabels[1]: 'reason' is ignored (only is_reply has an "
        "effect, as in Retina)",
    )


def test_apiserver_and_basic_names_are_warnings():
    cfg = parse_metrics_configuration({"contextOptions": [
        {"metricName": "node_apiserver_latency"}, {"metricName": "tcp_state"}, {"metricName": "forward_count"}]})
    assert [o.kind for o in cfg.context_options] == ["apiserver", None, "forward"]
    assert cfg.warnings == (
        "metricsConfiguration.contextOptions[0].metricName: 'node_apiserver_latency' (API-server latency) is not "
        "implemented yet; ignored",
        "metricsConfiguration.contextOptions[1].metricName: 'tcp_state' is accepted but produces no pod-level "
        "metric (as in Retina)",
    )


def test_destination_labels_warn_in_local_context():
    raw = one(sourceLabels=["podname"], destinationLabels=["podname"])
    assert parse_metrics_configuration(raw).warnings == ()
    assert parse_metrics_configuration(raw, remote_context=True).warnings == ()
    assert parse_metrics_configuration(raw, remote_context=False).warnings == (
        "metricsConfiguration.contextOptions[0].destinationLabels: ignored in local context (remoteContext: false): "
        "labels describe the pod of each series, taken from sourceLabels",
    )


def test_dispatch_by_substring():
    expected = {
        "drop_count": ("drop", ("adv_drop_count",)),
        "drop_bytes": ("drop", ("adv_drop_bytes",)),
        "forward_count": ("forward", ("adv_forward_count",)),
        "forward_bytes": ("forward", ("adv_forward_bytes",)),
        "tcp_flag_gauges": ("tcpflags", ("adv_tcpflags_count",)),
        "tcp_retransmission_count": ("tcpretrans", ("adv_tcpretrans_count",)),
        "dns_request_count": ("dns", ("adv_dns_request_count",)),
        "dns_response_count": ("dns", ("adv_dns_response_count",)),
        "node_apiserver_latency": ("apiserver", ()),
        "node_apiserver_handshake_latency": ("apiserver", ()),
        "node_apiserver_no_response": ("apiserver", ()),
        "dns_latency_seconds": ("dns_latency", ("adv_dns_latency_seconds",)),
        "dns_unanswered_queries": ("dns_latency", ("adv_dns_unanswered_queries",)),
        "interzone_bytes": ("interzone", ("adv_interzone_bytes",)),
        "interzone_count": ("interzone", ("adv_interzone_count",)),
        "tcp_connect_latency_seconds": ("tcp_connect", ("adv_tcp_connect_latency_seconds",)),
        "tcp_failed_connections": ("tcp_failed", ("adv_tcp_failed_connections",)),
        "tcp_rtt_seconds": ("tcp_rtt", ("adv_tcp_rtt_seconds",)),
    }
    for name in ACCEPTED_METRIC_NAMES:
        kind, families = expected.get(name, (None, ()))
        assert metric_kind(name) == kind, name
        assert family_names(name) == families, name
    assert metric_kind("TCP_Flag_Gauges") == "tcpflags"


def test_pod_label_keys():
    assert sanitize_pod_label_key("app.kubernetes.io/name") == "label_app_kubernetes_io_name"
    assert sanitize_pod_label_key("tier") == "label_tier"
    assert error({**one(), "podLabelKeys": ["app", "bad key"]}) == (
        "metricsConfiguration.podLabelKeys[1]: invalid pod label key 'bad key'; expected [prefix/]name, e.g. 'app' or "
        "'app.kubernetes.io/name'"
    )
    assert error({**one(), "podLabelKeys": ["a.b", "a_b"]}) == (
        "metricsConfiguration.podLabelKeys[1]: 'a_b' and 'a.b' both become the metric label 'label_a_b'")
    assert parse_metrics_configuration({**one(), "podLabelKeys": ["app", "app"]}).pod_label_keys == ("app",)


def test_max_series_per_metric():
    assert error({**one(), "maxSeriesPerMetric": 0}) == (
        "metricsConfiguration.maxSeriesPerMetric: invalid value 0: out of range; accepted: an integer from 1 to "
        "10000000")
    assert error({**one(), "maxSeriesPerMetric": "10"}) == (
        "metricsConfiguration.maxSeriesPerMetric: invalid value '10'; accepted: an integer from 1 to 10000000")
    assert error({**one(), "maxSeriesPerMetric": True}).startswith(
        "metricsConfiguration.maxSeriesPerMetric: invalid value true")


def test_whole_custom_resource_accepted():
    cr = {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": "m"},
          "spec": {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"]}],
                   "namespaces": {"include": ["default"]}}}
    cfg = parse_metrics_configuration(cr)
    assert cfg.context_options[0].source_labels == ("podname",)
    assert error({**cr, "spec": {"contextOptions": [{"metricName": "x"}]}}).startswith(
        "metricsConfiguration.spec.contextOptions[0].metricName: unknown metric 'x'")
    assert error({**cr, "kind": "Pod"}) == "metricsConfiguration.kind: expected 'MetricsConfiguration', not 'Pod'"


def test_label_item_types():
    assert error(one(sourceLabels="ip")) == (
        "metricsConfiguration.contextOptions[0].sourceLabels: must be a list of strings, not a string")
    assert error(one(sourceLabels=["ip", 3])) == (
        "metricsConfiguration.contextOptions[0].sourceLabels[1]: must be a string, not a number 3")
