"""Tests for retina_exporter.config: every key, env overrides, errors and docs/config.md consistency."""

from __future__ import annotations

import mmap
import pathlib
import re
import socket

import pytest
import yaml

from enricher import EnrichmentConfig
from metrics_module.otlpconfig import OtlpConfig
from retina_core.metricsconfig import parse_metrics_configuration
from retina_exporter.config import (
    KNOWN_PLUGINS,
    RETINA_IGNORED_KEYS,
    ApiServerConfig,
    DebugServerConfig,
    Config,
    ConfigError,
    env_var_name,
    format_duration,
    load_config,
    parse_duration,
)
from retina_exporter.hubble.config import HubbleConfig
from retina_exporter.plugins.dns.config import DnsLatencyConfig
from retina_exporter.plugins.dropreason.config import DropReasonConfig
from retina_exporter.plugins.tcpretrans.config import TcpRetransConfig
from retina_exporter.plugins.packetparser.config import TcpMetricsConfig
from retina_exporter.plugins.packetparser.config import ConntrackLifetimes

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "config.md"
S = 1_000_000_000


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_text(tmp_path: pathlib.Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env or {})


def error_of(tmp_path: pathlib.Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------- defaults


def test_defaults_without_file_or_env() -> None:
    cfg = load_config(None, {})
    assert cfg.api_server.host == "0.0.0.0"
    assert cfg.api_server.port == 10093
    assert cfg.enabled_plugins == ("dropreason", "packetforward", "linuxutil", "dns")
    assert cfg.enable_pod_level is False
    assert cfg.data_aggregation_level == "low"
    assert cfg.data_sampling_rate == 1
    assert cfg.conntrack_report_interval_ns == 30 * S
    assert cfg.conntrack_map_size == 262144
    assert cfg.ring_buffer_size == 8388608
    assert cfg.enable_tcx == "auto"
    assert cfg.host_interfaces == ()
    assert cfg.node_name == socket.gethostname()
    assert cfg.log_level == "info"
    assert cfg.output_ring_capacity == 4095
    assert cfg.bpf_pin_path == "/sys/fs/bpf/retina"
    assert cfg.warnings == ()
    assert cfg == Config()


def test_empty_file_and_null_values_mean_defaults(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "") == Config()
    assert load_text(tmp_path, "# only a comment\n") == Config()
    assert load_text(tmp_path, "apiServer:\nhostInterfaces:\nlogLevel: null\n") == Config()


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.api_server.port = 1  # type: ignore[misc]


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINA_ENABLEPODLEVEL", "true")
    monkeypatch.setenv("RETINA_APISERVER_PORT", "9999")
    cfg = load_config(None)
    assert cfg.enable_pod_level is True
    assert cfg.api_server.port == 9999


# ------------------------------------------------------------------------------------------------ every key set

FULL = """
apiServer:
  host: 127.0.0.1
  port: 9965
enabledPlugin: [dropreason, packetparser, dns]
enablePodLevel: true
dataAggregationLevel: HIGH
dataSamplingRate: 10
conntrackReportInterval: 1m30s
conntrackMapSize: 1024
packetParserRingBufferSize: 1048576
enableTCX: off
hostInterfaces: [eth0, ens5]
nodeName: node-7
logLevel: DEBUG
outputRingCapacity: 1023
bpfPinPath: /sys/fs/bpf/test
bpfPinning: true
remoteContext: true
enrichment:
  source: inventory
  inventoryFile: /etc/retina/inventory.yaml
metricsConfiguration:
  contextOptions:
    - metricName: forward_count
      sourceLabels: [ip, podname]
  namespaces:
    include: [default]
"""


def test_every_key_from_file(tmp_path: pathlib.Path) -> None:
    cfg = load_text(tmp_path, FULL)
    assert cfg == Config(
        enabled_plugins=("dropreason", "packetparser", "dns"),
        enable_pod_level=True,
        data_aggregation_level="high",
        data_sampling_rate=10,
        conntrack_report_interval_ns=90 * S,
        conntrack_map_size=1024,
        ring_buffer_size=1048576,
        enable_tcx="off",
        host_interfaces=("eth0", "ens5"),
        node_name="node-7",
        log_level="debug",
        output_ring_capacity=1023,
        bpf_pin_path="/sys/fs/bpf/test",
        bpf_pinning=True,
        remote_context=True,
        metrics_configuration=parse_metrics_configuration(
            {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["ip", "podname"]}],
             "namespaces": {"include": ["default"]}}),
        api_server=ApiServerConfig(host="127.0.0.1", port=9965),
        enrichment=EnrichmentConfig(source="inventory", inventory_file="/etc/retina/inventory.yaml"),
    )


