"""The component schemas and query parameters the API description names (ops/declare.py): a
reasonable JSON Schema of NGSI-LD's bodies (ETSI GS CIM 009), loose where the standard is (a
representation may drop members: pick, keyValues), strict where a client needs it (an entity to
create has an id and a type)."""

from __future__ import annotations

from typing import Any

ERROR_MEDIA = "application/json"
NAME = "^[A-Za-z][A-Za-z0-9_]{0,40}$"  # an attribute or type term a generated body uses
URN = "^urn:ngsi-ld:[A-Za-z][A-Za-z0-9]{0,20}:[A-Za-z0-9_-]{1,36}$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# a value a generated body uses (NGSI-LD allows any JSON value but null)
_VALUE: dict[str, Any] = {"type": ["string", "number", "boolean"]}
_PROPERTY = {
    "type": "object",
    "required": ["type", "value"],
    "properties": {
        "type": {"const": "Property"},
        "value": _VALUE,
        "unitCode": {"type": "string", "pattern": "^[A-Z0-9]{2,3}$"},
    },
    "additionalProperties": False,
}
_RELATIONSHIP = {
    "type": "object",
    "required": ["type", "object"],
    "properties": {"type": {"const": "Relationship"}, "object": {"type": "string", "pattern": URN}},
    "additionalProperties": False,
}
_GEO = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "value"],
    "properties": {
        "type": {"const": "GeoProperty"},
        "value": {
            "type": "object",
            "required": ["type", "coordinates"],
            "additionalProperties": False,
            "properties": {
                "type": {"const": "Point"},
                "coordinates": {
                    "type": "array",
                    "prefixItems": [
                        {"type": "number", "minimum": -180, "maximum": 180},
                        {"type": "number", "minimum": -90, "maximum": 90},
                    ],
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
        },
    },
}
OBJECT: dict[str, Any] = {"type": "object"}
LIST: dict[str, Any] = {"type": "array", "items": OBJECT}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Any": {},
    "ProblemDetails": {
        "type": "object",
        "description": "RFC 7807 / RFC 9457 ProblemDetails, with an NGSI-LD error type URI",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
    },
    "Attribute": {"oneOf": [_PROPERTY, _RELATIONSHIP, _GEO]},
    "EntityInput": {
        "type": "object",
        "description": "An entity to create (normalized; a Link header or @context gives its terms)",
        "required": ["id", "type"],
        "properties": {
            "id": {"type": "string", "pattern": URN},
            "type": {"type": "string", "pattern": NAME},
            "location": _GEO,
        },
        "propertyNames": {"pattern": NAME},
        "additionalProperties": ref("Attribute"),
    },
    "Fragment": {
        "type": "object",
        "description": "Attributes to append, update or merge (names are terms of the @context)",
        "propertyNames": {"pattern": NAME},
        "additionalProperties": ref("Attribute"),
        "minProperties": 1,
    },
    "Entity": {
        "type": "object",
        "description": "An entity in the representation asked for (normalized, concise, keyValues; "
        "pick/omit/attrs may drop any member)",
    },
    "EntityList": {"type": "array", "items": ref("Entity")},
    "FeatureCollection": {
        "type": "object",
        "required": ["type", "features"],
        "properties": {"type": {"const": "FeatureCollection"}, "features": LIST},
    },
    "Feature": {"type": "object", "required": ["type"], "properties": {"type": {"const": "Feature"}}},
    "EntityBatch": {"type": "array", "items": ref("EntityInput"), "minItems": 1, "maxItems": 20},
    "IdList": {"type": "array", "items": {"type": "string", "pattern": URN}, "minItems": 1, "maxItems": 20},
    "BatchResult": {
        "type": "object",
        "properties": {"success": {"type": "array"}, "errors": {"type": "array"}},
    },
    "Created": {"type": "array", "items": {"type": "string"}, "description": "the ids created"},
    "Query": {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"const": "Query"}, "entities": LIST, "q": {"type": "string"}},
    },
    "Subscription": OBJECT,
    "SubscriptionList": LIST,
    "Registration": OBJECT,
    "RegistrationList": LIST,
    "Object": OBJECT,
    "Open311Errors": {
        "type": "array",
        "description": "Open311 GeoReport v2 errors (JSON; the XML format has the same members)",
        "items": {
            "type": "object",
            "required": ["code", "description"],
            "properties": {"code": {"type": "integer"}, "description": {"type": "string"}},
        },
    },
    "ObjectList": LIST,
    "TemporalEntity": OBJECT,
    "TemporalEntityList": LIST,
    "Text": {"type": "string"},
    "Health": {
        "type": "object",
        "description": "ok: every check passed; the checks by name (true: passed, else why not)",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "failing"]},
            "checks": {"type": "object", "additionalProperties": {"type": ["boolean", "string"]}},
        },
    },
}

