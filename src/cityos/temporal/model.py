"""Temporal representations of entities (spec 4.5.7-4.5.9, 5.6.11-5.6.18), framework-free: parse
the bodies of the temporal API into (attribute, instance) pairs, and render stored history as the
normalized, simplified (temporalValues) or aggregated representation.

Instances are parsed by entities/model.py and rendered by entities/render.py, as in the core API;
what is temporal is that an attribute is always an array of instances, that several instances may
share a datasetId, and that each carries its instanceId (and deletedAt once deleted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from cityos.entities.model import (
    ENTITY_RESERVED,
    NULL_URI,
    VALUE_MEMBER,
    Entity,
    Instance,
    check_attribute_name,
    check_timestamp,
    entity_types,
    parse_instance,
    parse_scope,
)
from cityos.entities.render import RenderOptions, key_value, render_instance
from cityos.entities.values import check_datetime, require_uri
from cityos.errors import BadRequestData, InvalidRequest
from cityos.jsonld.termmap import TermMap
from cityos.store.temporal_base import SCOPE_ATTR, AggregatedEntity, AggregatedSeries, PeriodStats
from cityos.temporal.query import Aggregation, Window, format_micros, period_bounds

SIMPLIFIED_MEMBERS = {
    "Property": "values",
    "GeoProperty": "values",
    "Relationship": "objects",
    "LanguageProperty": "languageMaps",
    "JsonProperty": "jsons",
    "VocabProperty": "vocabs",
    "ListProperty": "valueLists",
    "ListRelationship": "objectLists",
}
Pairs = list[tuple[str, Instance]]


# -- parsing ----------------------------------------------------------------------------------------
def _instance(name: str, raw: Any, terms: TermMap, stamp: str) -> Instance:
    """One instance; NGSI-LD Null is kept as an ordinary value (a deletion recorded by a client, 5611)."""
    instance = parse_instance(name, raw, terms, stamp=stamp, nulls="instance")
    if instance.pop("null", False):
        kind = instance["type"]
        instance[VALUE_MEMBER[kind]] = {"@none": NULL_URI} if kind == "LanguageProperty" else NULL_URI
    return {k: v for k, v in instance.items() if v is not None}


def _scope(raw: Any, stamp: str) -> list[Instance]:
    """Entity-level scope: a scope value (one instance) or an array of scope instances (5744_03)."""
    items = raw if isinstance(raw, list) and raw and all(isinstance(i, dict) for i in raw) else None
    if items is None:
        return [{"type": "Property", "value": parse_scope(raw), "createdAt": stamp, "modifiedAt": stamp}]
    found = []
    for item in items:
        if item.get("type", "Property") != "Property" or "value" not in item:
            raise BadRequestData("a scope instance is a Property with a value")
        instance: Instance = {"type": "Property", "value": parse_scope(item["value"])}
        if "observedAt" in item:
            instance["observedAt"] = check_timestamp(item["observedAt"], "observedAt of scope")
        found.append({**instance, "createdAt": stamp, "modifiedAt": stamp})
    return found


def parse_attributes(body: dict[str, Any], terms: TermMap, stamp: str) -> Pairs:
    """Every (expanded attribute, instance) of a temporal body; an attribute is an instance or an
    array of instances, any number of them per datasetId."""
    pairs: Pairs = []
    if "scope" in body:
        pairs.extend((SCOPE_ATTR, instance) for instance in _scope(body["scope"], stamp))
    for name, raw in body.items():
        if name in ENTITY_RESERVED:
            continue
        check_attribute_name(name)
        iri = terms.expand(name)
        items = raw if isinstance(raw, list) and raw and all(isinstance(i, dict) for i in raw) else [raw]
        pairs.extend((iri, _instance(name, item, terms, stamp)) for item in items)
    return pairs


def parse_temporal_entity(body: Any, terms: TermMap, stamp: str) -> tuple[str, list[str], Pairs]:
    """POST /temporal/entities: (id, expanded types, instances). The entity's own expiresAt is
    checked but not kept: it concerns the current state, not the history."""
    if not isinstance(body, dict):
        raise BadRequestData("a temporal entity must be a JSON object")
    entity_id = require_uri(body.get("id", body.get("@id")), "entity id")
    raw_type = body.get("type", body.get("@type"))
    if raw_type is None:
        raise BadRequestData("the temporal entity has no type")
    if "expiresAt" in body:
        check_datetime(body["expiresAt"], "expiresAt")
    return entity_id, entity_types(raw_type, terms), parse_attributes(body, terms, stamp)


def parse_temporal_fragment(body: Any, terms: TermMap, stamp: str, path_id: str) -> tuple[list[str], Pairs]:
    """POST /temporal/entities/{id}/attrs: (types to add, instances); an empty fragment is invalid."""
    if not isinstance(body, dict):
        raise InvalidRequest("the fragment must be a JSON object")
    body_id = body.get("id", body.get("@id"))
    if body_id is not None and body_id != path_id:
        raise BadRequestData(f"the id in the body ({body_id}) differs from the id in the path ({path_id})")
    raw_type = body.get("type", body.get("@type"))
    pairs = parse_attributes(body, terms, stamp)
    if not pairs:
        raise InvalidRequest("the fragment has no attribute")
    return (entity_types(raw_type, terms) if raw_type is not None else []), pairs


def parse_instance_patch(name: str, body: Any, terms: TermMap, stamp: str) -> Instance:
    """PATCH /temporal/entities/{id}/attrs/{attr}/{instanceId}: the members to change."""
    if not isinstance(body, dict) or not body:
        raise BadRequestData("the attribute instance fragment must be a non-empty JSON object")
    fragment = {k: v for k, v in body.items() if k not in ("@context", "instanceId")}
    instance = _instance(name, fragment, terms, stamp)
    instance.pop("createdAt", None)
    return instance


# -- rendering --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TemporalView:
    """How to render: the projection and terms (RenderOptions), the representation and the time
    property paired with values in the simplified form."""

    options: RenderOptions
    format: str = "normalized"  # normalized | temporalValues | aggregatedValues
    timeproperty: str = "observedAt"


def _head(entity_id: str, types: Sequence[str], options: RenderOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.pick_id:
        out["id"] = entity_id
    if options.pick_type:
        names = [options.terms.compact(t) for t in types]
        out["type"] = names[0] if len(names) == 1 else names
    return out


def _shown(iri: str, options: RenderOptions) -> bool:
    return (options.attrs is None or iri in options.attrs) and (options.omit is None or iri not in options.omit)


def _name(iri: str, terms: TermMap) -> str:
    return "scope" if iri == SCOPE_ATTR else terms.compact(iri)


def render_temporal(entity: Entity, view: TemporalView) -> dict[str, Any]:
    """Normalized (every attribute an array of instances) or simplified (temporalValues)."""
    options = replace(view.options, format="normalized")
    out = _head(entity["id"], entity["type"], options)
    for iri, instances in entity["attrs"].items():
        if not _shown(iri, options):
            continue
        name = _name(iri, options.terms)
        if view.format == "temporalValues":
            out[name] = _simplified(instances, options, view.timeproperty)
        else:
            out[name] = [_normalized(instance, options) for instance in instances]
    return out


def _normalized(instance: Instance, options: RenderOptions) -> dict[str, Any]:
    core = {k: v for k, v in instance.items() if k not in ("instanceId", "deletedAt")}
    out: dict[str, Any] = render_instance(core, options)
    if "deletedAt" in instance:
        out["deletedAt"] = instance["deletedAt"]
    out["instanceId"] = instance["instanceId"]
    return out


def _series(instances: Sequence[Instance]) -> dict[str | None, list[Instance]]:
    grouped: dict[str | None, list[Instance]] = {}
    for instance in instances:
        grouped.setdefault(instance.get("datasetId"), []).append(instance)
    return grouped


def _one_or_many(items: list[dict[str, Any]]) -> Any:
    return items[0] if len(items) == 1 else items


def _simplified(instances: Sequence[Instance], options: RenderOptions, timeproperty: str) -> Any:
    """One object per datasetId: {"type", "<values|objects|...>": [[value, time], ...], "datasetId"?}."""
    if not instances:
        return {"type": "Property", "values": []}
    objects = []
    for dataset, items in _series(instances).items():
        kind = items[-1].get("type", "Property")
        member = SIMPLIFIED_MEMBERS.get(kind, "values")
        obj: dict[str, Any] = {"type": kind, member: [[_simple_value(i, options), i.get(timeproperty)] for i in items]}
        if dataset is not None:
            obj["datasetId"] = dataset
        objects.append(obj)
    return _one_or_many(objects)


def _simple_value(instance: Instance, options: RenderOptions) -> Any:
    if instance.get("type") == "ListRelationship":
        return instance.get("objectList")
    return key_value(instance, replace(options, lang=None))


def render_aggregated(
    entity: AggregatedEntity, options: RenderOptions, aggregation: Aggregation, window: Window
) -> dict[str, Any]:
    """{"<attr>": {"type", "<method>": [[value, start, end], ...]}} per datasetId; periods without
    instances are left out, and so is a method without a value for a period (a sum of texts)."""
    out = _head(entity.id, entity.types, options)
    for iri, series in entity.attrs.items():
        if _shown(iri, options):
            out[_name(iri, options.terms)] = _one_or_many([_aggregated(s, aggregation, window) for s in series])
    return out


def _aggregated(series: AggregatedSeries, aggregation: Aggregation, window: Window) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": series.kind}
    for method in aggregation.methods:
        points = []
        for period in series.periods:
            value = method_value(method, period)
            if value is not None:
                start, end = period_bounds(aggregation.duration, period.origin, period.index, period.last, window)
                points.append([value, format_micros(start), format_micros(end)])
        obj[method] = points
    if series.dataset is not None:
        obj["datasetId"] = series.dataset
    return obj


def method_value(method: str, period: PeriodStats) -> Any:
    """One aggregation method's value from the statistics the store computed (stddev is the
    population standard deviation); min and max of non-numeric values compare their JSON text."""
    if method == "totalCount":
        return period.count
    if method == "distinctCount":
        return period.distinct
    if method in ("min", "max") and not period.numbers:
        text = period.min_text if method == "min" else period.max_text
        return None if text is None else orjson.loads(text)
    if not period.numbers:
        return None
    if method == "stddev":
        assert period.avg is not None and period.sumsq is not None
        return math.sqrt(max(0.0, period.sumsq / period.numbers - period.avg * period.avg))
    value: float | None = getattr(period, method)
    return value