ENV_ALL = {
    "RETINA_APISERVER_HOST": "::1",
    "RETINA_APISERVER_PORT": "8080",
    "RETINA_DEBUGSERVER_ENABLED": "no",
    "RETINA_DEBUGSERVER_HOST": "::1",
    "RETINA_DEBUGSERVER_PORT": "10094",
    "RETINA_ENABLEDPLUGIN": "tcpretrans,linuxutil",
    "RETINA_ENABLEPODLEVEL": "yes",
    "RETINA_DATAAGGREGATIONLEVEL": "high",
    "RETINA_DATASAMPLINGRATE": "3",
    "RETINA_CONNTRACKREPORTINTERVAL": "2s",
    "RETINA_CONNTRACKMAPSIZE": "16777216",
    "RETINA_PACKETPARSERRINGBUFFERSIZE": "1073741824",
    "RETINA_MERGEQUEUEDEVENTS": "true",
    "RETINA_ENABLETCX": "false",
    "RETINA_HOSTINTERFACES": "eth1",
    "RETINA_NODENAME": "from-env",
    "RETINA_NODEIP": "10.0.0.7",
    "RETINA_LOGLEVEL": "error",
    "RETINA_OUTPUTRINGCAPACITY": "1048575",
    "RETINA_BPFPINPATH": "/run/bpf",
    "RETINA_BPFPINNING": "yes",
    "RETINA_REMOTECONTEXT": "1",
    "RETINA_ENRICHMENT_SOURCE": "netns",
    "RETINA_ENRICHMENT_INVENTORYFILE": "/tmp/inv.yaml",
    "RETINA_METRICSINTERVALDURATION": "2s",
    "RETINA_ENRICHMENT_NETNSFILTER": "pod-*,web-*",
    "RETINA_ENRICHMENT_KUBECONFIG": "/etc/kube/config",
    "RETINA_ENRICHMENT_KUBECONTEXT": "prod",
    "RETINA_ENRICHMENT_OPERATORADDRESS": "op.kube-system:9090",
    "RETINA_ENRICHMENT_OPERATORTLS": "true",
    "RETINA_ENRICHMENT_OPERATORCAFILE": "/etc/ca.pem",
    "RETINA_ENRICHMENT_OPERATORCERTFILE": "/etc/c.pem",
    "RETINA_ENRICHMENT_OPERATORKEYFILE": "/etc/k.pem",
    "RETINA_ENRICHMENT_OPERATORSERVERNAME": "op",
    "RETINA_ENRICHMENT_INVENTORYPOLLINTERVAL": "250ms",
    "RETINA_ENRICHMENT_NETNSNAMESPACE": "lab",
    "RETINA_ENRICHMENT_NETNSPROCESSES": "yes",
    "RETINA_ENRICHMENT_NETNSPOLLINTERVAL": "3s",
    "RETINA_ENRICHMENT_NETNSRESCANINTERVAL": "1m",
    "RETINA_ENRICHMENT_NETNSDIR": "/var/run/netns",
    "RETINA_ENRICHMENT_ZONE": "zone-1",
    "RETINA_ENRICHMENT_KUBESTARTTIMEOUT": "20s",
    "RETINA_ENRICHMENT_KUBERESYNCINTERVAL": "10m",
    "RETINA_ENRICHMENT_OPERATORSTARTTIMEOUT": "0s",
    "RETINA_DROPREASON_SCOPE": "node",
    "RETINA_DROPREASON_IGNOREREASONS": "skb_drop_reason_not_specified,NO_SOCKET",
    "RETINA_TCPRETRANS_SCOPE": "node",
    "RETINA_DNSLATENCY_ENABLED": "false",
    "RETINA_DNSLATENCY_UNANSWEREDTIMEOUT": "2s",
    "RETINA_DNSLATENCY_BUCKETS": "0.01,0.1,1",
    "RETINA_DNSLATENCY_MAXPENDING": "100",
    "RETINA_TCPMETRICS_CONNECT": "false",
    "RETINA_TCPMETRICS_RTT": "no",
    "RETINA_TCPMETRICS_CONNECTTIMEOUT": "3s",
    "RETINA_TCPMETRICS_RTTSAMPLEINTERVAL": "500ms",
    "RETINA_TCPMETRICS_BUCKETS": "0.001, 0.01,1",
    "RETINA_CONNTRACKLIFETIMES_TCP": "2m",
    "RETINA_CONNTRACKLIFETIMES_SYNTIMEOUT": "20s",
    "RETINA_CONNTRACKLIFETIMES_TIMEWAIT": "5s",
    "RETINA_CONNTRACKLIFETIMES_OTHER": "1s",
    "RETINA_ENABLECONNTRACKMETRICS": "yes",
    "RETINA_ENABLEANNOTATIONS": "true",
    "RETINA_BYPASSLOOKUPIPOFINTEREST": "yes",
    "RETINA_FILTERMAPMAXENTRIES": "255",
    "RETINA_OTLP_ENABLED": "true",
    "RETINA_OTLP_ENDPOINT": "http://otel:4317",
    "RETINA_OTLP_PROTOCOL": "grpc",
    "RETINA_OTLP_INTERVAL": "15s",
    "RETINA_OTLP_TIMEOUT": "5s",
    "RETINA_OTLP_HEADERS": "authorization=Bearer%20x",
    "RETINA_OTLP_INSECURE": "true",
    "RETINA_OTLP_CAFILE": "",
    "RETINA_OTLP_CERTFILE": "",
    "RETINA_OTLP_KEYFILE": "",
    "RETINA_OTLP_COMPRESSION": "none",
    "RETINA_OTLP_RESOURCEATTRIBUTES": "k8s.cluster.name=prod",
    "RETINA_OTLP_FLOWLOGS_ENABLED": "true",
    "RETINA_OTLP_FLOWLOGS_ALLOWLIST": '[{"source_pod": ["lab/"]}]',
    "RETINA_OTLP_FLOWLOGS_DENYLIST": '[{"verdict": ["DROPPED"]}]',
    "RETINA_OTLP_FLOWLOGS_MAXPERSECOND": "200",
    "RETINA_HUBBLE_ENABLED": "true",
    "RETINA_HUBBLE_LISTENADDRESS": ":4244",
    "RETINA_HUBBLE_SOCKETPATH": "/run/h/hubble.sock",
    "RETINA_HUBBLE_EVENTBUFFERCAPACITY": "1048575",
    "RETINA_HUBBLE_TLS_CERTFILE": "/etc/h/tls.crt",
    "RETINA_HUBBLE_TLS_KEYFILE": "/etc/h/tls.key",
    "RETINA_HUBBLE_TLS_CLIENTCAFILES": "/etc/h/ca.crt",
    "RETINA_HUBBLE_EXPORT_FILEPATH": "/var/log/retina/flows.json",
    "RETINA_HUBBLE_EXPORT_ALLOWLIST": '[{"source_pod": ["lab/"]}]',
    "RETINA_HUBBLE_EXPORT_DENYLIST": '[{"verdict": ["DROPPED"]}]',
    "RETINA_HUBBLE_EXPORT_FIELDMASK": "time,verdict,source.pod_name",
    "RETINA_HUBBLE_EXPORT_MAXSIZEMB": "20",
    "RETINA_HUBBLE_EXPORT_MAXBACKUPS": "3",
    "RETINA_METRICSCONFIGURATION": '{"contextOptions": [{"metricName": "drop_count", "sourceLabels": ["namespace"]}]}',
}


