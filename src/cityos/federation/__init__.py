"""Distributed operations (GS CIM 009 V1.9.1 clause 4.3.6, annex D): which registered context
sources get which part of a request (planning), the bounded concurrent calls to them (client),
and how their answers combine with the local one (merge). Framework-free: the NGSI-LD handlers
call in through cityos.ngsild.forwarding.
"""
