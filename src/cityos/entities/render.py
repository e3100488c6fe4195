"""Render internal entities as NGSI-LD representations: normalized, concise, keyValues, GeoJSON."""

from __future__ import annotations

from collections.abc import Iterator
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
    pick_scope: bool = True
    lang: str | None = None
    datasets: frozenset[str | None] | None = None  # datasetId filter; None stands for the default instance


_PLAIN_OPTIONS: dict[int, RenderOptions] = {}  # by the TermMap's id (each value keeps its TermMap alive)


def plain_options(terms: TermMap) -> RenderOptions:
    """RenderOptions(terms) with every default (a request without parameters), one object per
    TermMap, so the render cache finds its token by identity (render_cache.RenderCache.token)."""
    found = _PLAIN_OPTIONS.get(id(terms))
    if found is None:
        if len(_PLAIN_OPTIONS) >= 256:
            _PLAIN_OPTIONS.clear()
        found = _PLAIN_OPTIONS[id(terms)] = RenderOptions(terms=terms)
    return found


def _head(entity: Entity, options: RenderOptions) -> dict[str, Any]:
    """The rendered entity's id, type and scope, as picked; its attributes follow."""
    out: dict[str, Any] = {}
    if options.pick_id:
        out["id"] = entity["id"]
    if options.pick_type:
        terms = options.terms
        compacted = terms.compacted
        types = [compacted.get(t) or terms.compact(t) for t in entity["type"]]
        out["type"] = types[0] if len(types) == 1 else types
    if "scope" in entity and options.pick_scope:
        scope = entity["scope"]
        out["scope"] = scope[0] if len(scope) == 1 else scope
    return out