def test_every_key_from_env() -> None:
    cfg = load_config(None, ENV_ALL)
    assert cfg == Config(
        enabled_plugins=("tcpretrans", "linuxutil"),
        enable_pod_level=True,
        data_aggregation_level="high",
        data_sampling_rate=3,
        conntrack_report_interval_ns=2 * S,
        conntrack_map_size=16777216,
        ring_buffer_size=1 << 30,
        merge_queued_events=True,
        enable_tcx="off",
        host_interfaces=("eth1",),
        node_name="from-env",
        node_ip="10.0.0.7",
        log_level="error",
        output_ring_capacity=1048575,
        bpf_pin_path="/run/bpf",
        bpf_pinning=True,
        remote_context=True,
        metrics_interval_ns=2 * S,
        enable_conntrack_metrics=True,
        enable_annotations=True,
        bypass_lookup_ip_of_interest=True,
        filter_map_max_entries=255,
        metrics_configuration=parse_metrics_configuration(
            {"contextOptions": [{"metricName": "drop_count", "sourceLabels": ["namespace"]}]}),
        api_server=ApiServerConfig(host="::1", port=8080),
        debug_server=DebugServerConfig(enabled=False, host="::1", port=10094),
        enrichment=EnrichmentConfig(
            source="netns", inventory_file="/tmp/inv.yaml", inventory_poll_interval_ns=S // 4, netns_namespace="lab",
            netns_filter=("pod-*", "web-*"), netns_processes=True, netns_poll_interval_ns=3 * S,
            netns_rescan_interval_ns=60 * S, netns_dir="/var/run/netns", zone="zone-1", kubeconfig="/etc/kube/config",
            kube_context="prod", kube_start_timeout_ns=20 * S, kube_resync_interval_ns=600 * S,
            operator_address="op.kube-system:9090", operator_tls=True, operator_ca_file="/etc/ca.pem",
            operator_cert_file="/etc/c.pem", operator_key_file="/etc/k.pem", operator_server_name="op",
            operator_start_timeout_ns=0),
        drop_reason=DropReasonConfig(scope="node", ignore_reasons=("NOT_SPECIFIED", "NO_SOCKET")),
        tcp_retrans=TcpRetransConfig(scope="node"),
        dns_latency=DnsLatencyConfig(enabled=False, unanswered_timeout_ns=2 * S, buckets=(0.01, 0.1, 1.0),
                                     max_pending=100),
        tcp_metrics=TcpMetricsConfig(connect=False, rtt=False, connect_timeout_ns=3 * S, rtt_sample_interval_ns=S // 2,
                                     buckets=(0.001, 0.01, 1.0)),
        conntrack_lifetimes=ConntrackLifetimes(tcp_ns=120 * S, syn_timeout_ns=20 * S, time_wait_ns=5 * S,
                                               other_ns=S),
        otlp=OtlpConfig(enabled=True, endpoint="http://otel:4317", protocol="grpc", interval_ns=15 * S,
                        timeout_ns=5 * S,
                        headers=(("authorization", "Bearer x"),), insecure=True, compression="none",
                        resource_attributes=(("k8s.cluster.name", "prod"),), flow_logs_enabled=True,
                        flow_logs_allow_list=('{"source_pod": ["lab/"]}',),
                        flow_logs_deny_list=('{"verdict": ["DROPPED"]}',), flow_logs_max_per_second=200),
        hubble=HubbleConfig(
            enabled=True, listen_address=":4244", socket_path="/run/h/hubble.sock", event_buffer_capacity=1048575,
            tls_cert_file="/etc/h/tls.crt", tls_key_file="/etc/h/tls.key", tls_client_ca_files=("/etc/h/ca.crt",),
            export_file_path="/var/log/retina/flows.json", export_allow_list=('{"source_pod": ["lab/"]}',),
            export_deny_list=('{"verdict": ["DROPPED"]}',), export_field_mask=("time", "verdict", "source.pod_name"),
            export_max_size_mb=20, export_max_backups=3),
    )


def test_env_overrides_file_for_every_key(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, FULL, ENV_ALL) == load_config(None, ENV_ALL)


def test_env_var_names() -> None:
    assert env_var_name("apiServer.port") == "RETINA_APISERVER_PORT"
    assert env_var_name("enablePodLevel") == "RETINA_ENABLEPODLEVEL"
    assert env_var_name("dataAggregationLevel") == "RETINA_DATAAGGREGATIONLEVEL"
    assert set(ENV_ALL) == {env_var_name(k) for k in _all_keys()}


def test_empty_and_unrelated_env_vars_are_ignored(tmp_path: pathlib.Path) -> None:
    env = {
        "RETINA_APISERVER_PORT": "",  # empty: unset, as with viper
        "RETINA_LOGLEVEL": "   ",
        "RETINA_PORT": "tcp://10.0.0.1:10093",  # injected by Kubernetes for a Service named retina
        "RETINA_SERVICE_HOST": "10.0.0.1",
    }
    cfg = load_text(tmp_path, "apiServer:\n  port: 7000\n", env)
    assert cfg.api_server.port == 7000
    assert cfg.log_level == "info"
    assert cfg.warnings == ()


def test_env_values_are_stripped() -> None:
    assert load_config(None, {"RETINA_NODENAME": "  n1 \n"}).node_name == "n1"


# --------------------------------------------------------------------------------------------------- list parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dns", ("dns",)),
        ("dns,packetparser", ("dns", "packetparser")),
        (" dns , packetparser ,, ", ("dns", "packetparser")),
        ("DNS,dns,PacketParser", ("dns", "packetparser")),
    ],
)
def test_plugin_list_from_env(text: str, expected: tuple[str, ...]) -> None:
    assert load_config(None, {"RETINA_ENABLEDPLUGIN": text}).enabled_plugins == expected


