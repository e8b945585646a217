"""Hubble's ``peer.Peer`` service: how Hubble Relay finds every agent.

``Notify`` sends ``PEER_ADDED`` for every node known now (this node first), then ``PEER_ADDED`` /
``PEER_UPDATED`` (address changed) / ``PEER_DELETED`` as the node list changes, until the client goes away. The
node list comes from a callable the assembler provides (:class:`PeerSource`): this node alone, or every node of
the cluster when the agent knows them (the operator's IP cache, or the kubernetes source). Names and TLS server
names follow Cilium's conventions: ``tls.server_name`` is ``<node>.<cluster>.hubble-grpc.cilium.io`` with the
node name's dots turned into dashes, and is left unset when TLS is off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from retina_core.addr import ip_text
from retina_core.proto import peer_pb2, peer_pb2_grpc

__all__ = ["PeerService", "PeerSource", "peers_from_identities", "tls_server_name"]

#: ``() -> {node name: address}``: the nodes to announce (this node's entry included).
PeerSource = Callable[[], Mapping[str, str]]

_POLL_S = 1.0


def tls_server_name(node_name: str, cluster: str = "default") -> str:
    """Cilium's server name for a node's Hubble certificate: ``<node>.<cluster>.hubble-grpc.cilium.io``."""
    return f"{node_name.replace('.', '-')}.{(cluster or 'default').replace('.', '-')}.hubble-grpc.cilium.io"


def peers_from_identities(identities: Mapping[bytes, Any], own_name: str, own_address: str,
                          port: int) -> dict[str, str]:
    """This node first, then every node of an IP -> identity view (identities of kind ``node`` or ``host`` with a
    node name), each at its lowest address (IPv4 before IPv6) and ``port``: the peers Relay should dial."""
    out = {own_name: own_address} if own_name else {}
    found: dict[str, str] = {}
    for ip, ident in sorted(identities.items(), key=lambda kv: (len(kv[0]), kv[0])):
        name = getattr(ident, "node_name", "")
        if getattr(ident, "kind", "") in ("node", "host") and name and name not in found:
            text = ip_text(ip)
            found[name] = f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
    for name in sorted(found):
        out.setdefault(name, found[name])
    return out


class PeerService(peer_pb2_grpc.PeerServicer):
    """``nodes()`` gives the current {name: address}; ``tls`` says whether peers serve TLS."""

    def __init__(self, nodes: PeerSource, tls: bool, stopping: threading.Event | None = None,
                 poll_s: float = _POLL_S) -> None:
        self.nodes = nodes
        self.tls = tls
        self.stopping = stopping or threading.Event()
        self.poll_s = poll_s

    def _note(self, name: str, address: str, kind: int) -> Any:
        msg = peer_pb2.ChangeNotification(name=name, address=address, type=kind)
        if self.tls:
            msg.tls.server_name = tls_server_name(name)
        return msg

    def Notify(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802 - gRPC name
        known: dict[str, str] = {}
        while not self.stopping.is_set() and context.is_active():
            current = dict(self.nodes())
            for name in sorted(known.keys() - current.keys()):
                yield self._note(name, known[name], peer_pb2.PEER_DELETED)
            for name, address in current.items():
                if name not in known:
                    yield self._note(name, address, peer_pb2.PEER_ADDED)
                elif known[name] != address:
                    yield self._note(name, address, peer_pb2.PEER_UPDATED)
            known = current
            self.stopping.wait(self.poll_s)