_BOOL = {"type": "string", "enum": ["true", "false"]}
_TERMS = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_,:]{0,80}$"}
# the query parameters by name, as handlers check them (ngsild/common.check_params): any name not
# here is a plain string
PARAMETERS: dict[str, tuple[dict[str, Any], str]] = {
    "id": ({"type": "string"}, "entity ids, comma-separated"),
    "type": (_TERMS, "entity types (terms or IRIs), comma-separated, or a type expression"),
    "idPattern": ({"type": "string"}, "a regular expression the ids match"),
    "attrs": (_TERMS, "attribute names, comma-separated"),
    "pick": (_TERMS, "members to keep"),
    "omit": (_TERMS, "members to drop"),
    "q": ({"type": "string"}, "an NGSI-LD query (4.9)"),
    "scopeQ": ({"type": "string"}, "a scope query"),
    "csf": ({"type": "string"}, "a context source filter"),
    "georel": ({"type": "string"}, "a geo-relationship (near;maxDistance==N, within, intersects...)"),
    "geometry": ({"type": "string", "enum": ["Point", "LineString", "Polygon", "MultiPolygon"]}, "geometry"),
    "coordinates": ({"type": "string"}, "GeoJSON coordinates of the geometry"),
    "geoproperty": ({"type": "string"}, "the GeoProperty geo-queries use (default location)"),
    "geometryProperty": ({"type": "string"}, "the GeoProperty of a GeoJSON representation"),
    "options": ({"type": "string"}, "representation options, comma-separated (keyValues, sysAttrs...)"),
    "format": (
        {"type": "string", "enum": ["normalized", "concise", "keyValues", "simplified"]},
        "representation format",
    ),
    "count": (_BOOL, "true: the NGSILD-Results-Count header"),
    "limit": ({"type": "integer", "minimum": 0, "maximum": 1000}, "page size"),
    "offset": ({"type": "integer", "minimum": 0}, "page start"),
    "local": (_BOOL, "true: this broker only, no context source is asked"),
    "lang": ({"type": "string"}, "language of LanguageProperty values"),
    "details": (_BOOL, "true: details of each type or attribute"),
    "lastN": ({"type": "integer", "minimum": 1}, "the last N instances of each attribute"),
    "timerel": ({"type": "string", "enum": ["before", "after", "between"]}, "temporal relationship"),
    "timeAt": ({"type": "string", "format": "date-time"}, "time of the temporal query"),
    "endTimeAt": ({"type": "string", "format": "date-time"}, "end of a between query"),
}


def parameter(name: str) -> dict[str, Any]:
    """The OpenAPI parameter object of query parameter `name`."""
    schema, description = PARAMETERS.get(name, ({"type": "string"}, ""))
    found: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        found["description"] = description
    return found


TENANT_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"  # as ngsild/common.TENANT_RE checks it
# the request headers by name (Operation.headers; NGSI-LD's operations take both by default)
HEADERS: dict[str, tuple[dict[str, Any], str]] = {
    "NGSILD-Tenant": (
        {"type": "string", "pattern": TENANT_PATTERN},
        "the tenant the operation acts in (NGSI-LD 6.3.14; absent: the default tenant); a write creates it,"
        " a read of a tenant that does not exist answers 404",
    ),
    "Link": (
        {"type": "string"},
        'the @context of a request without one inside (application/json, or a GET): <URL>; rel="http://www.w3.org/'
        'ns/json-ld#context"; type="application/ld+json" (NGSI-LD 6.3.5); absent: the core @context',
    ),
}
NGSI_LD_HEADERS = tuple(HEADERS)


def header(name: str) -> dict[str, Any]:
    """The OpenAPI parameter object of request header `name`."""
    schema, description = HEADERS[name]
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}