def test_plugin_list_forms_in_file(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "enabledPlugin: []\n").enabled_plugins == ()
    assert load_text(tmp_path, "enabledPlugin: 'dns, linuxutil'\n").enabled_plugins == ("dns", "linuxutil")
    # The Retina Helm chart renders this exact line (enabledPlugin_linux default).
    line = 'enabledPlugin: ["dropreason","packetforward","linuxutil","dns"]\n'
    assert load_text(tmp_path, line).enabled_plugins == ("dropreason", "packetforward", "linuxutil", "dns")
    assert load_text(tmp_path, f"enabledPlugin: [{', '.join(KNOWN_PLUGINS)}]\n").enabled_plugins == KNOWN_PLUGINS


def test_unknown_plugin_names_accepted_plugins(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "enabledPlugin: [packetparser, hnsstats]\n")
    assert message.startswith("enabledPlugin: invalid value ['packetparser', 'hnsstats'] in ")
    assert "unknown plugin 'hnsstats'" in message
    assert "accepted: a list (or comma-separated string) of: " + ", ".join(KNOWN_PLUGINS) in message


def test_plugin_list_item_must_be_string(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "enabledPlugin: [dns, 7]\n")
    assert "enabledPlugin: invalid value ['dns', 7]" in message
    assert "item 7 is not a string" in message
    assert "enabledPlugin: invalid value {'a': 1}" in error_of(tmp_path, "enabledPlugin: {a: 1}\n")


def test_host_interfaces(tmp_path: pathlib.Path) -> None:
    assert load_config(None, {"RETINA_HOSTINTERFACES": "eth0, eth1,eth0"}).host_interfaces == ("eth0", "eth1")
    assert load_text(tmp_path, "hostInterfaces: [a23456789012345]\n").host_interfaces == ("a23456789012345",)
    message = error_of(tmp_path, "hostInterfaces: [a234567890123456]\n")
    assert "hostInterfaces: invalid value ['a234567890123456']" in message
    assert "invalid interface name 'a234567890123456'" in message
    assert "accepted: a list (or comma-separated string) of interface names of 1 to 15 characters" in message
    assert "invalid interface name 'a/b'" in error_of(tmp_path, "hostInterfaces: ['a/b']\n")


# --------------------------------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False)],
)
def test_bool_from_env(text: str, expected: bool) -> None:
    assert load_config(None, {"RETINA_ENABLEPODLEVEL": text}).enable_pod_level is expected


def test_bool_in_file(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "enablePodLevel: true\n").enable_pod_level is True
    assert load_text(tmp_path, "enablePodLevel: 'yes'\n").enable_pod_level is True
    assert load_text(tmp_path, "enablePodLevel: false\n").enable_pod_level is False


@pytest.mark.parametrize("bad", ["maybe", "2", "on"])
def test_bad_bool_from_env(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"RETINA_ENABLEPODLEVEL": bad})
    assert str(info.value) == (
        f"enablePodLevel: invalid value '{bad}' from environment variable RETINA_ENABLEPODLEVEL; "
        "accepted: true, false (also 1/0, yes/no)"
    )


def test_bad_bool_in_file(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "enablePodLevel: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"enablePodLevel: invalid value 3 in {path}; accepted: true, false (also 1/0, yes/no)"


# --------------------------------------------------------------------------------------------- scalar keys


def test_api_server(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "apiServer: {port: 1}\n").api_server.port == 1
    assert load_text(tmp_path, "apiServer: {port: '65535'}\n").api_server.port == 65535
    path = write(tmp_path, "apiServer:\n  port: 70000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == (
        f"apiServer.port: invalid value 70000 in {path}: out of range; accepted: an integer from 1 to 65535"
    )
    assert "apiServer.port: invalid value 0 " in error_of(tmp_path, "apiServer: {port: 0}\n")
    assert "apiServer.port: invalid value true " in error_of(tmp_path, "apiServer: {port: true}\n")
    assert "not an integer" in error_of(tmp_path, "apiServer: {port: 10093.0}\n")
    message = error_of(tmp_path, "apiServer: {host: ''}\n")
    assert "apiServer.host: invalid value ''" in message
    assert "accepted: a non-empty host name or IP address" in message
    message = error_of(tmp_path, "apiServer: 10093\n")
    assert "apiServer: invalid value 10093 in " in message
    assert "accepted: a mapping with keys host, port" in message


def test_api_server_port_env_error_names_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"RETINA_APISERVER_PORT": "http"})
    assert str(info.value) == (
        "apiServer.port: invalid value 'http' from environment variable RETINA_APISERVER_PORT: not an integer; "
        "accepted: an integer from 1 to 65535"
    )


def test_env_error_wins_over_valid_file_and_vice_versa(tmp_path: pathlib.Path) -> None:
    # The effective (env) value is validated, and the message names the variable, not the file.
    message = error_of(tmp_path, "apiServer: {port: 8080}\n", {"RETINA_APISERVER_PORT": "0"})
    assert "from environment variable RETINA_APISERVER_PORT" in message
    # A bad file value overridden from the environment is not used, so it is not an error.
    assert load_text(tmp_path, "apiServer: {port: 0}\n", {"RETINA_APISERVER_PORT": "81"}).api_server.port == 81


def test_data_aggregation_level(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "dataAggregationLevel: High\n").data_aggregation_level == "high"
    assert load_config(None, {"RETINA_DATAAGGREGATIONLEVEL": "LOW"}).data_aggregation_level == "low"
    message = error_of(tmp_path, "dataAggregationLevel: medium\n")
    assert message.startswith("dataAggregationLevel: invalid value 'medium' in ")
    assert message.endswith("; accepted: low, high")


@pytest.mark.parametrize(("value", "expected"), [("0", 1), ("1", 1), ("7", 7), ("4294967295", 4294967295)])
def test_data_sampling_rate(value: str, expected: int) -> None:
    assert load_config(None, {"RETINA_DATASAMPLINGRATE": value}).data_sampling_rate == expected


@pytest.mark.parametrize("bad", ["-1", "4294967296", "1.5", "x"])
def test_bad_data_sampling_rate(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"RETINA_DATASAMPLINGRATE": bad})
    message = str(info.value)
    assert message.startswith(
        f"dataSamplingRate: invalid value '{bad}' from environment variable RETINA_DATASAMPLINGRATE"
    )
    assert message.endswith("accepted: an integer from 1 to 4294967295 (0 means 1)")


