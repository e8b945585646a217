"""Hubble compatibility: the Observer/Peer gRPC layer on the agent's output ring (issue 10).

* :mod:`retina_exporter.hubble.filters`: Hubble ``flow.FlowFilter`` evaluation on the compact flow records, before
  any conversion to protobuf (``compile_filter``, ``FlowMatcher``), and the hubble CLI's flag -> filter pairing
  (``FilterBuilder``, ``filter_from_query`` for ``/debug/flows``).
"""