def _picked(entity: Entity, options: RenderOptions) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The attributes to render, by compacted name, with the instances of the datasetIds asked for."""
    terms = options.terms
    compacted = terms.compacted  # the context's IRI -> term map: one dict lookup per name once warm
    keep, omit, datasets = options.attrs, options.omit, options.datasets
    for iri, instances in entity["attrs"].items():
        if (keep is not None and iri not in keep) or (omit is not None and iri in omit) or not instances:
            continue
        if datasets is not None:
            instances = [i for i in instances if i.get("datasetId") in datasets]
            if not instances:
                continue
        yield compacted.get(iri) or terms.compact(iri), instances


def render_entity(entity: Entity, options: RenderOptions) -> dict[str, Any]:
    out = _head(entity, options)
    key_values = options.format == "keyValues"
    verbatim, skipped = _VERBATIM[options.sys_attrs, bool(options.lang)], _SKIPPED[options.sys_attrs]
    concise = options.format == "concise"
    for name, instances in _picked(entity, options):
        if len(instances) == 1:  # most attributes: no list of one made and taken apart
            only = instances[0]
            out[name] = key_value(only, options) if key_values else _render(only, options, verbatim, skipped, concise)
            continue
        if key_values:
            rendered = [key_value(instance, options) for instance in instances]
        else:
            rendered = [_render(instance, options, verbatim, skipped, concise) for instance in instances]
        if len(rendered) == 1:
            out[name] = rendered[0]
            continue
        if key_values:
            # several datasetIds in keyValues: {"dataset": {"@none": v, "<datasetId>": v}} (4.5.x)
            out[name] = {"dataset": {i.get("datasetId", "@none"): v for i, v in zip(instances, rendered, strict=True)}}
        else:
            out[name] = rendered
    if options.sys_attrs and not key_values:
        for key in SYSTEM_KEYS:
            if key in entity:
                out[key] = entity[key]
    return out


def render_owned(entity: Entity, options: RenderOptions) -> dict[str, Any]:
    """render_entity of an entity that no one else holds and that is not used again (one just
    decoded from its stored bytes): each instance whose members need nothing but dropping (most:
    createdAt and modifiedAt without sysAttrs) is rendered in place instead of copied member by
    member into a new dict. Same result as render_entity, key order included (a cold query page
    renders 20 stored documents of about ten attributes each: docs/performance.md, issue 15 tenth
    pass "a cheaper cold render")."""
    if options.format == "keyValues":  # key_value builds no dict per instance already
        return render_entity(entity, options)
    if (  # the whole entity (no attrs, pick, omit or datasetId): the common read
        options.attrs is None
        and options.omit is None
        and options.datasets is None
        and options.pick_id
        and options.pick_type
        and options.pick_scope
    ):
        return _owned_whole(entity, options)
    out = _head(entity, options)
    mode = options.sys_attrs, bool(options.lang)
    verbatim, skipped, plans = _VERBATIM[mode], _SKIPPED[options.sys_attrs], _PLANS[mode]
    concise = options.format == "concise"
    for name, instances in _picked(entity, options):
        if len(instances) > 1:
            out[name] = [_owned(instance, options, verbatim, skipped, plans, concise) for instance in instances]
            continue
        instance = instances[0]  # most attributes: one instance, rendered here without a call
        shape = tuple(instance)
        drop = plans.get(shape, _UNPLANNED)
        if drop is _UNPLANNED:
            drop = _plan(plans, shape, verbatim, skipped)
        if drop is None:  # sub-attributes, vocab, objectList, languageMap with lang, ...
            out[name] = _render(instance, options, verbatim, skipped, concise)
            continue
        for key in drop:
            del instance[key]
        out[name] = _concise(instance) if concise else instance
    if options.sys_attrs:
        for key in SYSTEM_KEYS:
            if key in entity:
                out[key] = entity[key]
    return out


def _owned_whole(entity: Entity, options: RenderOptions) -> dict[str, Any]:
    """render_owned of the whole entity (a request without attrs, pick, omit or datasetId, the
    common read) in one loop: the head built at once and each attribute's name compacted where it
    is stored, without _head's and _picked's calls and tests (61.3 -> 52.7 K instructions a render
    of the benchmark's entity: docs/performance.md, issue 15 eleventh pass). The same steps as
    render_owned's loop, in the same order, so the same bytes out (tests/test_render_owned.py)."""
    terms = options.terms
    compacted = terms.compacted
    compact = terms.compact
    types = entity["type"]
    if len(types) == 1:
        out: dict[str, Any] = {"id": entity["id"], "type": compacted.get(types[0]) or compact(types[0])}
    else:
        out = {"id": entity["id"], "type": [compacted.get(t) or compact(t) for t in types]}
    if "scope" in entity:
        scope = entity["scope"]
        out["scope"] = scope[0] if len(scope) == 1 else scope
    mode = options.sys_attrs, bool(options.lang)
    verbatim, skipped, plans = _VERBATIM[mode], _SKIPPED[options.sys_attrs], _PLANS[mode]
    concise = options.format == "concise"
    for iri, instances in entity["attrs"].items():
        if len(instances) == 1:  # most attributes
            instance = instances[0]
            shape = tuple(instance)
            drop = plans.get(shape, _UNPLANNED)
            if drop is _UNPLANNED:
                drop = _plan(plans, shape, verbatim, skipped)
            if drop is None:
                rendered = _render(instance, options, verbatim, skipped, concise)
            else:
                for key in drop:
                    del instance[key]
                rendered = _concise(instance) if concise else instance
        elif instances:
            rendered = [_owned(instance, options, verbatim, skipped, plans, concise) for instance in instances]
        else:  # an empty attribute is left out
            continue
        out[compacted.get(iri) or compact(iri)] = rendered
    if options.sys_attrs:
        for key in SYSTEM_KEYS:
            if key in entity:
                out[key] = entity[key]
    return out


# By (sysAttrs, lang given): an instance's member names (in their order) -> the members render_owned
# deletes to render it in place, or None when _render must build it (it does more than drop members,
# or "type" is not first: _render puts it first). Few shapes occur; bounded anyway.
_PLANS: dict[tuple[bool, bool], dict[tuple[str, ...], tuple[str, ...] | None]] = {
    (sys_attrs, lang): {} for sys_attrs in (False, True) for lang in (False, True)
}
_UNPLANNED: Any = object()
MAX_SHAPES = 1024


def _owned(
    instance: Instance,
    options: RenderOptions,
    verbatim: frozenset[str],
    skipped: frozenset[str],
    plans: dict[tuple[str, ...], tuple[str, ...] | None],
    concise: bool,
) -> Any:
    """One instance of render_owned's: in place when its plan allows, else built by _render."""
    shape = tuple(instance)
    drop = plans.get(shape, _UNPLANNED)
    if drop is _UNPLANNED:
        drop = _plan(plans, shape, verbatim, skipped)
    if drop is None:
        return _render(instance, options, verbatim, skipped, concise)
    for key in drop:
        del instance[key]
    return _concise(instance) if concise else instance


def _plan(
    plans: dict[tuple[str, ...], tuple[str, ...] | None],
    shape: tuple[str, ...],
    verbatim: frozenset[str],
    skipped: frozenset[str],
) -> tuple[str, ...] | None:
    """The plan of an instance of these members (see _PLANS), kept in `plans`."""
    drop: tuple[str, ...] | None = None
    if shape and shape[0] == "type" and all(key in verbatim or key in skipped for key in shape[1:]):
        drop = tuple(key for key in shape[1:] if key not in verbatim)
    if len(plans) >= MAX_SHAPES:
        plans.clear()
    plans[shape] = drop
    return drop


def _language_ranges(lang: str) -> list[str]:
    """The ranges of a `lang` parameter, best first (quality values as in Accept-Language)."""
    ranked = []
    for position, part in enumerate(lang.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        quality = 1.0
        for parameter in pieces[1:]:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 1.0
        if pieces[0] and quality > 0:
            ranked.append((-quality, position, pieces[0].lower()))
    return [wanted for _, _, wanted in sorted(ranked)]


def _language_value(language_map: dict[str, Any], lang: str) -> tuple[str, Any]:
    """Pick a language from a LanguageProperty map per the `lang` parameter (RFC 4647 lookup:
    exact tag, then a tag the range is a prefix of, then the range truncated; `*` takes any)."""
    tags = {tag.lower(): tag for tag in language_map if tag != "@none"}
    for wanted in _language_ranges(lang):
        if wanted == "*":
            break
        if wanted in tags:
            return tags[wanted], language_map[tags[wanted]]
        for lowered, tag in tags.items():
            if lowered.startswith(wanted + "-"):
                return tag, language_map[tag]
        truncated = wanted
        while "-" in truncated:
            truncated = truncated.rsplit("-", 1)[0]
            if truncated in tags:
                return tags[truncated], language_map[tags[truncated]]
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
        return {"vocab": _compact_vocab(instance["vocab"], options.terms)}
    if kind == "JsonProperty":
        return {"json": instance["json"]}
    if kind == "ListProperty":
        return instance["valueList"]
    return instance["objectList"]


def _compact_vocab(vocab: Any, terms: TermMap) -> Any:
    if isinstance(vocab, list):
        return [terms.compact(item) for item in vocab]
    return terms.compact(vocab)


# Members of a stored instance copied as they are, by (sysAttrs, lang given): the common case is
# decided by one set lookup per member; the rest (sub-attributes, vocab, objectList, languageMap
# with lang, unknown members) takes the general branch below.
_PLAIN = frozenset({"value", "object", "datasetId", "observedAt", "unitCode", "json", "valueList", "instanceId"})
_VERBATIM = {
    (sys_attrs, lang): _PLAIN | (frozenset(SYSTEM_KEYS) if sys_attrs else frozenset()) | _no_lang
    for sys_attrs in (False, True)
    for lang, _no_lang in ((False, frozenset({"languageMap"})), (True, frozenset()))
}
_SKIPPED = {False: frozenset({"type", *SYSTEM_KEYS}), True: frozenset({"type"})}


def render_instance(instance: Instance, options: RenderOptions) -> Any:
    if options.format == "keyValues":
        return key_value(instance, options)
    verbatim, skipped = _VERBATIM[options.sys_attrs, bool(options.lang)], _SKIPPED[options.sys_attrs]
    return _render(instance, options, verbatim, skipped, options.format == "concise")


def _render(
    instance: Instance, options: RenderOptions, verbatim: frozenset[str], skipped: frozenset[str], concise: bool
) -> Any:
    """An instance in normalized or concise form; `verbatim` and `skipped` are the member sets of
    the options (_VERBATIM, _SKIPPED), looked up once per entity by render_entity."""
    terms = options.terms
    out: dict[str, Any] = {"type": instance["type"]}
    for key, value in instance.items():
        if key in verbatim:
            out[key] = value
        elif key in skipped:
            continue
        elif ":" in key:
            if value is not None:
                out[terms.compacted.get(key) or terms.compact(key)] = _render(
                    value, options, verbatim, skipped, concise
                )
        elif key == "vocab":
            out["vocab"] = _compact_vocab(value, terms)
        elif key in ("objectType", "entityTypeSealed"):
            out[key] = _compact_vocab(value, terms)
        elif key == "objectList":
            out["objectList"] = [{"object": target} for target in value]
        elif key == "languageMap":  # with lang (without, it is verbatim)
            tag, text = _language_value(value, options.lang or "")
            out["type"] = "Property"
            out["value"] = text
            if tag != "@none":
                out["lang"] = tag
        else:
            out[key] = value
    return _concise(out) if concise else out


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
        instances = [i for i in entity["attrs"].get(iri, []) if i.get("type") == "GeoProperty"]
        if instances:
            default = [i for i in instances if "datasetId" not in i]
            geometry = (default or instances)[0]["value"]
            break
    body = render_entity(entity, options)
    properties = {k: v for k, v in body.items() if k != "id"}
    return {"id": entity["id"], "type": "Feature", "geometry": geometry, "properties": properties}


LEGACY_FORMS = {
    "VocabProperty": ("Property", "vocab", "value"),
    "JsonProperty": ("Property", "json", "value"),
    "ListProperty": ("Property", "valueList", "value"),
    "ListRelationship": ("Relationship", "objectList", "object"),
}


def downgrade(rendered: dict[str, Any]) -> bool:
    """Rewrite attribute types newer than NGSI-LD 1.8 as Property/Relationship, in place, for a
    client that prefers an older version (Prefer: ngsi-ld=1.x); True if anything changed."""
    changed = False
    for key, value in rendered.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and item.get("type") in LEGACY_FORMS:
                kind, member, target = LEGACY_FORMS[item["type"]]
                item["type"] = kind
                payload = item.pop(member)
                if member == "objectList":
                    payload = [entry["object"] if isinstance(entry, dict) else entry for entry in payload]
                item[target] = payload
                changed = True
            if isinstance(item, dict) and key not in ("id", "type"):
                changed = downgrade({k: v for k, v in item.items() if isinstance(v, dict | list)}) or changed
    return changed
