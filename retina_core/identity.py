"""What an address is: the identity the enricher puts on a flow record's ``source``/``destination``.

Identities are immutable and shared: the cache hands out the same object for every flow of an address, so the
per-event cost of enrichment is two dict lookups. Attribute names match what ``retina_core.convert``
(``fill_endpoint``) and the metrics module read.
"""

from __future__ import annotations

KIND_POD = "pod"
KIND_SERVICE = "service"
KIND_NODE = "node"
KIND_HOST = "host"
KIND_WORLD = "world"

# Cilium's reserved numeric identities (Hubble's Endpoint.identity).
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_REMOTE_NODE = 6


class Identity:
    """One address's identity.

    * ``kind``: pod | service | node | host | world.
    * ``namespace``, ``pod_name``: for pods (``pod_name`` empty otherwise); services carry their namespace too.
    * ``labels``: tuple of ``"k=v"`` strings, sorted.
    * ``workloads``: tuple of ``(kind, name)``; the first is the *top* owner (a Deployment rather than its
      ReplicaSet), followed by the direct owner when it differs.
    * ``service``: the service name for a service address; for a pod, the name of a service selecting it if known.
    * ``node_name``, ``zone``: where the address lives (``topology.kubernetes.io/zone`` of the node).
    * ``names``: DNS-ish names for Hubble's ``source_names``/``destination_names``.
    * ``identity``: numeric identity (Cilium's reserved numbers for host/world/remote-node, otherwise a stable
      hash of namespace and labels in 256..65535).
    """

    __slots__ = ("kind", "namespace", "pod_name", "labels", "workloads", "service", "node_name", "zone", "names",
                 "identity", "ip")

    def __init__(
        self,
        kind: str,
        namespace: str = "",
        pod_name: str = "",
        labels: tuple[str, ...] = (),
        workloads: tuple[tuple[str, str], ...] = (),
        service: str = "",
        node_name: str = "",
        zone: str = "",
        names: tuple[str, ...] = (),
        identity: int = 0,
        ip: str = "",
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.pod_name = pod_name
        self.labels = tuple(sorted(labels))
        self.workloads = tuple(workloads)
        self.service = service
        self.node_name = node_name
        self.zone = zone
        self.names = tuple(names)
        self.identity = identity or numeric_identity(kind, namespace, self.labels)
        self.ip = ip

    @property
    def workload_kind(self) -> str:
        return self.workloads[0][0] if self.workloads else ""

    @property
    def workload_name(self) -> str:
        return self.workloads[0][1] if self.workloads else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __hash__(self) -> int:
        return hash((self.kind, self.namespace, self.pod_name, self.ip))

    def __repr__(self) -> str:
        return f"Identity({', '.join(f'{s}={getattr(self, s)!r}' for s in self.__slots__ if getattr(self, s))})"

    def to_dict(self) -> dict:
        return {s: (list(v) if isinstance(v, tuple) else v) for s in self.__slots__ if (v := getattr(self, s))}


def numeric_identity(kind: str, namespace: str, labels: tuple[str, ...]) -> int:
    if kind == KIND_WORLD:
        return IDENTITY_WORLD
    if kind == KIND_HOST:
        return IDENTITY_HOST
    if kind == KIND_NODE:
        return IDENTITY_REMOTE_NODE
    import zlib

    h = zlib.crc32(("\x00".join((namespace,) + tuple(labels))).encode())
    return 256 + h % (65536 - 256)


WORLD = Identity(KIND_WORLD)
