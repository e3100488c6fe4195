"""GTFS-Realtime: read a FeedMessage (file or URL, binary protobuf or text format) and apply it as
entity updates, once or polled at an interval.

VehiclePositions upsert Vehicle entities (location, bearing, speed, trip and stop, observedAt from
the vehicle's timestamp); TripUpdates add delay and stop-time updates to the GtfsTrip entity of the
static feed; Alerts become Alert entities linked to the routes and stops they affect. Ids use the
same scheme as the static import (gtfs.urn), so both meet in one graph.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from google.protobuf import text_format
from google.protobuf.message import DecodeError
from google.transit import gtfs_realtime_pb2 as rt

from cityos.entities.values import now
from cityos.ingest.convert import format_utc
from cityos.ingest.gtfs import urn
from cityos.ingest.sink import Sink, write_batches
from cityos.net import OutboundPolicy, OutboundRefused

log = logging.getLogger("cityos.gtfs_realtime")
TEXT_SUFFIXES = (".asciipb", ".textproto", ".pbtxt", ".txt")
MAX_FEED_BYTES = 64 * 1024 * 1024


class RealtimeError(Exception):
    """The source cannot be read or is not a GTFS-Realtime FeedMessage."""


@dataclass
class RealtimeReport:
    vehicles: int = 0
    trip_updates: int = 0
    alerts: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.vehicles} vehicle positions, {self.trip_updates} trip updates, {self.alerts} alerts"
        if self.skipped:
            text += f", {self.skipped} entities skipped"
        if self.failed:
            text += f", {len(self.failed)} refused"
        return text


async def read_source(source: str, *, timeout: float = 30.0) -> bytes:
    """The bytes of a feed: an http(s) URL (fetched with a timeout and a size cap) or a file."""
    if source.startswith(("http://", "https://")):
        policy = OutboundPolicy(allow_private_networks=True, timeout=timeout, max_bytes=MAX_FEED_BYTES)
        try:
            return await policy.get(source, "application/x-protobuf, application/octet-stream, */*")
        except OutboundRefused as exc:
            raise RealtimeError(str(exc)) from exc
    try:
        return await asyncio.to_thread(Path(source).read_bytes)
    except OSError as exc:
        raise RealtimeError(f"cannot read {source}: {exc}") from exc


def parse_feed(data: bytes, *, text: bool = False) -> rt.FeedMessage:
    message = rt.FeedMessage()
    try:
        if text:
            text_format.Parse(data.decode("utf-8"), message)
        else:
            message.ParseFromString(data)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise RealtimeError(f"not a GTFS-Realtime FeedMessage: {exc}") from exc
    if not message.IsInitialized():
        missing = ", ".join(cast(Any, message).FindInitializationErrors())  # not in the stubs
        raise RealtimeError(f"the FeedMessage lacks required fields: {missing}")
    return message


def _time(seconds: int) -> str:
    return format_utc(datetime.fromtimestamp(seconds, UTC))


def _text(translated: rt.TranslatedString) -> str | None:
    """The English (or first) translation of a TranslatedString."""
    for translation in translated.translation:
        if translation.language in ("", "en"):
            return translation.text
    return translated.translation[0].text if translated.translation else None


def _enum(holder: Any, field_name: str, enum: Any) -> str | None:
    return str(enum.Name(getattr(holder, field_name))) if holder.HasField(field_name) else None


def relationship(target: str | list[str], observed: str) -> dict[str, Any]:
    """Every attribute of a realtime update carries the time it was observed: an update applied
    again (the feed polled twice) is the same observation and adds no history."""
    return {"type": "Relationship", "object": target, "observedAt": observed}


def vehicle_body(entity: rt.FeedEntity, observed: str, prefix: str) -> dict[str, Any] | None:
    vehicle = entity.vehicle
    vehicle_id = vehicle.vehicle.id if vehicle.HasField("vehicle") and vehicle.vehicle.id else entity.id
    stamp = _time(vehicle.timestamp) if vehicle.HasField("timestamp") else observed
    body: dict[str, Any] = {"id": urn("Vehicle", prefix, vehicle_id), "type": "Vehicle"}

    def put(name: str, value: Any, unit: str | None = None) -> None:
        if value is not None:
            body[name] = {"type": "Property", "value": value, "observedAt": stamp}
            if unit:
                body[name]["unitCode"] = unit

    if vehicle.HasField("position"):
        position = vehicle.position
        point = {"type": "Point", "coordinates": [position.longitude, position.latitude]}
        body["location"] = {"type": "GeoProperty", "value": point, "observedAt": stamp}
        put("heading", position.bearing if position.HasField("bearing") else None, "DD")
        put("speed", round(position.speed * 3.6, 2) if position.HasField("speed") else None, "KMH")
    if vehicle.HasField("trip") and vehicle.trip.trip_id:
        body["hasTrip"] = relationship(urn("GtfsTrip", prefix, vehicle.trip.trip_id), stamp)
    if vehicle.stop_id:
        body["hasStop"] = relationship(urn("GtfsStop", prefix, vehicle.stop_id), stamp)
    put("currentStopStatus", _enum(vehicle, "current_status", rt.VehiclePosition.VehicleStopStatus))
    put("occupancyStatus", _enum(vehicle, "occupancy_status", rt.VehiclePosition.OccupancyStatus))
    put("congestionLevel", _enum(vehicle, "congestion_level", rt.VehiclePosition.CongestionLevel))
    if vehicle.HasField("vehicle"):
        put("name", vehicle.vehicle.label or None)
        put("vehiclePlateIdentifier", vehicle.vehicle.license_plate or None)
    return body if len(body) > 2 else None


def _stop_time_update(update: rt.TripUpdate.StopTimeUpdate) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if update.HasField("stop_sequence"):
        item["stopSequence"] = update.stop_sequence
    if update.stop_id:
        item["stopId"] = update.stop_id
    for name in ("arrival", "departure"):
        if update.HasField(name):
            event = getattr(update, name)
            if event.HasField("delay"):
                item[name + "Delay"] = event.delay
            if event.HasField("time"):
                item[name + "Time"] = _time(event.time)
    scheduled = _enum(update, "schedule_relationship", rt.TripUpdate.StopTimeUpdate.ScheduleRelationship)
    if scheduled:
        item["scheduleRelationship"] = scheduled
    return item


def trip_update_body(entity: rt.FeedEntity, observed: str, prefix: str) -> dict[str, Any] | None:
    update = entity.trip_update
    if not update.trip.trip_id:
        return None  # a trip named only by route and start time cannot be matched to a GtfsTrip
    stamp = _time(update.timestamp) if update.HasField("timestamp") else observed
    updates = [_stop_time_update(u) for u in update.stop_time_update]
    delay: int | None = update.delay if update.HasField("delay") else None
    if delay is None:
        delay = next(
            (
                u.get("arrivalDelay", u.get("departureDelay"))
                for u in updates
                if "arrivalDelay" in u or "departureDelay" in u
            ),
            None,
        )
    body: dict[str, Any] = {"id": urn("GtfsTrip", prefix, update.trip.trip_id), "type": "GtfsTrip"}
    scheduled = _enum(update.trip, "schedule_relationship", rt.TripDescriptor.ScheduleRelationship) or "SCHEDULED"
    body["scheduleRelationship"] = {"type": "Property", "value": scheduled, "observedAt": stamp}
    if delay is not None:
        body["delay"] = {"type": "Property", "value": delay, "unitCode": "SEC", "observedAt": stamp}
    if updates:
        body["stopTimeUpdates"] = {"type": "JsonProperty", "json": updates, "observedAt": stamp}
    if update.HasField("vehicle") and update.vehicle.id:
        body["hasVehicle"] = relationship(urn("Vehicle", prefix, update.vehicle.id), stamp)
    return body


def public_source(source: str) -> str | None:
    """What an Alert may say about where it came from: an http(s) feed's URL without credentials,
    query or fragment (feeds often carry an API key there); nothing for a local file, whose path
    says nothing to a reader and may reveal the importing machine's folders."""
    if not source.startswith(("http://", "https://")):
        return None
    parts = urlsplit(source)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def alert_body(entity: rt.FeedEntity, observed: str, prefix: str, source: str) -> dict[str, Any]:
    """An Alert; its attributes are observed at the feed's time, so a feed polled again without a
    new header timestamp adds nothing to their history."""
    alert = entity.alert
    body: dict[str, Any] = {"id": urn("Alert", prefix, "gtfs-rt", entity.id), "type": "Alert"}

    def put(name: str, value: Any) -> None:
        if value not in (None, "", []):
            body[name] = {"type": "Property", "value": value, "observedAt": observed}

    put("category", "traffic")
    put("alertSource", public_source(source))
    put("dateIssued", observed)
    put("name", _text(alert.header_text) if alert.HasField("header_text") else None)
    put("description", _text(alert.description_text) if alert.HasField("description_text") else None)
    put("page", _text(alert.url) if alert.HasField("url") else None)
    put("cause", _enum(alert, "cause", rt.Alert.Cause))
    put("effect", _enum(alert, "effect", rt.Alert.Effect))
    put("severity", _enum(alert, "severity_level", rt.Alert.SeverityLevel))
    if alert.active_period:
        period = alert.active_period[0]
        put("validFrom", _time(period.start) if period.HasField("start") else None)
        put("validTo", _time(period.end) if period.HasField("end") else None)
    routes = sorted({urn("GtfsRoute", prefix, e.route_id) for e in alert.informed_entity if e.route_id})
    stops = sorted({urn("GtfsStop", prefix, e.stop_id) for e in alert.informed_entity if e.stop_id})
    if routes:
        body["affectedRoutes"] = relationship(routes, observed)
    if stops:
        body["affectedStops"] = relationship(stops, observed)
    return body


