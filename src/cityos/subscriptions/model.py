"""The Subscription resource (spec 5.2.12, NotificationParams 5.2.14): validate a request body,
expand its names with the request's @context, merge a PATCH, and render it back compacted with
the @context of the request that reads it.

The stored form keeps exactly the members the client sent (read-only members are ignored, as
5.2.12 says; members 5.2.12 does not define are not stored either, since a retrieved Subscription is
that data type and nothing else (ETSI 5811_02_04), but `ignored_members` names them so the handler
can say so), with entity types and attribute names expanded to IRIs, so a subscription created with one
@context reads back correctly with another. `name`, the older spelling of `subscriptionName` that
clients written against Orion-LD still send, is read as `subscriptionName`. `q` is kept
as written: it is evaluated with the subscription's own @context (subscriptions/matching.py).
"""

from __future__ import annotations

import copy
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from cityos.entities.values import check_datetime, check_name, parse_datetime, require_uri
from cityos.errors import BadRequestData
from cityos.jsonld.termmap import TermMap
from cityos.ngsild.join import join_plan
from cityos.query import selectors
from cityos.query.entity_query import scope_predicate, selector_predicate
from cityos.query.geo import parse_geoq
from cityos.query.patterns import DEFAULT_MAX_LENGTH
from cityos.query.q import parse_q
from cityos.redact import redact_endpoint, restore_endpoint
from cityos.store.base import SubscriptionRow
from cityos.subscriptions.owner import Owner

Doc = dict[str, Any]
TRIGGERS = (
    "entityCreated",
    "entityUpdated",
    "entityDeleted",
    "attributeCreated",
    "attributeUpdated",
    "attributeDeleted",
)
DEFAULT_TRIGGERS = ("attributeCreated", "attributeUpdated")
FORMATS = ("normalized", "keyValues", "simplified", "concise")
ACCEPTS = ("application/json", "application/ld+json", "application/geo+json")
SCHEMES = ("http", "https", "mqtt", "mqtts")
MQTT_QOS = ("0", "1", "2")
MQTT_VERSIONS = ("mqtt3.1.1", "mqtt5.0")
PROJECTION_KEYS = ("id", "type")


@dataclass
class Delivery:
    """Delivery bookkeeping, reported inside `notification` once a notification was attempted."""

    times_sent: int = 0
    times_failed: int = 0
    last_notification: str | None = None
    last_success: str | None = None
    last_failure: str | None = None
    status: str | None = None  # "ok" | "failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "timesSent": self.times_sent,
            "timesFailed": self.times_failed,
            "lastNotification": self.last_notification,
            "lastSuccess": self.last_success,
            "lastFailure": self.last_failure,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Delivery:
        return cls(
            raw.get("timesSent", 0),
            raw.get("timesFailed", 0),
            raw.get("lastNotification"),
            raw.get("lastSuccess"),
            raw.get("lastFailure"),
            raw.get("status"),
        )


@dataclass
class Subscription:
    """A stored subscription: its members (expanded), the @context it was created with and its
    delivery bookkeeping."""

    tenant: str
    doc: Doc
    context: Any = None  # the creating request's @context value (None: the core context)
    delivery: Delivery = field(default_factory=Delivery)
    owner: Owner | None = None  # who it acts for (subscriptions/owner.py); None: made with auth off
    # "entity" (5.8), or CSOURCE for a context source registration subscription (5.11), which
    # shares the store and the delivery but is matched by cityos.registrations.subscriptions
    kind: str = "entity"
    # a context source registration subscription the broker made itself to forward an entity
    # subscription (federation/subscriptions.py): which one, and the copies made at the sources
    forwarded: Doc | None = None

    @property
    def id(self) -> str:
        value: str = self.doc["id"]
        return value

    @property
    def notification(self) -> Doc:
        value: Doc = self.doc["notification"]
        return value

    def to_row(self) -> SubscriptionRow:
        document: dict[str, Any] = {"doc": self.doc, "context": self.context}
        if self.owner is not None:
            document["owner"] = self.owner.to_dict()
        if self.kind != "entity":
            document["kind"] = self.kind
        if self.forwarded is not None:
            document["forwarded"] = self.forwarded
        return SubscriptionRow(self.tenant, self.id, document, self.delivery.to_dict())

    @classmethod
    def from_row(cls, row: SubscriptionRow) -> Subscription:
        document = row.document
        return cls(
            row.tenant,
            document["doc"],
            document.get("context"),
            Delivery.from_dict(row.status),
            Owner.from_dict(document.get("owner")),
            document.get("kind", "entity"),
            document.get("forwarded"),
        )

    def notification_context(self) -> Any:
        """The @context notifications are compacted with: jsonldContext if given, else the
        subscription's own @context."""
        return self.doc.get("jsonldContext", self.context)


