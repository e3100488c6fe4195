"""Snapshots (ETSI GS CIM 009 V1.9.1 clause 5.16; resources 6.36-6.38; the NGSILD-Snapshot header 6.3.22).

A snapshot freezes the entities its snapshotQueries select into a copy that later changes do not
touch. The copy is kept as ordinary entities of a hidden tenant of its own (scope.py), written
through the store's one write path, so every query, retrieval and discovery operation works on it
unchanged: a request with NGSILD-Snapshot is simply served from that tenant. model.py validates and
renders the Snapshot documents, fill.py makes the copy, remote.py asks the registered context
sources, http.py holds the thin handlers and the middleware that applies the header.
"""