@pytest.mark.parametrize(("value", "ok"), [(1023, False), (1024, True), (16777216, True), (16777217, False)])
def test_conntrack_map_size(tmp_path: pathlib.Path, value: int, ok: bool) -> None:
    text = f"conntrackMapSize: {value}\n"
    if ok:
        assert load_text(tmp_path, text).conntrack_map_size == value
    else:
        message = error_of(tmp_path, text)
        assert message.startswith(f"conntrackMapSize: invalid value {value} in ")
        assert message.endswith(": out of range; accepted: an integer from 1024 to 16777216")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (mmap.PAGESIZE // 2, "out of range"),
        (3 * mmap.PAGESIZE, "not a power of two"),
        (1 << 31, "out of range"),
        (8388607, "not a power of two"),
    ],
)
def test_bad_ring_buffer_size(tmp_path: pathlib.Path, value: int, reason: str) -> None:
    message = error_of(tmp_path, f"packetParserRingBufferSize: {value}\n")
    assert message.startswith(f"packetParserRingBufferSize: invalid value {value} in ")
    assert f": {reason}; accepted: a power of two from {mmap.PAGESIZE} (the page size) to 1073741824 (1 GiB)" in message


@pytest.mark.parametrize("value", [mmap.PAGESIZE, 8388608, 1 << 30])
def test_ring_buffer_size(tmp_path: pathlib.Path, value: int) -> None:
    assert load_text(tmp_path, f"packetParserRingBufferSize: {value}\n").ring_buffer_size == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [("auto", "auto"), ("AUTO", "auto"), ("off", "off"), ("'off'", "off"), ("false", "off"), ("true", "auto"),
     ("no", "off"), ("'0'", "off")],
)
def test_enable_tcx_in_file(tmp_path: pathlib.Path, text: str, expected: str) -> None:
    assert load_text(tmp_path, f"enableTCX: {text}\n").enable_tcx == expected


@pytest.mark.parametrize(("text", "expected"), [("off", "off"), ("Auto", "auto"), ("true", "auto"), ("0", "off")])
def test_enable_tcx_from_env(text: str, expected: str) -> None:
    assert load_config(None, {"RETINA_ENABLETCX": text}).enable_tcx == expected


def test_bad_enable_tcx(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "enableTCX: force\n")
    assert message.startswith("enableTCX: invalid value 'force' in ")
    assert message.endswith("; accepted: auto, off (true means auto, false means off)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("debug", "debug"), ("INFO", "info"), ("warning", "warning"), ("warn", "warning"), ("Error", "error")],
)
def test_log_level(text: str, expected: str) -> None:
    assert load_config(None, {"RETINA_LOGLEVEL": text}).log_level == expected


def test_bad_log_level(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "logLevel: trace\n")
    assert message.startswith("logLevel: invalid value 'trace' in ")
    assert message.endswith("; accepted: debug, info, warning (or warn), error, critical (or panic, fatal)")


def test_node_name_and_pin_path(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "nodeName: 12345\n").node_name == "12345"
    assert "nodeName: invalid value '' " in error_of(tmp_path, "nodeName: ''\n")
    message = error_of(tmp_path, "bpfPinPath: sys/fs/bpf\n")
    assert message.startswith("bpfPinPath: invalid value 'sys/fs/bpf' in ")
    assert message.endswith(": not an absolute path; accepted: an absolute path")


# ------------------------------------------------------------------------------------------- output ring capacity


@pytest.mark.parametrize("value", [1, 3, 7, 1023, 4095, 65535, 1048575])
def test_output_ring_capacity(tmp_path: pathlib.Path, value: int) -> None:
    assert load_text(tmp_path, f"outputRingCapacity: {value}\n").output_ring_capacity == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [(0, "out of range"), (2, "not one less than a power of two"), (1000, "not one less than a power of two"),
     (4096, "not one less than a power of two"), (2097151, "out of range"), (-1, "out of range")],
)
def test_bad_output_ring_capacity(tmp_path: pathlib.Path, value: int, reason: str) -> None:
    message = error_of(tmp_path, f"outputRingCapacity: {value}\n")
    assert message.startswith(f"outputRingCapacity: invalid value {value} in ")
    assert message.endswith(
        f": {reason}; accepted: one less than a power of two, 2^n - 1 with 1 <= n <= 20"
        " (1, 3, 7, ... 4095, ... 1048575)"
    )


# ------------------------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("30s", 30 * S),
        ("1m", 60 * S),
        ("500ms", 500_000_000),
        ("1m30s", 90 * S),
        ("1h2m3s", 3723 * S),
        ("1.5s", 1_500_000_000),
        (".5s", 500_000_000),
        ("2h", 7200 * S),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("10μs", 10_000),
        ("7ns", 7),
        ("1.0000000009s", 1_000_000_000),  # sub-nanosecond part truncated
        ("0", 0),
        ("30", 30 * S),
        ("2.5", 2_500_000_000),
        (" 45s ", 45 * S),
        (30, 30 * S),
        (0.25, 250_000_000),
    ],
)
def test_parse_duration(text: str | int | float, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("bad", ["", "s", "30x", "-1s", "1m 30s", "1e3s", "30S", "1..5s", True, -1, float("nan"), None])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(bad)  # type: ignore[arg-type]
    assert str(info.value).startswith("invalid duration ")


def test_parse_duration_overflow() -> None:
    assert parse_duration("2562047h") == 2562047 * 3600 * S
    with pytest.raises(ConfigError, match="longer than the maximum"):
        parse_duration("2562048h")


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (7, "7ns"), (10_000, "10us"), (500_000_000, "500ms"), (30 * S, "30s"), (90 * S, "1m30s"),
     (3600 * S, "1h"), (3723 * S, "1h2m3s"), (1_500_000_000, "1.5s"), (61 * S + 1, "1m1.000000001s")],
)
def test_format_duration_round_trip(ns: int, text: str) -> None:
    assert format_duration(ns) == text
    assert parse_duration(text) == ns


