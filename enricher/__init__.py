"""Enrichment: an IP -> identity cache and the enricher that stamps flow records with identities."""
