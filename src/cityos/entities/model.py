"""Parse request bodies into the internal entity form, validating every member on the way.

The internal form is expanded (attribute names and types are absolute IRIs) so that queries made
with different @contexts see the same data:

    {"id": uri, "type": [iri, ...], "scope": [...]?, "createdAt": ts, "modifiedAt": ts,
     "attrs": {attr_iri: [instance, ...]}}

An instance is {"type": "Property"|..., <value member>, "datasetId"?, "observedAt"?, "unitCode"?,
"createdAt", "modifiedAt", <sub_attr_iri>: instance, ...}.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from cityos.entities.values import (
    GEOMETRY_TYPES,
    check_datetime,
    check_geometry,
    check_name,
    require_uri,
)
from cityos.errors import BadRequestData
from cityos.jsonld.termmap import TermMap

Entity = dict[str, Any]
Instance = dict[str, Any]

NGSI = "https://uri.etsi.org/ngsi-ld/"
VALUE_MEMBER = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "VocabProperty": "vocab",
    "JsonProperty": "json",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
}
ATTRIBUTE_TYPES = {name: name for name in VALUE_MEMBER} | {NGSI + name: name for name in VALUE_MEMBER}
CONCISE_MEMBERS = (
    ("object", "Relationship"),
    ("languageMap", "LanguageProperty"),
    ("vocab", "VocabProperty"),
    ("json", "JsonProperty"),
    ("valueList", "ListProperty"),
    ("objectList", "ListRelationship"),
    ("value", "Property"),
)
META_MEMBERS = frozenset(
    {
        "type",
        "value",
        "object",
        "objectType",
        "languageMap",
        "vocab",
        "json",
        "valueList",
        "objectList",
        "datasetId",
        "observedAt",
        "unitCode",
        "createdAt",
        "modifiedAt",
        "deletedAt",
        "instanceId",
        "lang",
        "previousValue",
        "previousObject",
        "previousLanguageMap",
        "previousVocab",
        "previousJson",
        "previousValueList",
        "previousObjectList",
        "@context",
        "expiresAt",
    }
)
SYSTEM_MEMBERS = frozenset({"createdAt", "modifiedAt", "deletedAt", "instanceId"})
ENTITY_RESERVED = frozenset(
    {"id", "@id", "type", "@type", "@context", "scope", "createdAt", "modifiedAt", "deletedAt", "expiresAt"}
)
GEO_CORE = frozenset({NGSI + "location", NGSI + "observationSpace", NGSI + "operationSpace"})
NULL_URI = "urn:ngsi-ld:null"


_VALID_TYPES: set[str] = set()  # type names that passed check_name: every measure of a device names its type


def entity_types(raw: Any, terms: TermMap) -> list[str]:
    """Expanded entity types from a `type` member (a name or an array of names)."""
    names = raw if isinstance(raw, list) else [raw]
    if not names:
        raise BadRequestData("entity type must not be empty")
    types: list[str] = []
    for name in names:
        if type(name) is not str or name not in _VALID_TYPES:
            check_name(name, "entity type")
            if type(name) is str:
                if len(_VALID_TYPES) >= _VALID_NAMES_MAX:
                    _VALID_TYPES.clear()
                _VALID_TYPES.add(name)
        iri = terms.expand(name)
        if iri.startswith("@"):
            raise BadRequestData(f"entity type {name!r} is a JSON-LD keyword")
        if iri not in types:
            types.append(iri)
    return types


SCOPE_RE = re.compile(r"^(/[\w\-]+)+$")


def parse_scope(raw: Any) -> list[str]:
    scopes = raw if isinstance(raw, list) else [raw]
    if not scopes:
        raise BadRequestData("scope must not be empty")
    for scope in scopes:
        if not isinstance(scope, str) or not SCOPE_RE.match(scope):
            raise BadRequestData(f"invalid scope {scope!r}: scopes look like /Madrid/Gardens")
    return list(scopes)


def parse_entity(body: Any, terms: TermMap, *, require_type: bool = True, stamp: str) -> Entity:
    """A full entity from a create/replace/upsert body (normalized or concise)."""
    if not isinstance(body, dict):
        raise BadRequestData("an entity must be a JSON object")
    entity_id = body.get("id", body.get("@id"))
    if entity_id is None:
        raise BadRequestData("the entity has no id")
    require_uri(entity_id, "entity id")
    raw_type = body.get("type", body.get("@type"))
    if raw_type is None:
        if require_type:
            raise BadRequestData("the entity has no type")
        types: list[str] = []
    else:
        types = entity_types(raw_type, terms)
    entity: Entity = {"id": entity_id, "type": types, "createdAt": stamp, "modifiedAt": stamp}
    return _with_members(entity, body, terms, stamp=stamp, nulls="forbid")


def _with_members(target: Entity, body: dict[str, Any], terms: TermMap, *, stamp: str, nulls: str) -> Entity:
    """Add scope, expiresAt and the attributes of `body` to an entity or fragment being built."""
    if "scope" in body:
        target["scope"] = parse_scope(body["scope"])
    if "expiresAt" in body:
        if nulls != "forbid" and body["expiresAt"] == NULL_URI:
            target["expiresAt"] = None  # a fragment's NGSI-LD Null removes expiresAt (5.5.4, 5611_01_03)
        else:
            target["expiresAt"] = check_datetime(body["expiresAt"], "expiresAt")
    target["attrs"] = parse_attributes(body, terms, stamp=stamp, nulls=nulls)
    return target


def parse_fragment(
    body: Any, terms: TermMap, *, stamp: str, nulls: str = "instance", path_id: str | None = None
) -> Entity:
    """A partial entity (attributes to append, update or merge); id and type are optional."""
    if not isinstance(body, dict):
        raise BadRequestData("the payload must be a JSON object")
    body_id = body.get("id", body.get("@id"))
    if body_id is not None:
        require_uri(body_id, "entity id")
        if path_id is not None and body_id != path_id:
            raise BadRequestData(f"the id in the body ({body_id}) differs from the id in the path ({path_id})")
    raw_type = body.get("type", body.get("@type"))
    fragment: Entity = {
        "id": body_id or path_id,
        "type": entity_types(raw_type, terms) if raw_type is not None else [],
        "modifiedAt": stamp,
    }
    return _with_members(fragment, body, terms, stamp=stamp, nulls=nulls)


def parse_attributes(
    body: dict[str, Any],
    terms: TermMap,
    *,
    stamp: str,
    skip: frozenset[str] = ENTITY_RESERVED,
    nulls: str = "forbid",
) -> dict[str, list[Instance]]:
    """Attributes of a body, keyed by expanded name.

    nulls: "forbid" (create/replace: NGSI-LD Null is an error), "instance" (an NGSI-LD Null deletes an
    instance), "deep" (merge-patch: also removes keys inside JSON object values, RFC 7396).
    """
    attrs: dict[str, list[Instance]] = {}
    for name, raw in body.items():
        if name in skip:
            continue
        check_attribute_name(name)
        iri = terms.expand(name)
        if nulls != "forbid" and (raw is None or raw == NULL_URI):
            attrs[iri] = [{"type": None, "null": True}]
            continue
        attrs[iri] = parse_attribute(name, raw, terms, stamp=stamp, nulls=nulls, iri=iri)
    return attrs


RESERVED_ATTRIBUTE_NAMES = frozenset(
    {"datasetId", "instanceId", "observedAt", "createdAt", "modifiedAt", "deletedAt", "unitCode", "@context"}
)


# names that passed check_attribute_name: a batch names the same ten attributes a thousand times
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 8192


def check_attribute_name(name: str) -> str:
    if name in _VALID_NAMES:
        return name
    check_name(name, "attribute name")
    if name in RESERVED_ATTRIBUTE_NAMES or name.startswith("@"):
        raise BadRequestData(f"{name!r} is reserved and cannot be an attribute name")
    if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def parse_attribute(
    name: str, raw: Any, terms: TermMap, *, stamp: str, nulls: str = "forbid", iri: str | None = None
) -> list[Instance]:
    """All instances of one attribute (an array of objects means several datasetIds). `iri` is
    the expanded name when the caller has it already."""
    if isinstance(raw, list) and raw and all(_is_attribute_object(item) for item in raw):
        instances = [parse_instance(name, item, terms, stamp=stamp, nulls=nulls, iri=iri) for item in raw]
        seen: set[str | None] = set()
        for instance in instances:
            dataset = instance.get("datasetId")
            if dataset in seen:
                label = "the default instance" if dataset is None else f"datasetId {dataset}"
                raise BadRequestData(f"attribute {name!r} has {label} more than once")
            seen.add(dataset)
        return instances
    return [parse_instance(name, raw, terms, stamp=stamp, nulls=nulls, iri=iri)]


def _is_attribute_object(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    kind = item.get("type")
    if isinstance(kind, str) and kind in ATTRIBUTE_TYPES:
        return True
    return any(member in item for member, _ in CONCISE_MEMBERS)


def infer_type(name: str, raw: Any) -> tuple[str, Any]:
    """(attribute type, normalized object) for a normalized or concise attribute value."""
    if isinstance(raw, dict):
        kind = raw.get("type")
        if kind is not None and not isinstance(kind, str):
            raise BadRequestData(f"the type of attribute {name!r} must be a string")
        if isinstance(kind, str) and kind in ATTRIBUTE_TYPES:
            return ATTRIBUTE_TYPES[kind], raw
        if _looks_geo(raw):
            return "GeoProperty", {"value": raw}
        for member, attribute_type in CONCISE_MEMBERS:
            if member in raw:
                if kind is not None:
                    raise BadRequestData(f"attribute {name!r} has an unknown type {kind!r}")
                if attribute_type == "Property" and _looks_geo(raw[member]):
                    return "GeoProperty", raw
                return attribute_type, raw
        return "Property", {"value": raw}
    if raw is None:
        raise BadRequestData(f"attribute {name!r} must not be null")
    return "Property", {"value": raw}


def _looks_geo(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("type"), str)
        and value["type"] in GEOMETRY_TYPES
        and ("coordinates" in value or "geometries" in value)
    )


# members allowed beside the value member, per attribute type (sub-attributes aside)
_COMMON_MEMBERS = frozenset({"type", "observedAt", "datasetId", "expiresAt", "createdAt", "modifiedAt", "instanceId"})
ALLOWED_MEMBERS = {
    kind: _COMMON_MEMBERS | extra
    for kind, extra in {
        "Property": {"value", "unitCode", "valueType", "lang"},
        "GeoProperty": {"value"},
        "Relationship": {"object", "objectType"},
        "LanguageProperty": {"languageMap", "valueType"},
        "VocabProperty": {"vocab"},
        "JsonProperty": {"json"},
        "ListProperty": {"valueList", "unitCode"},
        "ListRelationship": {"objectList", "objectType"},
    }.items()
}
PROOF_MEMBERS = frozenset({"entityIdSealed", "entityTypeSealed"})
NGSILD_PROOF = NGSI + "ngsildproof"
ALLOWED_PROOF_MEMBERS = {kind: allowed | PROOF_MEMBERS for kind, allowed in ALLOWED_MEMBERS.items()}
_CHECKED_MEMBERS = META_MEMBERS | PROOF_MEMBERS  # refused unless allowed for the attribute's type


def _is_null_value(kind: str, value: Any) -> bool:
    if value == NULL_URI:
        return True
    return kind == "LanguageProperty" and isinstance(value, dict) and value.get("@none") == NULL_URI


def _contains_null(value: Any) -> bool:
    if isinstance(value, str):
        return value == NULL_URI
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return False
    for item in items:  # the leaves here, no call for each
        if isinstance(item, str):
            if item == NULL_URI:
                return True
        elif isinstance(item, dict | list) and _contains_null(item):
            return True
    return False


def parse_instance(
    name: str,
    raw: Any,
    terms: TermMap,
    *,
    stamp: str,
    nulls: str = "forbid",
    depth: int = 0,
    value_optional: bool = False,
    iri: str | None = None,
) -> Instance:
    """One attribute instance, validated. value_optional serves partial updates, which may send
    only some members of an existing attribute; `iri` is the expanded name if the caller has it."""
    kind, obj = infer_type(name, raw)
    member = VALUE_MEMBER[kind]
    if iri is None:
        iri = terms.expand(name)
    allowed = ALLOWED_PROOF_MEMBERS[kind] if iri == NGSILD_PROOF else ALLOWED_MEMBERS[kind]
    # one pass over the members: refuse the misplaced ones, note the sub-attributes, and whether
    # anything but the type and the value is there (the usual instance has nothing else)
    subs: list[str] = []
    more = False
    for key in obj:
        if key == "type" or key == member:
            continue
        more = True
        if key in _CHECKED_MEMBERS:
            if key not in allowed:
                raise BadRequestData(f"{kind} {name!r} must not have a '{key}' member")
        elif key not in allowed:
            subs.append(key)
    instance: Instance = {"type": kind}
    if member in obj:
        value = obj[member]
        if nulls != "forbid" and _is_null_value(kind, value):
            instance["null"] = True
        else:
            deep_merge = nulls == "deep" and isinstance(value, dict) and kind == "Property"
            if kind in ("Property", "LanguageProperty", "Relationship") and _contains_null(value) and not deep_merge:
                raise BadRequestData(f"{kind} {name!r}: NGSI-LD Null is not allowed inside a value")
            instance[member] = check_value(name, kind, value, terms, iri=iri)
    elif not value_optional:
        raise BadRequestData(f"{kind} {name!r} has no '{member}' member")
    if more:
        _optional_members(instance, name, kind, obj, terms, allowed)
    if iri == NGSILD_PROOF and "value" in instance and not isinstance(instance["value"], dict):
        raise BadRequestData("the value of ngsildproof must be a proof object")
    instance["createdAt"] = stamp
    instance["modifiedAt"] = stamp
    if depth > 4:
        raise BadRequestData(f"attribute {name!r} nests sub-attributes too deeply")
    for sub_name in subs:
        sub_raw = obj[sub_name]
        check_attribute_name(sub_name)
        sub_iri = terms.expand(sub_name)
        if nulls != "forbid" and (sub_raw is None or sub_raw == NULL_URI):
            instance[sub_iri] = None
            continue
        instance[sub_iri] = parse_instance(
            sub_name, sub_raw, terms, stamp=stamp, nulls=nulls, depth=depth + 1, iri=sub_iri
        )
    return instance


def _optional_members(
    instance: Instance, name: str, kind: str, obj: dict[str, Any], terms: TermMap, allowed: frozenset[str]
) -> None:
    """The members of an instance beside its type and value, validated, in the instance's order."""
    if (kind == "Relationship" and "objectType" in obj) or (kind == "ListRelationship" and "objectType" in obj):
        object_types = obj["objectType"]
        names = object_types if isinstance(object_types, list) else [object_types]
        expanded = [terms.expand(check_name(n, "objectType")) for n in names]
        instance["objectType"] = expanded if isinstance(object_types, list) else expanded[0]
    if "datasetId" in obj:
        dataset = obj["datasetId"]
        if dataset == NULL_URI:
            raise BadRequestData(f"datasetId of {name!r} cannot be NGSI-LD Null")
        if dataset != "@none":
            instance["datasetId"] = require_uri(dataset, f"datasetId of {name!r}")
    if "observedAt" in obj:
        instance["observedAt"] = check_timestamp(obj["observedAt"], f"observedAt of {name!r}")
    if "unitCode" in obj:
        if not isinstance(obj["unitCode"], str):
            raise BadRequestData(f"unitCode of {name!r} must be a string")
        instance["unitCode"] = obj["unitCode"]
    if "valueType" in obj:
        value_type = obj["valueType"]
        if not isinstance(value_type, str) or (
            kind == "LanguageProperty"
            and value_type
            not in ("langString", "rdf:langString", "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString")
        ):
            raise BadRequestData(f"valueType of {name!r} is not valid")
        instance["valueType"] = value_type
    if "expiresAt" in obj:
        instance["expiresAt"] = check_datetime(obj["expiresAt"], f"expiresAt of {name!r}")
    if "lang" in obj and kind == "Property":
        instance["lang"] = obj["lang"]
    for proof_member in PROOF_MEMBERS & obj.keys() & allowed:
        sealed = obj[proof_member]
        if not isinstance(sealed, str):
            raise BadRequestData(f"{proof_member} of {name!r} must be a string")
        instance[proof_member] = terms.expand(sealed) if proof_member == "entityTypeSealed" else sealed