def test_conntrack_report_interval(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "conntrackReportInterval: 1m30s\n").conntrack_report_interval_ns == 90 * S
    assert load_text(tmp_path, "conntrackReportInterval: 45\n").conntrack_report_interval_ns == 45 * S
    assert load_text(tmp_path, "conntrackReportInterval: 1s\n").conntrack_report_interval_ns == S
    assert load_text(tmp_path, "conntrackReportInterval: 1500ms\n").conntrack_report_interval_ns == 1_500_000_000
    assert load_config(None, {"RETINA_CONNTRACKREPORTINTERVAL": "2m"}).conntrack_report_interval_ns == 120 * S


def test_conntrack_report_interval_below_minimum(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "conntrackReportInterval: 500ms\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == (
        f"conntrackReportInterval: invalid value '500ms' in {path}: below the minimum of 1s; "
        "accepted: a duration of at least 1s such as '30s', '1m30s', '1500ms', or a number of seconds"
    )
    assert ": below the minimum of 1s;" in error_of(tmp_path, "conntrackReportInterval: 0\n")
    assert ": not a duration;" in error_of(tmp_path, "conntrackReportInterval: thirty\n")


# -------------------------------------------------------------------------------------- unknown and ignored keys


def test_unknown_key_suggests_close_match(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "enablePodLvl: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"config file {path}: unknown key 'enablePodLvl' (did you mean 'enablePodLevel'?)"


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("enablepodlevel: true\n", "enablepodlevel", "enablePodLevel"),  # keys are case-sensitive
        ("apiServer:\n  prot: 1\n", "apiServer.prot", "apiServer.port"),
        ("enabledPlugins: [dns]\n", "enabledPlugins", "enabledPlugin"),
        ("metricInterval: 10\n", "metricInterval", "metricsInterval"),  # close to an ignored Retina key
        ("ringBufferSize: 4096\n", "ringBufferSize", "packetParserRingBufferSize"),
    ],
)
def test_unknown_key_suggestions(tmp_path: pathlib.Path, text: str, key: str, suggestion: str) -> None:
    assert error_of(tmp_path, text).endswith(f": unknown key {key!r} (did you mean {suggestion!r}?)")


def test_unknown_key_without_match_lists_known_keys(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "zzz: 1\n")
    assert message.endswith(
        ": unknown key 'zzz'; known keys: enabledPlugin, enablePodLevel, dataAggregationLevel, "
        "dataSamplingRate, conntrackReportInterval, conntrackMapSize, packetParserRingBufferSize, enableTCX, "
        "hostInterfaces, nodeName, nodeIP, logLevel, outputRingCapacity, bpfPinPath, bpfPinning, "
        "remoteContext, "
        "metricsIntervalDuration, enableConntrackMetrics, enableAnnotations, bypassLookupIPOfInterest, "
        "filterMapMaxEntries, mergeQueuedEvents, metricsConfiguration, apiServer, debugServer, enrichment, hubble, "
        "dropReason, tcpRetrans, dnsLatency, tcpMetrics, conntrackLifetimes, otlp, metricsInterval"
    )
    assert error_of(tmp_path, "apiServer: {zzz: 1}\n").endswith(
        ": unknown key 'apiServer.zzz'; known keys: apiServer.host, apiServer.port"
    )


def test_non_string_key(tmp_path: pathlib.Path) -> None:
    # YAML 1.1 reads an unquoted `on` key as the boolean true.
    assert error_of(tmp_path, "on: 1\n").endswith(": key true under the top level is not a string")
    assert error_of(tmp_path, "apiServer: {1: 2}\n").endswith(": key 1 under apiServer is not a string")


def test_ignored_retina_keys_warn(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        "telemetryInterval: 10s\nenableTelemetry: false\n"
        "packetParserRingBuffer:\n  a: [1, 2]\nenablePodLevel: true\n",
    )
    cfg = load_config(path, {})
    assert cfg.enable_pod_level is True
    assert cfg.warnings == tuple(
        f"config key {k!r} in {path} is a Retina setting that retina-exporter does not use; ignored"
        for k in ("telemetryInterval", "enableTelemetry", "packetParserRingBuffer")
    )


def test_every_ignored_key_is_accepted(tmp_path: pathlib.Path) -> None:
    cfg = load_text(tmp_path, "".join(f"{k}: 1\n" for k in RETINA_IGNORED_KEYS))
    assert len(cfg.warnings) == len(RETINA_IGNORED_KEYS) == 5
    assert cfg.to_dict() == Config(node_name=cfg.node_name).to_dict()


def test_ignored_key_from_env_warns() -> None:
    cfg = load_config(None, {"RETINA_ENABLETELEMETRY": "true"})
    assert cfg.warnings == (
        "environment variable RETINA_ENABLETELEMETRY sets Retina key 'enableTelemetry', "
        "which retina-exporter does not use; ignored",
    )


def test_stock_retina_helm_config_loads(tmp_path: pathlib.Path) -> None:
    # What Retina's chart renders into config.yaml with its default values.
    text = """apiServer:
  host: 0.0.0.0
  port: 10093
logLevel: debug
enabledPlugin: ["dropreason","packetforward","linuxutil","dns"]
metricsInterval: 
metricsIntervalDuration: 10s
enableTelemetry: false
enablePodLevel: true
enableConntrackMetrics: false
remoteContext: false
enableAnnotations: true
bypassLookupIPOfInterest: false
dataAggregationLevel: low
telemetryInterval: 15m
dataSamplingRate: 1
"""
    cfg = load_text(tmp_path, text)
    assert cfg.enabled_plugins == ("dropreason", "packetforward", "linuxutil", "dns")
    assert cfg.enable_pod_level is True
    assert cfg.log_level == "debug"
    assert cfg.remote_context is False
    assert cfg.enable_annotations is True
    assert cfg.metrics_interval_ns == 10 * S
    assert cfg.enable_conntrack_metrics is False
    assert len(cfg.warnings) == 2


