"""A service request as a Smart Data Models IssueTracking entity (type Open311ServiceRequest, the
SDM's attribute names: service_request_id, service_code, status, requested_datetime, ...), and
back to the Open311 document the spec's GET answers carry.

Beyond the SDM model, CityOS keeps the lifecycle an operator sets (`lifecycleStatus`: open,
acknowledged, inProgress, closed, reopened; Open311's `status` stays open or closed as the spec
says), the asset a report is about (`refAsset`, `assetDistance` in metres), the report it repeats
(`duplicateOf`; the first report counts its repeats in `duplicateCount`), and `resolutionTime`
(seconds from requested_datetime to the last close) for the indicators.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cityos.entities.model import Entity

ENTITY_TYPE = "Open311ServiceRequest"
NOTIFICATION_TYPE = "Open311Notification"
ID_PREFIX = f"urn:ngsi-ld:{ENTITY_TYPE}:"
LIFECYCLE = ("open", "acknowledged", "inProgress", "closed", "reopened")
# from -> the states an operator may move a request to
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"acknowledged", "inProgress", "closed"}),
    "acknowledged": frozenset({"inProgress", "closed"}),
    "inProgress": frozenset({"acknowledged", "closed"}),
    "closed": frozenset({"reopened"}),
    "reopened": frozenset({"acknowledged", "inProgress", "closed"}),
}
# the Open311 document's members, in the spec's order (requests.json)
REQUEST_FIELDS = (
    "service_request_id",
    "status",
    "status_notes",
    "service_name",
    "service_code",
    "description",
    "agency_responsible",
    "service_notice",
    "requested_datetime",
    "updated_datetime",
    "expected_datetime",
    "address",
    "address_id",
    "zipcode",
    "lat",
    "long",
    "media_url",
)
CONTACT = ("email", "first_name", "last_name", "phone")


def entity_id(request_id: str) -> str:
    return ID_PREFIX + request_id


def iso(moment: datetime) -> str:
    """UTC, to the second, with Z: comparable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def when(moment: str) -> dict[str, Any]:
    """A date and time as the Smart Data Models keyValues schema has it: ISO 8601 text (UTC, Z), which
    q compares (`requested_datetime>="2026-01-01T00:00:00Z"`) and the store filters in SQL."""
    return {"type": "Property", "value": moment}


def open311_status(lifecycle: str) -> str:
    return "closed" if lifecycle == "closed" else "open"


def value_of(entity: Entity, expand: Callable[[str], str], name: str) -> Any:
    """The plain value of an attribute of a stored (expanded) entity; a DateTime as its text."""
    instances = entity.get("attrs", {}).get(expand(name)) or []
    if not instances:
        return None
    instance = instances[0]
    if instance.get("type") == "Relationship":
        return instance.get("object")
    value = instance.get("value")
    if isinstance(value, dict) and "@value" in value:
        return value["@value"]
    return value


def open311_view(entity: Entity, expand: Callable[[str], str]) -> dict[str, Any]:
    """The spec's request document of a stored entity (contact details are never part of it)."""

    def get(name: str) -> Any:
        return value_of(entity, expand, name)

    location = get("location")
    lon = lat = None
    if isinstance(location, dict) and location.get("type") == "Point":
        lon, lat = location["coordinates"][:2]
    lifecycle = get("lifecycleStatus") or get("status") or "open"
    view: dict[str, Any] = {
        "service_request_id": get("service_request_id"),
        "status": open311_status(lifecycle),
        "status_notes": get("status_notes"),
        "service_name": get("service_name"),
        "service_code": get("service_code"),
        "description": get("description"),
        "agency_responsible": get("agency_responsible"),
        "service_notice": get("service_notice"),
        "requested_datetime": get("requested_datetime"),
        "updated_datetime": get("updated_datetime"),
        "expected_datetime": get("expected_datetime"),
        "address": get("address_string"),
        "address_id": get("address_id"),
        "zipcode": get("zipcode"),
        "lat": lat,
        "long": lon,
        "media_url": get("media_url"),
    }
    return view


def resolution_seconds(requested: str, closed: str) -> int:
    start = datetime.fromisoformat(requested.replace("Z", "+00:00"))
    end = datetime.fromisoformat(closed.replace("Z", "+00:00"))
    return max(0, round((end - start).total_seconds()))
