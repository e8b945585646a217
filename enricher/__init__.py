"""Enrichment: an IP -> identity cache and the enricher that stamps flow records with identities.

* :mod:`retina_core.identity`: :class:`~retina_core.identity.Identity`, what an address is.
* :mod:`enricher.ipcache`: :class:`~enricher.ipcache.IPCache`, lock-free lookups, atomic copy-on-write updates.
* :mod:`enricher.source`: the :class:`~enricher.source.Source` interface and :func:`~enricher.source.make_source`.
* :mod:`enricher.inventory`: the ``inventory`` source (a YAML file, re-read on change).
* :mod:`enricher.netns`: the ``netns`` source (pods from network namespaces on the host).
* :mod:`enricher.enricher`: :class:`~enricher.enricher.Enricher`, the ring-to-ring thread.
"""