# ------------------------------------------------------------------------------------------------ file problems


def test_missing_file(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"config file {path}: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), {})
    assert str(info.value) == f"config file {tmp_path}: cannot read: Is a directory"


def test_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"nodeName: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"config file {path}: not UTF-8 text (byte offset 10)"


def test_malformed_yaml_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "enablePodLevel: true\napiServer:\n  port: 1\n   host: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config file {path}: invalid YAML at line 4, column 8: ")
    assert "mapping values are not allowed here" in message


def test_unclosed_flow_list(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "enabledPlugin: [dns\nlogLevel: info\n")
    assert re.search(r": invalid YAML at line \d+, column \d+: ", message)


def test_duplicate_key_is_an_error(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "logLevel: info\nnodeName: a\nlogLevel: debug\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"config file {path}: invalid YAML at line 3, column 1: duplicate key 'logLevel'"


def test_top_level_must_be_a_mapping(tmp_path: pathlib.Path) -> None:
    assert error_of(tmp_path, "- a\n- b\n").endswith(
        ": expected a mapping of keys to values at the top level, got ['a', 'b']"
    )


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_long_values_are_truncated_in_messages(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, f"logLevel: {'x' * 500}\n")
    assert "..." in message
    assert len(message) < 300


# -------------------------------------------------------------------------------------------------- to_dict


def test_to_dict_defaults() -> None:
    assert Config(node_name="n").to_dict() == {
        "apiServer": {"host": "0.0.0.0", "port": 10093},
        "debugServer": {"enabled": True, "host": "127.0.0.1", "port": None},
        "enabledPlugin": ["dropreason", "packetforward", "linuxutil", "dns"],
        "enablePodLevel": False,
        "dataAggregationLevel": "low",
        "dataSamplingRate": 1,
        "conntrackReportInterval": "30s",
        "conntrackMapSize": 262144,
        "packetParserRingBufferSize": 8388608,
        "mergeQueuedEvents": False,
        "enableTCX": "auto",
        "hostInterfaces": [],
        "nodeName": "n",
        "nodeIP": "",
        "logLevel": "info",
        "outputRingCapacity": 4095,
        "bpfPinPath": "/sys/fs/bpf/retina",
        "bpfPinning": False,
        "remoteContext": False,
        "enrichment": {"source": "none", "inventoryFile": "", "inventoryPollInterval": "1s", "netnsNamespace": "netns",
                       "netnsFilter": ["*"], "netnsProcesses": False, "netnsPollInterval": "2s",
                       "netnsRescanInterval": "10s", "netnsDir": "/run/netns", "zone": "", "kubeconfig": "",
                       "kubeContext": "", "kubeStartTimeout": "10s", "kubeResyncInterval": "5m",
                       "operatorAddress": "retina-operator:9090", "operatorTLS": False, "operatorCAFile": "",
                       "operatorCertFile": "", "operatorKeyFile": "", "operatorServerName": "",
                       "operatorStartTimeout": "10s"},
        "metricsIntervalDuration": "10s",
        "dropReason": {"scope": "all", "ignoreReasons": ["NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED"]},
        "tcpRetrans": {"scope": "all"},
        "dnsLatency": {"enabled": True, "unansweredTimeout": "5s",
                       "buckets": [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                   10.0],
                       "maxPending": 65536},
        "tcpMetrics": {"connect": True, "rtt": True, "connectTimeout": "10s", "rttSampleInterval": "10s",
                       "buckets": [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0]},
        "conntrackLifetimes": {"tcp": "6m", "synTimeout": "1m", "timeWait": "30s", "other": "1m"},
        "enableConntrackMetrics": False,
        "enableAnnotations": False,
        "bypassLookupIPOfInterest": False,
        "filterMapMaxEntries": 4096,
        "otlp": {"enabled": False, "endpoint": None, "protocol": None, "interval": None, "timeout": None,
                 "headers": {}, "insecure": None, "caFile": None, "certFile": None, "keyFile": None,
                 "compression": None, "resourceAttributes": {},
                 "flowLogs": {"enabled": False, "allowList": [], "denyList": [], "maxPerSecond": 1000}},
        "metricsConfiguration": None,
        "hubble": {"enabled": False, "listenAddress": "", "socketPath": "/var/run/retina-exporter/hubble.sock",
                   "eventBufferCapacity": None,
                   "tls": {"certFile": "", "keyFile": "", "clientCAFiles": []},
                   "export": {"filePath": "", "allowList": [], "denyList": [], "fieldMask": [], "maxSizeMb": 10,
                              "maxBackups": 5}},
    }


def test_to_dict_round_trips(tmp_path: pathlib.Path) -> None:
    cfg = load_text(tmp_path, FULL)
    assert cfg.to_dict()["conntrackReportInterval"] == "1m30s"
    assert cfg.to_dict()["enableTCX"] == "off"
    assert load_text(tmp_path, yaml.safe_dump(cfg.to_dict())) == cfg


# ------------------------------------------------------------------------------------------------------ docs


def _all_keys() -> list[str]:
    def walk(prefix: str, value) -> list[str]:
        if isinstance(value, dict) and value and prefix != "metricsConfiguration":  # {} is a value (otlp.headers)
            return [k for name, v in value.items() for k in walk(f"{prefix}.{name}" if prefix else name, v)]
        return [prefix]

    return walk("", Config(node_name="n").to_dict())


def test_docs_list_every_key_env_var_and_ignored_key() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    rows = [line for line in docs.splitlines() if line.startswith("| `")]
    for key in _all_keys():
        row = next((r for r in rows if re.match(rf"\| `{re.escape(key)}`( \*\(ours\)\*)? \|", r)), None)
        assert row is not None, key
        assert f"`{env_var_name(key)}`" in row, key
        default_cell = row.split(" | ")[2]
        if key != "nodeName":  # documented as the host name
            value = Config().to_dict()
            for part in key.split("."):
                value = value[part]
            assert yaml.safe_load(default_cell.strip("`")) == value, key
    for key in RETINA_IGNORED_KEYS:
        assert f"`{key}`" in docs, key
    for plugin in KNOWN_PLUGINS:
        assert f"`{plugin}`" in docs, plugin


def test_yaml_merge_key_may_be_overridden(tmp_path: pathlib.Path) -> None:
    cfg = load_text(tmp_path, "apiServer:\n  <<: {host: h1, port: 1}\n  port: 2\n")
    assert (cfg.api_server.host, cfg.api_server.port) == ("h1", 2)


def test_inventory_source_needs_a_file() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, {"RETINA_ENRICHMENT_SOURCE": "inventory"})
    assert str(e.value).startswith("enrichment.inventoryFile: required when enrichment.source is 'inventory'")


