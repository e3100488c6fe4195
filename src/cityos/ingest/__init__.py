"""Getting real-world data in: the IoT Agent (MQTT and HTTP measures), GTFS and GTFS-Realtime feeds,
tabular open data (CSV) and the demo city.

Every adapter turns its input into NGSI-LD entity bodies and hands them to a Sink (sink.py), which
writes through the same core path as the API, so an ingested entity obeys the same rules as a
posted one and a rejected one leaves nothing behind.
"""