def feed_bodies(
    message: rt.FeedMessage, *, prefix: str = "", source: str = ""
) -> tuple[list[dict[str, Any]], RealtimeReport]:
    """The entity updates of one FeedMessage, and what they were."""
    observed = _time(message.header.timestamp) if message.header.HasField("timestamp") else now()
    report = RealtimeReport()
    bodies = []
    for entity in message.entity:
        body: dict[str, Any] | None = None
        if entity.is_deleted:
            body = None
        elif entity.HasField("vehicle"):
            body = vehicle_body(entity, observed, prefix)
            report.vehicles += body is not None
        elif entity.HasField("trip_update"):
            body = trip_update_body(entity, observed, prefix)
            report.trip_updates += body is not None
        elif entity.HasField("alert"):
            body = alert_body(entity, observed, prefix, source)
            report.alerts += 1
        if body is None:
            report.skipped += 1
        else:
            bodies.append(body)
    return bodies, report


async def apply_source(source: str, sink: Sink, tenant: str = "", *, prefix: str = "") -> RealtimeReport:
    """Read one FeedMessage and write its entity updates."""
    data = await read_source(source)
    text = not source.startswith(("http://", "https://")) and source.endswith(TEXT_SUFFIXES)
    bodies, report = feed_bodies(parse_feed(data, text=text), prefix=prefix, source=source)
    summary = await write_batches(sink, tenant, bodies)
    report.failed = [f"{r.entity_id}: {r.error}" for r in summary.failed]
    return report


async def poll(
    source: str,
    sink: Sink,
    tenant: str = "",
    *,
    interval: float,
    prefix: str = "",
    rounds: int | None = None,
    on_round: Callable[[RealtimeReport | RealtimeError], None] | None = None,
) -> None:
    """Apply the source every `interval` seconds (`rounds` times, or until cancelled); a round that
    fails is reported and the next one goes ahead."""
    done = 0
    while rounds is None or done < rounds:
        try:
            outcome: RealtimeReport | RealtimeError = await apply_source(source, sink, tenant, prefix=prefix)
        except RealtimeError as exc:
            log.warning("GTFS-Realtime round failed: %s", exc)
            outcome = exc
        if on_round is not None:
            on_round(outcome)
        done += 1
        if rounds is None or done < rounds:
            await asyncio.sleep(interval)
