"""The Open311 core, free of the web framework: a validated report becomes an Open311ServiceRequest
entity written through the one write path (the ingest StoreSink: parse_entity, the upsert mutator,
store.mutate, so history, subscriptions and the audit trail see it as any other write); searches
are store queries; an operator's status change is another write, with an Open311Notification
entity for the reporter when they left contact details.

Everything a citizen sent is checked before anything is written: a refused report stores nothing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cityos.entities.model import Entity
from cityos.errors import NgsiLdError
from cityos.ingest.sink import StoreSink
from cityos.jsonld.termmap import TermMap
from cityos.open311.media import CleanImage, MediaStore
from cityos.open311.model import (
    ENTITY_TYPE,
    LIFECYCLE,
    NOTIFICATION_TYPE,
    TRANSITIONS,
    entity_id,
    iso,
    open311_status,
    open311_view,
    prop,
    resolution_seconds,
    value_of,
    when,
)
from cityos.open311.services import Catalogue, Service
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.store.base import EntityQuery, EntityStore

MAX_DESCRIPTION = 4000  # characters (what GeoReport servers commonly accept)
MAX_TEXT = 500  # any other text member
MAX_RESULTS = 1000  # the spec's default query limit
MAX_SPAN = timedelta(days=90)  # the spec's longest start_date..end_date span
EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,63}$")
PHONE = re.compile(r"^\+?[0-9 ().\-]{3,32}$")
TOKEN = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
DUPLICATE_LOCK = "open311-reports"  # store.exclusive: a report's duplicate look-up and its write, one at a time
TEXT_FIELDS = ("address_string", "address_id", "zipcode", "device_id", "account_id", "first_name", "last_name")


class Open311Error(Exception):
    """An answer in the spec's error shape: the HTTP status and what was wrong (one or more)."""

    def __init__(self, status: int, *descriptions: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__("; ".join(descriptions))
        self.status = status
        self.descriptions = list(descriptions)
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Report:
    """A citizen's report, checked."""

    service: Service
    lon: float | None = None
    lat: float | None = None
    text: dict[str, str] = field(default_factory=dict)  # description, address_string, contact, ...
    attributes: dict[str, Any] = field(default_factory=dict)
    media: CleanImage | None = None


@dataclass(frozen=True, slots=True)
class Settings311:
    """The settings the core uses (cityos.settings: --open311-*)."""

    duplicate_distance: float = 25.0  # metres; 0: no duplicate detection
    duplicate_window: float = 7 * 86400.0  # seconds
    asset_distance: float = 50.0  # metres; 0: reports are not linked to assets


def _one(fields: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    value = values[-1].strip()
    return value or None


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Open311Error(400, f"{name} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise Open311Error(400, f"{name} must be a finite number")
    return value


def check_report(catalogue: Catalogue, fields: Mapping[str, Sequence[str]]) -> Report:
    """The report of a POST's fields, or Open311Error naming every problem found."""
    problems: list[str] = []
    code = _one(fields, "service_code")
    if code is None:
        raise Open311Error(400, "service_code was not provided")
    service = catalogue.services.get(code)
    if service is None:
        raise Open311Error(404, f"service_code {code} was not found")
    jurisdiction = _one(fields, "jurisdiction_id")
    if jurisdiction is not None and jurisdiction != catalogue.jurisdiction_id:
        raise Open311Error(404, f"jurisdiction_id {jurisdiction} was not found")
    report = Report(service)
    lat_text, lon_text = _one(fields, "lat"), _one(fields, "long")
    if (lat_text is None) != (lon_text is None):
        problems.append("lat and long must be given together")
    elif lat_text is not None and lon_text is not None:
        try:
            report.lat, report.lon = _number(lat_text, "lat"), _number(lon_text, "long")
        except Open311Error as exc:
            problems.extend(exc.descriptions)
        else:
            if not (-90 <= report.lat <= 90 and -180 <= report.lon <= 180):
                problems.append("lat must be within -90..90 and long within -180..180")
            elif not catalogue.inside(report.lon, report.lat):
                problems.append(f"the location ({report.lat}, {report.lon}) is outside {catalogue.name or 'the city'}")
    description = _one(fields, "description")
    if description is not None:
        if len(description) > MAX_DESCRIPTION:
            problems.append(f"description is longer than {MAX_DESCRIPTION} characters")
        report.text["description"] = description  # stored as given: escaped wherever it is rendered
    for name in (*TEXT_FIELDS, "email", "phone"):
        value = _one(fields, name)
        if value is None:
            continue
        if len(value) > MAX_TEXT:
            problems.append(f"{name} is longer than {MAX_TEXT} characters")
        elif name == "email" and not EMAIL.match(value):
            problems.append("email is not an e-mail address")
        elif name == "phone" and not PHONE.match(value):
            problems.append("phone is not a telephone number")
        report.text[name] = value
    if report.lat is None and not ({"address_string", "address_id"} & report.text.keys()):
        problems.append("a location is required: lat and long, address_string or address_id")
    report.attributes = _attributes(service, fields, problems)
    if problems:
        raise Open311Error(400, *problems)
    return report


def _attributes(service: Service, fields: Mapping[str, Sequence[str]], problems: list[str]) -> dict[str, Any]:
    """attribute[CODE]=value (attribute[CODE][]=value for a multivaluelist), against the definition."""
    given: dict[str, list[str]] = {}
    for name, values in fields.items():
        match = re.fullmatch(r"attribute\[([^\]]{1,64})\](\[\])?", name)
        if match:
            given.setdefault(match.group(1), []).extend(v.strip() for v in values if v.strip())
    declared = {attribute.code: attribute for attribute in service.attributes}
    for code in given.keys() - declared.keys():
        problems.append(f"attribute {code} is not defined for service {service.code}")
    answers: dict[str, Any] = {}
    for code, attribute in declared.items():
        values = given.get(code, [])
        if not values:
            if attribute.required:
                problems.append(f"attribute {code} is required: {attribute.description}")
            continue
        keys = {key for key, _ in attribute.values}
        if attribute.datatype == "multivaluelist":
            unknown = [v for v in values if v not in keys]
            if unknown:
                problems.append(f"attribute {code}: {', '.join(unknown)} is not one of its values")
            answers[code] = values
            continue
        value = values[-1]
        if len(value) > MAX_TEXT:
            problems.append(f"attribute {code} is longer than {MAX_TEXT} characters")
        elif attribute.datatype == "singlevaluelist" and value not in keys:
            problems.append(f"attribute {code}: {value} is not one of its values")
        elif attribute.datatype == "number":
            try:
                _number(value, f"attribute {code}")
            except Open311Error as exc:
                problems.extend(exc.descriptions)
        elif attribute.datatype == "datetime" and _datetime(value) is None:
            problems.append(f"attribute {code} must be a date and time (ISO 8601)")
        answers[code] = value
    return answers


def _datetime(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "+"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Search:
    """GET requests.{format}'s filters, checked."""

    ids: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None


def check_search(params: Mapping[str, str], now: datetime) -> Search:
    ids = tuple(part.strip() for part in params.get("service_request_id", "").split(",") if part.strip())
    if len(ids) > MAX_RESULTS:
        raise Open311Error(400, f"at most {MAX_RESULTS} service_request_id at once")
    for request_id in ids:
        if not REQUEST_ID.match(request_id):
            raise Open311Error(400, f"service_request_id {request_id[:64]} is not a request id")
    if ids:  # "this overrides all other arguments"
        return Search(ids=ids)
    codes = tuple(part.strip() for part in params.get("service_code", "").split(",") if part.strip())
    statuses = tuple(part.strip() for part in params.get("status", "").split(",") if part.strip())
    if any(status not in ("open", "closed") for status in statuses):
        raise Open311Error(400, "status must be open or closed (comma delimited)")
    start = _datetime(params["start_date"]) if "start_date" in params else None
    end = _datetime(params["end_date"]) if "end_date" in params else None
    if ("start_date" in params and start is None) or ("end_date" in params and end is None):
        raise Open311Error(400, "start_date and end_date must be dates and times (ISO 8601, w3c format)")
    if start is None and end is None:
        end = now
    if start is None:
        assert end is not None
        start = end - MAX_SPAN
    if end is None:
        end = start + MAX_SPAN
    if end < start:
        raise Open311Error(400, "end_date is before start_date")
    if end - start > MAX_SPAN:
        raise Open311Error(400, "start_date and end_date may not span more than 90 days")
    return Search(codes=codes, statuses=statuses, start=iso(start), end=iso(end))


@dataclass(frozen=True, slots=True)
class Submitted:
    request_id: str
    token: str
    notice: str
    duplicate_of: str | None = None
    duplicate_count: int = 0
    asset: str | None = None


class Open311:
    """The service requests of one deployment (its tenant: the default one)."""

    def __init__(
        self,
        store: EntityStore,
        terms: TermMap,
        catalogue: Catalogue,
        media: MediaStore,
        settings: Settings311 | None = None,
    ) -> None:
        self.store = store
        self.terms = terms
        self.catalogue = catalogue
        self.media = media
        self.settings = settings or Settings311()
        self.sink = StoreSink(store, terms)
        self._iris: dict[str, str] = {}

    def _expand(self, name: str) -> str:
        """A term's IRI, looked up once (the core @context's terms do not change while serving)."""
        iri = self._iris.get(name)
        if iri is None:
            iri = self._iris[name] = self.terms.expand(name)
        return iri

    # -- reports ---------------------------------------------------------------------------------
    async def submit(self, tenant: str, report: Report, *, media_base: str, provider: str) -> Submitted:
        """Store a checked report (and its photo); the new request's id, token and notice."""
        now = datetime.now(UTC)
        stamp = iso(now)
        request_id = f"{now:%Y%m%d}-{secrets.token_hex(5)}"
        token = secrets.token_urlsafe(12)
        service = report.service
        body: dict[str, Any] = {
            "id": entity_id(request_id),
            "type": ENTITY_TYPE,
            "service_request_id": prop(request_id),
            "jurisdiction_id": prop(self.catalogue.jurisdiction_id),
            "service_code": prop(service.code),
            "service_name": prop(service.name),
            "status": prop("open"),
            "lifecycleStatus": prop("open"),
            "requested_datetime": when(stamp),
            "updated_datetime": when(stamp),
            "token": prop(token),
            "dataProvider": prop(provider),
        }
        if self.catalogue.agency:
            body["agency_responsible"] = prop(self.catalogue.agency)
        if service.notice:
            body["service_notice"] = prop(service.notice)
        if service.expected_days:
            body["expected_datetime"] = when(iso(now + timedelta(days=service.expected_days)))
        body.update({name: prop(value) for name, value in report.text.items()})
        if report.attributes:
            body["serviceAttributes"] = prop(report.attributes)
        asset: tuple[str, float] | None = None
        if report.lon is not None and report.lat is not None:
            body["location"] = {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [report.lon, report.lat]},
            }
            asset = await self._nearest_asset(tenant, service, report.lon, report.lat)
        if asset is not None:
            body["refAsset"] = {"type": "Relationship", "object": asset[0]}
            body["assetDistance"] = {"type": "Property", "value": round(asset[1], 1), "unitCode": "MTR"}
        made = None
        if report.media is not None:
            name, created = self.media.save(report.media)
            made = name if created else None
            body["media_url"] = prop(f"{media_base}/open311/v2/media/{name}")
        try:
            duplicate = await self._store_report(tenant, report, body, now)
        except BaseException:
            if made is not None:
                self.media.remove(made)  # nothing stored of a refused report (a photo sent before stays)
            raise
        notice = service.notice
        if duplicate is not None:
            notice = (
                f"This problem was already reported (request {duplicate[0]}); your report is linked to it "
                f"and counted ({duplicate[1] + 2} reports so far). " + notice
            ).strip()
        return Submitted(
            request_id,
            token,
            notice,
            duplicate_of=duplicate[0] if duplicate else None,
            duplicate_count=duplicate[1] + 2 if duplicate else 0,
            asset=asset[0] if asset else None,
        )

    async def _store_report(
        self, tenant: str, report: Report, body: dict[str, Any], now: datetime
    ) -> tuple[str, int] | None:
        """Write the report, linked to the open report it repeats if any (its id and the repeats
        it had): the look-up and the write hold the store's lock on the tenant's reports, so two
        reports of one problem sent at the same moment are one original and one repeat, counted,
        on every worker (store.exclusive)."""
        if report.lon is None or report.lat is None or not self._detects_duplicates():
            await self.sink.upsert(tenant, [body], atomic=True)
            return None
        async with self.store.exclusive(tenant, DUPLICATE_LOCK):
            duplicate = await self._original(tenant, report.service, report.lon, report.lat, now)
            bodies = [body]
            if duplicate is not None:
                original, count = duplicate
                body["duplicateOf"] = {"type": "Relationship", "object": entity_id(original)}
                bodies.append({"id": entity_id(original), "type": ENTITY_TYPE, "duplicateCount": prop(count + 1)})
            await self.sink.upsert(tenant, bodies, atomic=True)
        return duplicate

    def _detects_duplicates(self) -> bool:
        return self.settings.duplicate_distance > 0 and self.settings.duplicate_window > 0

    async def _original(
        self, tenant: str, service: Service, lon: float, lat: float, now: datetime
    ) -> tuple[str, int] | None:
        """The first open report of the same service within the distance and time window, and how
        many reports repeat it already; None when this report is the first."""
        distance, window = self.settings.duplicate_distance, self.settings.duplicate_window
        found = await self._near(tenant, ENTITY_TYPE, lon, lat, distance, f'service_code=="{service.code}"')
        since = iso(now - timedelta(seconds=window))
        get = self._value
        candidates = [
            (entity, meters)
            for entity, meters in found
            if get(entity, "duplicateOf") is None
            and get(entity, "lifecycleStatus") != "closed"
            and str(get(entity, "requested_datetime") or "") >= since
        ]
        if not candidates:
            return None
        entity, _ = min(candidates, key=lambda pair: (str(get(pair[0], "requested_datetime")), pair[1]))
        original = str(get(entity, "service_request_id"))
        repeats = await self.store.query_entities(
            tenant,
            build_entity_query(
                QuerySpec(type_expr=ENTITY_TYPE, q=f'duplicateOf=="{entity_id(original)}"'), self._expand
            ),
        )
        return original, len(repeats.entities)

    async def _nearest_asset(self, tenant: str, service: Service, lon: float, lat: float) -> tuple[str, float] | None:
        if not service.asset_types or self.settings.asset_distance <= 0:
            return None
        found = await self._near(tenant, ",".join(service.asset_types), lon, lat, self.settings.asset_distance)
        if not found:
            return None
        entity, meters = min(found, key=lambda pair: (pair[1], pair[0]["id"]))
        return entity["id"], meters

    async def _near(
        self, tenant: str, types: str, lon: float, lat: float, meters: float, q: str | None = None
    ) -> list[tuple[Entity, float]]:
        """Entities of `types` within `meters` of the point (the store's geo-query) and their distance."""
        from cityos.query.geo import parse_geo_query

        geo = parse_geo_query(f"near;maxDistance=={meters}", "Point", f"[{lon},{lat}]", None)
        assert geo is not None
        result = await self.store.query_entities(
            tenant, build_entity_query(QuerySpec(type_expr=types, q=q, geo=geo), self._expand)
        )
        located = []
        for entity in result.entities:
            distance = geo.distance(self._value(entity, "location"))
            if distance is not None:
                located.append((entity, distance))
        return located

    def _value(self, entity: Entity, name: str) -> Any:
        return value_of(entity, self._expand, name)

    # -- reads -----------------------------------------------------------------------------------
    async def search(self, tenant: str, search: Search) -> list[dict[str, Any]]:
        """The matching requests, newest first, at most MAX_RESULTS."""
        # what q can say is pushed into the store's SQL (the window, one code, one status); several
        # codes or statuses are checked on the window's entities
        terms = []
        if not search.ids:
            terms = [f'requested_datetime>="{search.start}"', f'requested_datetime<="{search.end}"']
            if len(search.codes) == 1:
                terms.append(f'service_code=="{search.codes[0]}"')
            if len(set(search.statuses)) == 1:
                terms.append(f'status=="{search.statuses[0]}"')
        query: EntityQuery = build_entity_query(
            QuerySpec(type_expr=ENTITY_TYPE, q=";".join(terms) or None), self._expand
        )
        get = self._value
        if search.ids:
            query.ids = [entity_id(request_id) for request_id in search.ids]
        codes, statuses = set(search.codes), set(search.statuses)
        if len(codes) > 1 or len(statuses) > 1:
            base = query.predicate

            def matches(entity: Entity) -> bool:
                return (
                    (base is None or base(entity))
                    and (not codes or get(entity, "service_code") in codes)
                    and (not statuses or get(entity, "status") in statuses)
                )

            query.predicate = matches
            query.predicate_in_sql = None
        query.sort = lambda entities: sorted(
            entities, key=lambda e: (str(get(e, "requested_datetime") or ""), e["id"]), reverse=True
        )
        query.limit = MAX_RESULTS
        result = await self.store.query_entities(tenant, query)
        return [open311_view(entity, self._expand) for entity in result.entities]

    async def entity(self, tenant: str, request_id: str) -> Entity | None:
        if not REQUEST_ID.match(request_id):
            return None
        found = await self.store.get_entity(tenant, entity_id(request_id))
        if found is None or self._expand(ENTITY_TYPE) not in found.get("type", []):
            return None
        return found

    async def request(self, tenant: str, request_id: str) -> dict[str, Any] | None:
        found = await self.entity(tenant, request_id)
        return None if found is None else open311_view(found, self._expand)

    async def token(self, tenant: str, token: str) -> str | None:
        """The request id a token was given for."""
        if not TOKEN.match(token):
            return None
        result = await self.store.query_entities(
            tenant, build_entity_query(QuerySpec(type_expr=ENTITY_TYPE, q=f'token=="{token}"'), self._expand)
        )
        for entity in result.entities:
            return str(self._value(entity, "service_request_id"))
        return None

    # -- the operators' side ---------------------------------------------------------------------
    async def set_status(
        self, tenant: str, request_id: str, status: str, notes: str | None, who: str
    ) -> dict[str, Any] | None:
        """Move a request along its lifecycle; a notification for a reporter who left contact
        details. None: no such request. Open311Error: a move the lifecycle does not allow."""
        if status not in LIFECYCLE:
            raise Open311Error(400, f"status must be one of {', '.join(LIFECYCLE)}")
        if notes is not None and len(notes) > MAX_DESCRIPTION:
            raise Open311Error(400, f"notes are longer than {MAX_DESCRIPTION} characters")
        found = await self.entity(tenant, request_id)
        if found is None:
            return None
        current = self._value(found, "lifecycleStatus") or "open"
        if status not in TRANSITIONS.get(current, frozenset()):
            raise Open311Error(409, f"a request that is {current} cannot become {status}")
        stamp = iso(datetime.now(UTC))
        body: dict[str, Any] = {
            "id": found["id"],
            "type": ENTITY_TYPE,
            "lifecycleStatus": prop(status),
            "status": prop(open311_status(status)),
            "updated_datetime": when(stamp),
            "status_notes": prop(notes or _default_note(status)),
            "statusChangedBy": prop(who),
        }
        if status == "closed":
            requested = str(self._value(found, "requested_datetime"))
            body["closed_datetime"] = when(stamp)
            body["resolutionTime"] = {
                "type": "Property",
                "value": resolution_seconds(requested, stamp),
                "unitCode": "SEC",
                "observedAt": stamp.replace("Z", ".000Z"),
            }
        bodies = [body]
        notification = self._notification(found, request_id, status, notes, stamp)
        if notification is not None:
            bodies.append(notification)
        try:
            await self.sink.upsert(tenant, bodies, atomic=True)
        except NgsiLdError:
            raise
        updated = await self.entity(tenant, request_id)
        assert updated is not None
        return {
            **open311_view(updated, self._expand),
            "lifecycle_status": status,
            "notification": None if notification is None else notification["id"],
            "resolution_seconds": self._value(updated, "resolutionTime") if status == "closed" else None,
        }

    def _notification(
        self, found: Entity, request_id: str, status: str, notes: str | None, stamp: str
    ) -> dict[str, Any] | None:
        """An Open311Notification entity (an outbox record) for the reporter, when they left an
        e-mail address or a phone number. CityOS does not send it: a mail or SMS gateway subscribes
        to the type (an NGSI-LD subscription, with the broker's retries) and marks it sent."""
        email, phone = self._value(found, "email"), self._value(found, "phone")
        if email is None and phone is None:
            return None
        name = self._value(found, "service_name")
        text = f"Your report {request_id} ({name}) is now {_default_note(status).lower()}"
        text += f": {notes}" if notes else "."
        body: dict[str, Any] = {
            "id": f"urn:ngsi-ld:{NOTIFICATION_TYPE}:{request_id}-{secrets.token_hex(4)}",
            "type": NOTIFICATION_TYPE,
            "refServiceRequest": {"type": "Relationship", "object": found["id"]},
            "subject": prop(f"Report {request_id}: {_default_note(status).lower()}"),
            "text": prop(text),
            "lifecycleStatus": prop(status),
            "deliveryStatus": prop("pending"),
            "dateCreated": when(stamp),
        }
        if email is not None:
            body["email"] = prop(email)
        if phone is not None:
            body["phone"] = prop(phone)
        return body


def _default_note(status: str) -> str:
    return {
        "open": "Open",
        "acknowledged": "Acknowledged",
        "inProgress": "In progress",
        "closed": "Closed",
        "reopened": "Reopened",
    }[status]
