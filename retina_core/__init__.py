"""The ground layer: the vocabulary every other part of retina-exporter shares, each concept defined once. It
imports nothing of ours (tests/test_architecture.py checks it).

==================================  ==============================================================================
module                              owns
==================================  ==============================================================================
:mod:`retina_core.record`           the slotted flow record and its enums (observation points, verdicts, directions,
                                    TCP flags, report reasons), mirrored by ``retina_exporter/bpf/common.h``
:mod:`retina_core.convert`          record -> Hubble ``flow.Flow`` protobuf (at the edges only)
:mod:`retina_core.ring`             the bounded single-writer ring with per-reader cursors and lost markers
:mod:`retina_core.dropreason`       kernel drop-reason names -> Hubble ``DropReason``
:mod:`retina_core.dns`              DNS wire parsing, names, the L7 ``DnsRecord``, a small encoder
:mod:`retina_core.identity`         :class:`Identity` (what an address is) and Cilium's reserved identities
:mod:`retina_core.addr`             packed <-> text IP addresses
:mod:`retina_core.units`            durations (Go syntax, integer ns) and :class:`ConfigError`
:mod:`retina_core.settings`         the config-key toolkit sections are declared with
:mod:`retina_core.metricsconfig`    the MetricsConfiguration contract (schema + parse), shared by agent and operator
:mod:`retina_core.kube`             Kubernetes client set-up, the list+watch informer, object helpers and the one
                                    identity derivation
:mod:`retina_core.telemetry`        metric-name prefixes and the control-plane counters
:mod:`retina_core.worker`           the one background-thread lifecycle
:mod:`retina_core.netns`            the one ``setns(2)`` helper
:mod:`retina_core.httpserver`       the one small route-table HTTP server and reply helpers
:mod:`retina_core.protowire`        protobuf varints for the few hand-written wire paths
:mod:`retina_core.proto`            the generated protobuf code (``flow``, ``ipcache``) as a sub-package
:mod:`retina_core.version`          the version
==================================  ==============================================================================

The most used names are re-exported here.
"""

from retina_core.identity import Identity
from retina_core.record import FlowRecord
from retina_core.ring import LostMarker, Ring
from retina_core.units import ConfigError
from retina_core.version import __version__
from retina_core.worker import Worker

__all__ = ["ConfigError", "FlowRecord", "Identity", "LostMarker", "Ring", "Worker", "__version__"]
