"""Render internal entities as NGSI-LD representations: normalized, concise, keyValues, GeoJSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cityos.entities.model import GEO_CORE, Entity, Instance
from cityos.jsonld.termmap import TermMap

SYSTEM_KEYS = ("createdAt", "modifiedAt", "deletedAt", "expiresAt")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    terms: TermMap
    format: str = "normalized"  # normalized | concise | keyValues
    sys_attrs: bool = False
    attrs: frozenset[str] | None = None  # expanded names to keep
    omit: frozenset[str] | None = None  # expanded names to drop
    pick_id: bool = True
    pick_type: bool = True
    lang: str | None = None


def render_entity(entity: Entity, options: RenderOptions) -> dict[str, Any]:
    terms = options.terms
    out: dict[str, Any] = {}
    if options.pick_id:
        out["id"] = entity["id"]
    if options.pick_type:
        types = [terms.compact(t) for t in entity["type"]]
        out["type"] = types[0] if len(types) == 1 else types
    if "scope" in entity:
        scope = entity["scope"]
        out["scope"] = scope[0] if len(scope) == 1 else scope
    for iri, instances in entity["attrs"].items():
        if options.attrs is not None and iri not in options.attrs:
            continue
        if options.omit is not None and iri in options.omit:
            continue
        if not instances:
            continue
        name = terms.compact(iri)
        rendered = [render_instance(instance, options) for instance in instances]
        if options.format == "keyValues":
            out[name] = rendered[0] if len(rendered) == 1 else rendered
        else:
            out[name] = rendered[0] if len(rendered) == 1 else rendered
    if options.sys_attrs and options.format != "keyValues":
        for key in SYSTEM_KEYS:
            if key in entity:
                out[key] = entity[key]
    return out


def _language_value(language_map: dict[str, Any], lang: str) -> tuple[str, Any]:
    """Pick a language from a LanguageProperty map per the `lang` parameter (RFC 4647 list)."""
    for wanted in (part.split(";")[0].strip() for part in lang.split(",")):
        if wanted == "*":
            break
        if wanted in language_map:
            return wanted, language_map[wanted]
    if "@none" in language_map:
        return "@none", language_map["@none"]
    tag = next(iter(language_map))
    return tag, language_map[tag]


def key_value(instance: Instance, options: RenderOptions) -> Any:
    kind = instance["type"]
    if kind in ("Property", "GeoProperty"):
        return instance["value"]
    if kind == "Relationship":
        return instance["object"]
    if kind == "LanguageProperty":
        if options.lang:
            return _language_value(instance["languageMap"], options.lang)[1]
        return {"languageMap": instance["languageMap"]}
    if kind == "VocabProperty":
        return _compact_vocab(instance["vocab"], options.terms)
    if kind == "JsonProperty":
        return {"json": instance["json"]}
    if kind == "ListProperty":
        return instance["valueList"]
    return instance["objectList"]


def _compact_vocab(vocab: Any, terms: TermMap) -> Any:
    if isinstance(vocab, list):
        return [terms.compact(item) for item in vocab]
    return terms.compact(vocab)


def render_instance(instance: Instance, options: RenderOptions) -> Any:
    if options.format == "keyValues":
        return key_value(instance, options)
    terms = options.terms
    kind = instance["type"]
    out: dict[str, Any] = {"type": kind}
    for key, value in instance.items():
        if key == "type":
            continue
        if ":" in key:
            if value is None:
                continue
            out[terms.compact(key)] = render_instance(value, options)
        elif key in SYSTEM_KEYS:
            if options.sys_attrs:
                out[key] = value
        elif key == "vocab":
            out["vocab"] = _compact_vocab(value, terms)
        elif key in ("objectType", "entityTypeSealed"):
            out[key] = _compact_vocab(value, terms)
        elif key == "objectList":
            out["objectList"] = [{"object": target} for target in value]
        elif key == "languageMap" and options.lang:
            tag, text = _language_value(value, options.lang)
            out["type"] = "Property"
            out["value"] = text
            if tag != "@none":
                out["lang"] = tag
        else:
            out[key] = value
    if options.format == "concise":
        return _concise(out)
    return out


def _concise(out: dict[str, Any]) -> Any:
    kind = out.pop("type")
    if kind in ("Property", "GeoProperty") and len(out) == 1 and "value" in out:
        value = out["value"]
        # a bare object would be re-read as an attribute: keep {"value": ...} for those
        if kind == "GeoProperty" or not isinstance(value, dict | list):
            return value
    return out


def to_geojson_feature(entity: Entity, options: RenderOptions, geometry_property: str | None) -> dict[str, Any]:
    """A GeoJSON Feature: geometry from `geometry_property` (default location), the rest as properties."""
    geo_iri = options.terms.expand(geometry_property) if geometry_property else None
    geometry = None
    candidates = [geo_iri] if geo_iri else [*GEO_CORE]
    if not geo_iri:
        candidates = ["https://uri.etsi.org/ngsi-ld/location"]
    for iri in candidates:
        instances = entity["attrs"].get(iri)
        if instances and instances[0].get("type") == "GeoProperty":
            geometry = instances[0]["value"]
            break
    body = render_entity(entity, options)
    properties = {k: v for k, v in body.items() if k != "id"}
    return {"id": entity["id"], "type": "Feature", "geometry": geometry, "properties": properties}