def check_timestamp(value: Any, what: str) -> str:
    """observedAt and friends: ISO 8601 in UTC ("Z"), kept verbatim."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise BadRequestData(f"{what} must be an ISO 8601 UTC date-time ending in Z, got {value!r}")
    return check_datetime(value, what)


def check_value(name: str, kind: str, value: Any, terms: TermMap, *, iri: str | None = None) -> Any:
    if value is None:
        raise BadRequestData(f"{kind} {name!r} must not have a null value")
    if kind == "Property":
        if (iri if iri is not None else terms.expand(name)) in GEO_CORE:
            raise BadRequestData(f"{name!r} must be a GeoProperty")
        return value
    if kind == "GeoProperty":
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise BadRequestData(f"GeoProperty {name!r} value is not a GeoJSON geometry") from exc
        geometry = check_geometry(value, f"GeoProperty {name!r}")
        if geometry.get("type") == "GeometryCollection":
            raise BadRequestData(f"GeoProperty {name!r}: GeometryCollection is not supported")
        return geometry
    if kind == "Relationship":
        if isinstance(value, list):
            for item in value:
                require_uri(item, f"object of Relationship {name!r}")
            return value
        return require_uri(value, f"object of Relationship {name!r}")
    if kind == "ListRelationship":
        if not isinstance(value, list):
            raise BadRequestData(f"objectList of {name!r} must be an array")
        out = []
        for item in value:
            target = item.get("object") if isinstance(item, dict) else item
            out.append(require_uri(target, f"objectList item of {name!r}"))
        return out
    if kind == "LanguageProperty":
        if not isinstance(value, dict) or not value:
            raise BadRequestData(f"languageMap of {name!r} must be a non-empty object")
        for tag, text in value.items():
            texts = text if isinstance(text, list) else [text]
            if not tag or not texts or not all(isinstance(t, str) for t in texts):
                raise BadRequestData(f"languageMap of {name!r} must map language tags to strings")
        return value
    if kind == "VocabProperty":
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, str) and item for item in items):
            raise BadRequestData(f"vocab of {name!r} must be a string or an array of strings")
        expanded = [terms.expand(item) for item in items]
        return expanded if isinstance(value, list) else expanded[0]
    if kind == "JsonProperty":
        if not isinstance(value, dict | list):
            raise BadRequestData(f"json of {name!r} must be a JSON object or array")
        return value
    if kind == "ListProperty":
        if not isinstance(value, list):
            raise BadRequestData(f"valueList of {name!r} must be an array")
        return value
    raise BadRequestData(f"unknown attribute type {kind!r}")  # pragma: no cover


def instance_key(instance: Instance) -> str | None:
    dataset: str | None = instance.get("datasetId")
    return dataset


def sub_attribute_names(instance: Instance) -> list[str]:
    return [key for key in instance if ":" in key]