def is_entity_subscription(row: SubscriptionRow) -> bool:
    """Whether a stored row is an entity subscription (the others are served elsewhere)."""
    return bool(row.document.get("kind", "entity") == "entity")


def status_of(doc: Doc, now: datetime) -> str:
    """active | paused | expired (spec 5.2.12): computed, never stored."""
    expires = doc.get("expiresAt")
    if expires is not None and parse_datetime(expires, "expiresAt") <= now:
        return "expired"
    return "paused" if doc.get("isActive") is False else "active"


# -- member parsers: (raw value, terms) -> stored value -----------------------------------------------
def _string(name: str) -> Callable[[Any, TermMap], Any]:
    def parse(value: Any, terms: TermMap) -> Any:
        if not isinstance(value, str) or not value:
            raise BadRequestData(f"{name} must be a non-empty string")
        return value

    return parse


def _names(name: str, value: Any, terms: TermMap, *, keep: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequestData(f"{name} must be a non-empty array of attribute names")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise BadRequestData(f"{name} must contain strings")
        iri = item if item in keep else terms.expand(check_name(item, f"{name} item"))
        if iri not in out:
            out.append(iri)
    return out


def map_type_names(expression: str, convert: Callable[[str], str]) -> str:
    """Apply `convert` to every type name of a type expression such as `(Building|Tower)`."""

    def replace(match: Any) -> str:
        token: str = match.group(1)
        if len(token) == 1 and token in "|,;()":
            return str(match.group(0))
        return str(match.group(0)).replace(token, convert(token))

    return selectors.TOKEN_RE.sub(replace, expression)


def _entities(value: Any, terms: TermMap, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> list[Doc]:
    if not isinstance(value, list) or not value:
        raise BadRequestData("entities must be a non-empty array of entity selectors")
    selector_predicate(value, terms.expand, max_pattern_length)  # validates types, ids and idPatterns
    out = []
    for item in value:
        entry: Doc = {"type": map_type_names(item["type"], terms.expand)}
        for member in ("id", "idPattern"):
            if item.get(member) is not None:
                entry[member] = item[member]
        out.append(entry)
    return out


def _triggers(value: Any, terms: TermMap) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequestData("notificationTrigger must be a non-empty array")
    for item in value:
        if item not in TRIGGERS:
            raise BadRequestData(f"notificationTrigger {item!r} is not one of {', '.join(TRIGGERS)}")
    return list(dict.fromkeys(value))


def _q(value: Any, terms: TermMap, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequestData("q must be a non-empty string")
    parse_q(unquote(value), max_pattern_length)
    return value


def _csf(value: Any, terms: TermMap, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequestData("csf must be a non-empty string")
    parse_q(unquote(value), max_pattern_length)
    return value


def _scope_q(value: Any, terms: TermMap) -> str:
    if not isinstance(value, str):
        raise BadRequestData("scopeQ must be a string")
    scope_predicate(value)
    return value


def _geo_q(value: Any, terms: TermMap) -> Doc:
    parse_geoq(value)
    assert isinstance(value, dict)
    return value


def _number(name: str, *, positive: bool) -> Callable[[Any, TermMap], Any]:
    def parse(value: Any, terms: TermMap) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestData(f"{name} must be a number")
        if value < 0 or (positive and value == 0):
            raise BadRequestData(f"{name} must be {'positive' if positive else 'zero or more'}")
        return value

    return parse


def _boolean(name: str) -> Callable[[Any, TermMap], Any]:
    def parse(value: Any, terms: TermMap) -> Any:
        if not isinstance(value, bool):
            raise BadRequestData(f"{name} must be true or false")
        return value

    return parse


def _expires_at(value: Any, terms: TermMap) -> str:
    text = check_datetime(value, "expiresAt")
    if parse_datetime(text, "expiresAt") <= datetime.now(UTC):
        raise BadRequestData("expiresAt must be in the future")
    return text


def _dataset_ids(value: Any, terms: TermMap) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BadRequestData("datasetId must not be empty")
    return [item if item == "@none" else require_uri(item, "datasetId") for item in items]


def _jsonld_context(value: Any, terms: TermMap) -> str:
    text = require_uri(value, "jsonldContext")
    if not urlsplit(text).netloc:
        raise BadRequestData("jsonldContext must be an absolute URL")
    return text


def _key_values(name: str, value: Any, allowed: dict[str, tuple[str, ...]]) -> list[Doc]:
    if not isinstance(value, list):
        raise BadRequestData(f"{name} must be an array of key-value pairs")
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise BadRequestData(f"each item of {name} needs a string key")
        if not isinstance(item.get("value"), str):
            raise BadRequestData(f"{name} {item['key']}: the value must be a string")
        choices = allowed.get(item["key"])
        if choices is not None and item["value"] not in choices:
            raise BadRequestData(f"{name} {item['key']} must be one of {', '.join(choices)}")
    return [{"key": item["key"], "value": item["value"]} for item in value]


def _endpoint(value: Any) -> Doc:
    if not isinstance(value, dict):
        raise BadRequestData("notification.endpoint must be an object")
    uri = require_uri(value.get("uri"), "notification.endpoint.uri")
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise BadRequestData(f"notification.endpoint.uri must be an {'/'.join(SCHEMES)} URL with a host")
    out: Doc = {"uri": uri}
    accept = value.get("accept")
    if accept is not None:
        if accept not in ACCEPTS:
            raise BadRequestData(f"notification.endpoint.accept must be one of {', '.join(ACCEPTS)}")
        out["accept"] = accept
    if value.get("receiverInfo") is not None:
        out["receiverInfo"] = _key_values("receiverInfo", value["receiverInfo"], {})
    if value.get("notifierInfo") is not None:
        allowed = {"MQTT-QoS": MQTT_QOS, "MQTT-Version": MQTT_VERSIONS}
        out["notifierInfo"] = _key_values("notifierInfo", value["notifierInfo"], allowed)
    return out


# the members _endpoint and _notification read, and the read-only ones the broker reports
ENDPOINT_KNOWN = frozenset({"uri", "accept", "receiverInfo", "notifierInfo"})
NOTIFICATION_KNOWN = frozenset(
    {"attributes", "pick", "omit", "format", "sysAttrs", "showChanges", "lang", "join", "joinLevel", "endpoint"}
    | {"status", "timesSent", "timesFailed", "lastNotification", "lastSuccess", "lastFailure"}
)


def _notification(value: Any, terms: TermMap) -> Doc:
    if not isinstance(value, dict):
        raise BadRequestData("notification must be an object")
    if value.get("endpoint") is None:
        raise BadRequestData("notification.endpoint is mandatory")
    out: Doc = {}
    for name in ("attributes", "pick", "omit"):
        if name in value:
            keep = PROJECTION_KEYS if name != "attributes" else ()
            out[name] = _names(f"notification.{name}", value[name], terms, keep=keep)
    if "pick" in out and "omit" in out:
        raise BadRequestData("notification.pick and notification.omit cannot be used together")
    if "attributes" in out and ("pick" in out or "omit" in out):
        raise BadRequestData("notification.attributes cannot be combined with pick or omit")
    fmt = value.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadRequestData(f"notification.format must be one of {', '.join(FORMATS)}")
        out["format"] = fmt
    for name in ("sysAttrs", "showChanges"):
        if name in value:
            out[name] = _boolean(f"notification.{name}")(value[name], terms)
    if out.get("showChanges") and fmt in ("keyValues", "simplified"):
        raise BadRequestData("showChanges cannot be used with the keyValues (simplified) format")
    if "lang" in value:
        out["lang"] = _string("notification.lang")(value["lang"], terms)
    if "join" in value:
        if value["join"] not in ("flat", "inline", "@none"):
            raise BadRequestData("notification.join must be flat, inline or @none")
        out["join"] = value["join"]
    if "joinLevel" in value:
        level = value["joinLevel"]
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise BadRequestData("notification.joinLevel must be a positive integer")
        out["joinLevel"] = level
    # joinLevel without join, or above the most a notification can render, could never be sent
    join_plan(out.get("join"), str(out["joinLevel"]) if "joinLevel" in out else None, None, None)
    out["endpoint"] = _endpoint(value["endpoint"])
    return out


MEMBERS: dict[str, Callable[[Any, TermMap], Any]] = {
    "subscriptionName": _string("subscriptionName"),
    "description": _string("description"),
    "entities": _entities,
    "watchedAttributes": lambda value, terms: _names("watchedAttributes", value, terms),
    "notificationTrigger": _triggers,
    "timeInterval": _number("timeInterval", positive=True),
    "q": _q,
    "geoQ": _geo_q,
    "scopeQ": _scope_q,
    "csf": _csf,
    "lang": _string("lang"),
    "isActive": _boolean("isActive"),
    "notification": _notification,
    "expiresAt": _expires_at,
    "throttling": _number("throttling", positive=False),
    "datasetId": _dataset_ids,
    "jsonldContext": _jsonld_context,
    # distributed subscriptions (5.8.1.4, 5.8.6): kept at this broker, or forwarded without q
    "localOnly": _boolean("localOnly"),
    "splitEntities": _boolean("splitEntities"),
}


def _members(max_pattern_length: int) -> dict[str, Callable[[Any, TermMap], Any]]:
    """MEMBERS, with the members that hold regular expressions held to the max_pattern_length setting."""
    if max_pattern_length == DEFAULT_MAX_LENGTH:
        return MEMBERS
    return {
        **MEMBERS,
        "entities": functools.partial(_entities, max_pattern_length=max_pattern_length),
        "q": functools.partial(_q, max_pattern_length=max_pattern_length),
        "csf": functools.partial(_csf, max_pattern_length=max_pattern_length),
    }


# set by the broker (table 5.2.12-2): ignored quietly, a client may send back what it read
READ_ONLY = frozenset({"id", "type", "@context", "status", "createdAt", "modifiedAt"})
ALIASES = {"name": "subscriptionName"}


def _spelled(body: Doc) -> Doc:
    """The body with older spellings (ALIASES) renamed; both spellings at once must agree."""
    out = dict(body)
    for old, new in ALIASES.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise BadRequestData(f"{old} and {new} are two spellings of one member and differ")
            out.setdefault(new, value)
    return out


TOP_KNOWN = frozenset(MEMBERS) | READ_ONLY | frozenset(ALIASES)


def ignored_members(body: Any) -> list[str]:
    """The members of a create or update body that 5.2.12 does not define (dotted paths): they are
    not stored, and the handler reports them, so nothing a client sends disappears silently."""
    if not isinstance(body, dict):
        return []
    names = sorted(k for k in body if k not in TOP_KNOWN)
    notification = body.get("notification")
    if isinstance(notification, dict):
        names += [f"notification.{k}" for k in sorted(notification) if k not in NOTIFICATION_KNOWN]
        endpoint = notification.get("endpoint")
        if isinstance(endpoint, dict):
            names += [f"notification.endpoint.{k}" for k in sorted(endpoint) if k not in ENDPOINT_KNOWN]
    return names


def _check(doc: Doc) -> None:
    """Rules across members, checked on every create and after every merge."""
    if "notification" not in doc:
        raise BadRequestData("a subscription needs notification")
    if "entities" not in doc and "watchedAttributes" not in doc:
        raise BadRequestData("a subscription needs entities or watchedAttributes")
    if "timeInterval" in doc and "throttling" in doc:
        raise BadRequestData("timeInterval and throttling cannot be used together")
    if "timeInterval" in doc and "watchedAttributes" in doc:
        raise BadRequestData("timeInterval and watchedAttributes cannot be used together")


def _check_type(body: Doc) -> None:
    if "type" in body and body["type"] != "Subscription":
        raise BadRequestData('the type of a subscription must be "Subscription"')


def parse_subscription(body: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> Doc:
    """A create body -> the stored form (read-only and unknown members left out, an id generated)."""
    if not isinstance(body, dict):
        raise BadRequestData("the subscription must be a JSON object")
    _check_type(body)
    body = _spelled(body)
    if "id" in body:
        if not isinstance(body["id"], str) or not body["id"]:
            raise BadRequestData("the subscription id must be a non-empty URI")
        sub_id = require_uri(body["id"], "subscription id")
    else:
        sub_id = f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"
    doc: Doc = {"id": sub_id, "type": "Subscription"}
    for name, parse in _members(max_pattern_length).items():
        if body.get(name) is not None:
            doc[name] = parse(body[name], terms)
    _check(doc)
    return doc


def merge_subscription(doc: Doc, fragment: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> Doc:
    """PATCH /subscriptions/{id}: each given member replaces the stored one (`notification` as a
    whole); null removes a member."""
    if not isinstance(fragment, dict):
        raise BadRequestData("the subscription fragment must be a JSON object")
    _check_type(fragment)
    if "id" in fragment and fragment["id"] != doc["id"]:
        raise BadRequestData("the id of a subscription cannot be changed")
    fragment = _spelled(fragment)
    merged = copy.deepcopy(doc)
    for name, parse in _members(max_pattern_length).items():
        if name not in fragment:
            continue
        if fragment[name] is None:
            merged.pop(name, None)
        else:
            merged[name] = parse(fragment[name], terms)
    if "notification" in fragment and fragment["notification"] is not None:  # redacted secrets sent back
        restore_endpoint(merged["notification"]["endpoint"], doc["notification"]["endpoint"])
    _check(merged)
    return merged


def render_subscription(subscription: Subscription, terms: TermMap, now: datetime) -> Doc:
    """The Subscription as a client sees it, compacted with the reading request's @context."""
    doc = subscription.doc
    out = copy.deepcopy(doc)
    if "entities" in out:
        out["entities"] = [{**e, "type": map_type_names(e["type"], terms.compact)} for e in out["entities"]]
    if "watchedAttributes" in out:
        out["watchedAttributes"] = [terms.compact(iri) for iri in out["watchedAttributes"]]
    notification = out["notification"]
    for name in ("attributes", "pick", "omit"):
        if name in notification:
            notification[name] = [n if n in PROJECTION_KEYS else terms.compact(n) for n in notification[name]]
    out.setdefault("notificationTrigger", list(DEFAULT_TRIGGERS))
    out["status"] = status_of(doc, now)
    delivery = subscription.delivery
    if delivery.times_sent:
        notification["timesSent"] = delivery.times_sent
        if delivery.times_failed:
            notification["timesFailed"] = delivery.times_failed
        for key, value in delivery.to_dict().items():
            if key.startswith("last") and value is not None:
                notification[key] = value
        if delivery.status is not None:
            notification["status"] = delivery.status
    redact_endpoint(notification["endpoint"])  # credentials are used, never shown (docs/security.md)
    return out
