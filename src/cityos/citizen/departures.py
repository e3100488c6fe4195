"""Next departures at a stop: the GTFS schedule as the ingest writes it (GtfsStopTime, GtfsTrip,
GtfsRoute, GtfsCalendarRule, GtfsCalendarDateRule, GtfsAgency) corrected by the GTFS-Realtime
trip updates written onto the same GtfsTrip entities (`stopTimeUpdates`, `delay`).

A trip runs on a date when its service's calendar rule covers the date and weekday, unless a
calendar date rule removes it (exception 2), or when a date rule adds it (exception 1). The delay
of a departure is the realtime update of its own stop, else of the last earlier stop of the trip
(GTFS-Realtime's propagation), else the trip's delay; it applies to today's run of the trip (and
yesterday's after-midnight runs), not to tomorrow's. Times are in the agency's time zone.
Frequency-based trips (frequencies.txt) are given at their timetabled times only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cityos.citizen.services import Invalid, Reader, Unavailable, Where, common, near
from cityos.console.client import API

MAX_STOP_TIMES = 1000  # stop times of one stop read to answer; a busier stop is answered from the first
BATCH = 100  # ids per `id=` query
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


async def _all(api: Reader, params: Mapping[str, Any], limit: int = MAX_STOP_TIMES) -> list[dict[str, Any]]:
    answer = await api.get(f"{API}/entities", {**params, "options": "keyValues", "limit": limit})
    if answer.status in (401, 403):
        return []
    if not answer.ok or not isinstance(answer.body, list):
        raise Unavailable(answer.status, "the timetable could not be read")
    return answer.body


async def _by_id(api: Reader, kind: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = sorted(set(ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), BATCH):
        chunk = wanted[start : start + BATCH]
        for entity in await _all(api, {"type": kind, "id": ",".join(chunk)}, len(chunk)):
            found[entity["id"]] = entity
    return found


def runs_on(day: date, rules: list[dict[str, Any]], exceptions: list[dict[str, Any]]) -> bool:
    """Whether a service runs on `day` (GTFS calendar.txt and calendar_dates.txt)."""
    iso = day.isoformat()
    for rule in exceptions:
        if rule.get("appliesOn") == iso:
            return str(rule.get("exceptionType")) == "1"
    for rule in rules:
        if str(rule.get("startDate", "")) <= iso <= str(rule.get("endDate", "")) and rule.get(WEEKDAYS[day.weekday()]):
            return True
    return False


def seconds(gtfs_time: str) -> int:
    """`HH:MM:SS` as seconds after the service day's "noon minus 12 h" (hours may pass 24)."""
    hours, minutes, secs = (int(part) for part in gtfs_time.split(":"))
    return hours * 3600 + minutes * 60 + secs


def delay_at(trip: Mapping[str, Any], sequence: int, stop_code: str) -> int | None:
    """The realtime delay (seconds) of the trip at this stop: its own update, else the last earlier one."""
    updates = trip.get("stopTimeUpdates")
    best: tuple[int, int] | None = None
    if isinstance(updates, list):
        for update in updates:
            if not isinstance(update, dict):
                continue
            value = update.get("departureDelay", update.get("arrivalDelay"))
            if not isinstance(value, int):
                continue
            at = update.get("stopSequence")
            if at == sequence or (at is None and update.get("stopId") == stop_code):
                return value
            if isinstance(at, int) and at < sequence and (best is None or at > best[0]):
                best = (at, value)
    if best is not None:
        return best[1]
    delay = trip.get("delay")
    return delay if isinstance(delay, int) else None


async def _zone(api: Reader) -> ZoneInfo:
    for agency in await _all(api, {"type": "GtfsAgency"}, 10):
        try:
            return ZoneInfo(str(agency.get("timezone") or "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


async def departures(api: Reader, stop_id: str, when: str | None = None, count: int = 10) -> dict[str, Any]:
    """The next `count` departures from the stop after `when` (ISO date-time; default now)."""
    if not stop_id.startswith("urn:ngsi-ld:GtfsStop:") or len(stop_id) > 256:
        raise Invalid("stop must be the id of a GtfsStop entity")
    if not 1 <= count <= 50:
        raise Invalid("count must be between 1 and 50")
    zone = await _zone(api)
    try:
        moment = datetime.fromisoformat(when).astimezone(zone) if when else datetime.now(zone)
    except ValueError as bad:
        raise Invalid("at must be an ISO 8601 date-time with its offset") from bad
    stops = await _by_id(api, "GtfsStop", [stop_id])
    if stop_id not in stops:
        raise Unavailable(404, "no such stop (or not public)")
    stop_code = stop_id.rsplit(":", 1)[-1]
    times = await _all(api, {"type": "GtfsStopTime", "q": f'hasStop=="{stop_id}"'})
    trips = await _by_id(api, "GtfsTrip", [t["hasTrip"] for t in times if isinstance(t.get("hasTrip"), str)])
    routes = await _by_id(
        api, "GtfsRoute", [t["hasRoute"] for t in trips.values() if isinstance(t.get("hasRoute"), str)]
    )
    services = sorted({t["hasService"] for t in trips.values() if isinstance(t.get("hasService"), str)})
    rules: dict[str, list[dict[str, Any]]] = {s: [] for s in services}
    exceptions: dict[str, list[dict[str, Any]]] = {s: [] for s in services}
    if services:
        quoted = ",".join(f'"{s}"' for s in services)
        for rule in await _all(api, {"type": "GtfsCalendarRule", "q": f"hasService=={quoted}"}):
            rules.setdefault(rule["hasService"], []).append(rule)
        for rule in await _all(api, {"type": "GtfsCalendarDateRule", "q": f"hasService=={quoted}"}):
            exceptions.setdefault(rule["hasService"], []).append(rule)
    found = []
    today = moment.date()
    for day in (today - timedelta(days=1), today, today + timedelta(days=1)):  # after-midnight trips too
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=zone)
        for stop_time in times:
            trip = trips.get(str(stop_time.get("hasTrip")))
            clock = stop_time.get("departureTime") or stop_time.get("arrivalTime")
            if trip is None or not isinstance(clock, str):
                continue
            service = str(trip.get("hasService"))
            if not runs_on(day, rules.get(service, []), exceptions.get(service, [])):
                continue
            scheduled = noon - timedelta(hours=12) + timedelta(seconds=seconds(clock))
            # a trip update is about the trip's run of the current service day (or the previous one's late runs)
            delay = delay_at(trip, int(stop_time.get("stopSequence") or 0), stop_code) if day <= today else None
            expected = scheduled + timedelta(seconds=delay or 0)
            if expected < moment or trip.get("scheduleRelationship") == "CANCELED":
                continue
            route = routes.get(str(trip.get("hasRoute")), {})
            found.append(
                {
                    "trip": trip["id"],
                    "route": route.get("shortName") or route.get("name"),
                    "headsign": stop_time.get("stopHeadsign") or trip.get("headSign"),
                    "scheduled": scheduled.isoformat(),
                    "delay": delay,
                    "expected": expected.isoformat(),
                    "realtime": delay is not None,
                }
            )
    found.sort(key=lambda d: (datetime.fromisoformat(d["expected"]), d["trip"]))
    stop = stops[stop_id]
    return {
        "stop": {"id": stop_id, "name": stop.get("name")},
        "at": moment.isoformat(),
        "zone": zone.key,
        "departures": found[:count],
    }


async def stops(api: Reader, at: Where) -> dict[str, Any]:
    """Transit stops near the caller (to pick one for its departures)."""
    return {"stops": [common(e) for e in await near(api, ("GtfsStop",), at)]}