def test_bad_metrics_configuration_names_the_field(tmp_path: pathlib.Path) -> None:
    text = "metricsConfiguration:\n  contextOptions:\n    - metricName: forward_count\n      sourceLabels: [pod]\n"
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert "metricsConfiguration.contextOptions[0].sourceLabels[0]" in str(e.value)
    assert "'pod'" in str(e.value)


def test_legacy_metrics_interval_seconds() -> None:
    assert load_config(None, {"RETINA_METRICSINTERVAL": "3"}).metrics_interval_ns == 3 * S
    # The duration form wins when both are given.
    env = {"RETINA_METRICSINTERVAL": "3", "RETINA_METRICSINTERVALDURATION": "500ms"}
    assert load_config(None, env).metrics_interval_ns == S // 2


def test_legacy_metrics_interval_in_file(tmp_path: pathlib.Path) -> None:
    assert load_text(tmp_path, "metricsInterval: 7\n").metrics_interval_ns == 7 * S
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, "metricsInterval: soon\n")
    assert str(e.value).startswith("metricsIntervalDuration: invalid value 'soon'")


def test_hubble_keys_are_checked(tmp_path: pathlib.Path) -> None:
    cfg = load_text(tmp_path, "hubble:\n  enabled: true\n  listenAddress: ':4244'\n  tls:\n    certFile: /c\n"
                              "    keyFile: /k\n  export:\n    allowList: [{source_pod: [lab/]}]\n")
    assert cfg.hubble.enabled and cfg.hubble.listen_address == ":4244" and cfg.hubble.tls_cert_file == "/c"
    assert cfg.hubble.export_allow_list == ('{"source_pod": ["lab/"]}',)
    assert cfg.to_dict()["hubble"]["tls"]["certFile"] == "/c"
    assert load_text(tmp_path, yaml.safe_dump(cfg.to_dict())) == cfg
    cases = {
        "hubble:\n  listenAddress: 'nope'\n": "hubble.listenAddress: invalid value 'nope'",
        "hubble:\n  tls:\n    certFile: /c\n": "hubble.tls: certFile and keyFile go together",
        "hubble:\n  tls:\n    nope: 1\n": "unknown key 'hubble.tls.nope'",
        "hubble:\n  export:\n    allowList: [{source_ip: ['10.0.0.300']}]\n": "hubble.export.allowList: invalid value",
        "hubble:\n  export:\n    fieldMask: [nope]\n": "hubble.export.fieldMask: invalid value",
        "hubble:\n  eventBufferCapacity: 100\n": "hubble.eventBufferCapacity: invalid value 100",
        "outputRingCapacity: 1023\nhubble:\n  eventBufferCapacity: 4095\n":
            "hubble.eventBufferCapacity (4095) and outputRingCapacity (1023) size the same flow ring",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as e:
            load_text(tmp_path, text)
        assert message in str(e.value), (text, str(e.value))
    assert load_text(tmp_path, "hubble:\n  eventBufferCapacity: 65535\n").output_ring_capacity == 65535


def test_tcp_metrics_section(tmp_path: pathlib.Path) -> None:
    cfg = load_config(None, {"RETINA_TCPMETRICS_BUCKETS": "0.001, 0.01,1", "RETINA_TCPMETRICS_CONNECTTIMEOUT": "3s"})
    assert cfg.tcp_metrics.buckets == (0.001, 0.01, 1.0)
    assert cfg.tcp_metrics.bounds_ns() == (1_000_000, 10_000_000, 1_000_000_000)
    assert cfg.tcp_metrics.connect_timeout_ns == 3 * 10**9 and cfg.tcp_metrics.connect and cfg.tcp_metrics.rtt
    for text, reason in (("tcpMetrics: {buckets: [0.1, 0.01]}", "not strictly ascending"),
                         ("tcpMetrics: {buckets: [0, 1]}", "item 0 is not a positive number of seconds"),
                         ("tcpMetrics: {buckets: []}", "not a non-empty list of seconds"),
                         (f"tcpMetrics: {{buckets: {list(range(1, 34))}}}", "33 buckets, at most 32")):
        assert reason in error_of(tmp_path, text + "\n"), text
    assert error_of(tmp_path, "tcpMetrics: {connectTimeout: 60s}\n").startswith(
        "tcpMetrics.connectTimeout: 1m is not below conntrackLifetimes.synTimeout (1m), the conntrack's handshake "
        "lifetime; set it lower (or raise synTimeout)")
    assert error_of(tmp_path, "tcpMetrics: {connectTimeout: 5s}\nconntrackLifetimes: {synTimeout: 5s}\n").startswith(
        "tcpMetrics.connectTimeout: 5s is not below conntrackLifetimes.synTimeout (5s)")
    assert load_text(tmp_path, "tcpMetrics: {connect: false, connectTimeout: 5s}\n"
                               "conntrackLifetimes: {synTimeout: 5s}\n").tcp_metrics.connect is False


def test_conntrack_lifetimes_below_minimum_named(tmp_path: pathlib.Path) -> None:
    message = error_of(tmp_path, "conntrackLifetimes: {timeWait: 500ms}\n")
    assert message.startswith("conntrackLifetimes.timeWait: invalid value '500ms'")
    assert "below the minimum of 1s" in message and "a duration of at least 1s such as '30s'" in message
