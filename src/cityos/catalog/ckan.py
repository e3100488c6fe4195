"""The CKAN action API, read side (package_list, package_show, package_search, organization_list,
status_show), over the same descriptions as the DCAT catalogue, so CKAN harvesters and tools such
as ckanapi see the same datasets. Answers use CKAN's envelope ({"help", "success", "result"}) and
its error types, which CKAN clients turn back into exceptions."""

from __future__ import annotations

import re
from typing import Any

from cityos import __version__
from cityos.catalog.dcat import DISTRIBUTIONS, Described, distributions, download_url, frequency
from cityos.catalog.model import Catalog
from cityos.temporal.query import format_micros

CKAN_VERSION = "2.10.0"  # the API version whose answers these follow
MAX_ROWS = 1000  # package_search's rows, as CKAN's default ckan.search.rows_max
LICENCES = {
    "http://publications.europa.eu/resource/authority/licence/CC_BY_4_0": (
        "CC-BY-4.0",
        "Creative Commons Attribution 4.0",
    ),
    "http://publications.europa.eu/resource/authority/licence/CC0": ("CC0-1.0", "Creative Commons CCZero"),
    "http://publications.europa.eu/resource/authority/licence/ODC_BY": ("ODC-BY-1.0", "Open Data Commons Attribution"),
    "http://publications.europa.eu/resource/authority/licence/ODBL": (
        "ODbL-1.0",
        "Open Data Commons Open Database License",
    ),
}
FORMAT_NAMES = {
    "ngsi-ld": "JSON-LD",
    "geojson": "GeoJSON",
    "csv": "CSV",
    "parquet": "Parquet",
    "history-csv": "CSV",
    "history-parquet": "Parquet",
}


class CkanError(Exception):
    """A CKAN error answer: its __type and HTTP status."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(message)
        self.kind, self.status, self.message = kind, status, message


def organization(catalog: Catalog) -> dict[str, Any]:
    name = re.sub(r"[^a-z0-9_-]+", "-", catalog.publisher.lower()).strip("-")[:100] or "city"
    return {
        "id": name,
        "name": name,
        "title": catalog.publisher,
        "display_name": catalog.publisher,
        "description": catalog.publisher_url,
        "type": "organization",
        "is_organization": True,
        "state": "active",
        "approval_status": "approved",
    }


def package(catalog: Catalog, item: Described, base: str) -> dict[str, Any]:
    dataset, stats = item.dataset, item.stats
    licence_id, licence_title = LICENCES.get(dataset.licence, (dataset.licence, dataset.licence))
    tags = sorted({word for words in dataset.keywords.values() for word in words})
    modified = format_micros(stats.last) if stats.last is not None else None
    resources = []
    for name in distributions():
        media, _, title = DISTRIBUTIONS[name]
        fmt = FORMAT_NAMES[name]
        resources.append(
            {
                "id": f"{dataset.id}-{name}",
                "package_id": dataset.id,
                "name": title,
                "url": download_url(base, dataset, name),
                "format": fmt,
                "mimetype": media,
                "size": item.sizes.get(name),
                "state": "active",
                "last_modified": modified,
            }
        )
    extras = [{"key": "frequency", "value": frequency(stats)}, {"key": "entity_type", "value": dataset.type}]
    if stats.bbox is not None:
        x0, y0, x1, y1 = stats.bbox
        spatial = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
        extras.append({"key": "spatial", "value": _json(spatial)})
    if stats.first is not None and stats.last is not None:
        extras += [
            {"key": "temporal_start", "value": format_micros(stats.first)},
            {"key": "temporal_end", "value": format_micros(stats.last)},
        ]
    for lang, text in dataset.title.items():
        extras.append({"key": f"title_{lang}", "value": text})
    for lang, text in dataset.description.items():
        extras.append({"key": f"notes_{lang}", "value": text})
    org = organization(catalog)
    return {
        "id": dataset.id,
        "name": dataset.id,
        "title": dataset.text(dataset.title),
        "notes": dataset.text(dataset.description),
        "type": "dataset",
        "state": "active",
        "private": False,
        "license_id": licence_id,
        "license_title": licence_title,
        "license_url": dataset.licence,
        "author": catalog.publisher,
        "maintainer": catalog.publisher,
        "url": f"{base.rstrip('/')}/catalog/datasets/{dataset.id}",
        "version": None,
        "metadata_created": format_micros(stats.first) if stats.first is not None else modified,
        "metadata_modified": modified,
        "owner_org": org["id"],
        "organization": org,
        "tags": [{"name": t, "display_name": t, "state": "active"} for t in tags],
        "num_tags": len(tags),
        "groups": [{"name": t.lower(), "title": t} for t in dataset.themes],
        "resources": resources,
        "num_resources": len(resources),
        "extras": extras,
        "num_records": stats.count,
    }


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def search(packages: list[dict[str, Any]], q: str, fq: str, rows: int, start: int) -> dict[str, Any]:
    """package_search: q matches words of the title, notes, tags and every language's texts (all
    words must match; `*:*` or empty matches all); fq keeps packages whose field has the value
    (`tags:parking res_format:CSV organization:x name:x license_id:x groups:envi`)."""
    if rows < 0 or start < 0:
        raise CkanError("Validation Error", 409, "rows and start must not be negative")
    rows = min(rows, MAX_ROWS)
    words = [] if q.strip() in ("", "*:*") else [w.lower() for w in re.findall(r"\w+", q)]
    filters = _filters(fq)
    found = [p for p in packages if all(w in _text(p) for w in words) and all(_matches(p, f, v) for f, v in filters)]
    return {
        "count": len(found),
        "results": found[start : start + rows],
        "sort": "score desc, metadata_modified desc",
        "facets": {},
        "search_facets": {},
    }


FQ_FIELDS = ("tags", "res_format", "organization", "owner_org", "name", "id", "license_id", "groups", "res_mimetype")


def _filters(fq: str) -> list[tuple[str, str]]:
    filters = []
    for term in re.findall(r'[+]?(\w+):("[^"]*"|\S+)', fq):
        name, value = term[0], term[1].strip('"')
        if name not in FQ_FIELDS:
            raise CkanError(
                "Search Query Error", 409, f"fq field {name} is not supported (one of {', '.join(FQ_FIELDS)})"
            )
        filters.append((name, value))
    leftover = re.sub(r'[+]?(\w+):("[^"]*"|\S+)|\bAND\b|\s', "", fq)
    if leftover:
        raise CkanError("Search Query Error", 409, f"cannot read fq {fq!r}: field:value terms only")
    return filters


def _text(package: dict[str, Any]) -> str:
    parts = [package["title"], package["notes"], package["name"]]
    parts += [t["name"] for t in package["tags"]]
    parts += [e["value"] for e in package["extras"] if e["key"].startswith(("title_", "notes_"))]
    return " ".join(parts).lower()


def _matches(package: dict[str, Any], field: str, value: str) -> bool:
    value = value.lower()
    if field == "tags":
        return any(t["name"].lower() == value for t in package["tags"])
    if field == "res_format":
        return any(r["format"].lower() == value for r in package["resources"])
    if field == "res_mimetype":
        return any(r["mimetype"].lower() == value for r in package["resources"])
    if field in ("organization", "owner_org"):
        return bool(package["organization"]["name"] == value)
    if field == "groups":
        return any(g["name"] == value for g in package["groups"])
    return str(package.get(field, "")).lower() == value


def status(catalog: Catalog, base: str) -> dict[str, Any]:
    return {
        "site_title": catalog.title.get("en", next(iter(catalog.title.values()))),
        "site_description": catalog.description.get("en", next(iter(catalog.description.values()))),
        "site_url": base.rstrip("/"),
        "ckan_version": CKAN_VERSION,
        "locale_default": "en",
        "extensions": ["cityos", f"cityos-{__version__}", "dcat"],
    }
