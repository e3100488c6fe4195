"""Dataset declarations: what the city publishes, as data (a TOML catalogue file), never inferred.

A catalogue file has one [catalog] table (title, description, publisher, default licence) and one
[[dataset]] table per dataset: an entity type, optionally narrowed by q or an area (a bounding box),
with its titles and descriptions per language, keywords, themes, licence and the attributes that
are personal data (never published, whatever the access policies say).

A dataset may instead name a dataspace offer this city publishes (`offer = "ID"`, docs/federation.md):
it then stands for the offer's entity types, attributes and area, for as long as the offer is
published (from_offer), so the open catalogue and the partners' offer describe the same data.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

DEMO_CATALOG = "demo-catalog.toml"
CC_BY_4 = "http://publications.europa.eu/resource/authority/licence/CC_BY_4_0"
# the EU data themes (http://publications.europa.eu/resource/authority/data-theme) and their English labels
THEMES = {
    "AGRI": "Agriculture, fisheries, forestry and food",
    "ECON": "Economy and finance",
    "EDUC": "Education, culture and sport",
    "ENER": "Energy",
    "ENVI": "Environment",
    "GOVE": "Government and public sector",
    "HEAL": "Health",
    "INTR": "International issues",
    "JUST": "Justice, legal system and public safety",
    "OP_DATPRO": "Provisional data",
    "REGI": "Regions and cities",
    "SOCI": "Population and society",
    "TECH": "Science and technology",
    "TRAN": "Transport",
}
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")  # CKAN's package name rule (lower case, digits, - and _)
_LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class CatalogFileError(ValueError):
    """A catalogue file that cannot be loaded: the file and the reason."""


@dataclass(frozen=True)
class Dataset:
    id: str
    type: str  # entity type as a term of the core @context (or a full IRI)
    title: dict[str, str]  # language -> text
    description: dict[str, str]
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)
    themes: tuple[str, ...] = ()  # EU data themes (http://publications.europa.eu/resource/authority/data-theme)
    q: str | None = None
    area: tuple[float, float, float, float] | None = None  # (min lon, min lat, max lon, max lat)
    licence: str = CC_BY_4
    personal: frozenset[str] = frozenset()  # attribute terms never published
    group_by: tuple[str, ...] = ()  # attributes whose value counts are published (groups below k hidden)
    offer: str | None = None  # the dataspace offer it stands for (from_offer fills what follows)
    attrs: frozenset[str] | None = None  # attribute terms published (None: every one)
    shape: str | None = None  # a GeoJSON (Multi)Polygon, as JSON text, the entities must intersect

    def text(self, values: dict[str, str], lang: str = "en") -> str:
        return values.get(lang) or next(iter(values.values()))

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.type.split(","))


def from_offer(declared: Dataset, offer: Mapping[str, Any] | None) -> Dataset | None:
    """The dataset a declaration `offer = ID` stands for while the offer is published: the offer's
    types, attributes and area; its title unless the declaration gives one. None: the offer is not
    published, or serves another tenant than the catalogue's (the default one). The offer's terms
    (purposes, assignees, rate, window) are its agreements'; what is published is still the public
    view the access policies give (catalog/public.py)."""
    if offer is None or offer.get("tenant", ""):
        return None
    types = [str(t) for t in offer.get("types", [])]
    if not types:
        return None
    title = declared.title or {"en": str(offer.get("title") or offer.get("id"))}
    description = declared.description or {
        "en": f"Published from this city's dataspace offer {offer.get('id')}: {', '.join(types)}."
    }
    return dataclasses.replace(
        declared,
        type=",".join(types),
        title=title,
        description=description,
        attrs=frozenset(offer["attrs"]) if "attrs" in offer else None,
        shape=orjson.dumps(offer["area"]).decode() if "area" in offer else None,
    )


@dataclass(frozen=True)
class Catalog:
    title: dict[str, str]
    description: dict[str, str]
    publisher: str
    publisher_url: str = ""
    homepage: str = ""
    attribution: str = ""  # the credit line written into every export
    licence: str = CC_BY_4
    datasets: tuple[Dataset, ...] = ()

    def find(self, dataset_id: str) -> Dataset | None:
        return next((d for d in self.datasets if d.id == dataset_id), None)

    @property
    def credit(self) -> str:
        return self.attribution or self.publisher


EMPTY = Catalog(title={"en": "Open data"}, description={"en": "No dataset is published yet."}, publisher="This city")


def demo_catalog_path() -> str:
    """The shipped demo catalogue's file (`cityos serve --demo-on-empty` names it once the demo is loaded)."""
    return str(resources.files("cityos.catalog").joinpath("data", DEMO_CATALOG))


def load_catalog(path: str, *, demo: bool = False) -> Catalog:
    """The catalogue of `path`; without one, the demo city's (demo) or an empty catalogue."""
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogFileError(f"{path}: {exc.strerror or exc}") from exc
        return parse_catalog(text, path)
    if demo:
        return load_catalog(demo_catalog_path())
    return EMPTY


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogFileError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return _catalog(document)
    except (TypeError, ValueError) as exc:
        raise CatalogFileError(f"{source}: {exc}") from exc


def _catalog(document: dict[str, Any]) -> Catalog:
    head = document.get("catalog", {})
    _only(head, {"title", "description", "publisher", "publisher_url", "homepage", "attribution", "licence"}, "catalog")
    licence = _string(head.get("licence", CC_BY_4), "catalog.licence")
    datasets = tuple(_dataset(item, licence) for item in _list(document.get("dataset", []), "dataset"))
    ids = [d.id for d in datasets]
    if len(set(ids)) != len(ids):
        raise ValueError("two datasets have the same id")
    return Catalog(
        title=_texts(head.get("title", {"en": "Open data"}), "catalog.title"),
        description=_texts(
            head.get("description", {"en": "Datasets published from the city's live data."}), "catalog.description"
        ),
        publisher=_string(head.get("publisher", "This city"), "catalog.publisher"),
        publisher_url=_optional(head.get("publisher_url", ""), "catalog.publisher_url"),
        homepage=_optional(head.get("homepage", ""), "catalog.homepage"),
        attribution=_optional(head.get("attribution", ""), "catalog.attribution"),
        licence=licence,
        datasets=datasets,
    )


DATASET_KEYS = {
    "id",
    "type",
    "title",
    "description",
    "keywords",
    "themes",
    "q",
    "area",
    "licence",
    "personal",
    "group_by",
    "offer",
}


def _dataset(item: Any, licence: str) -> Dataset:
    if not isinstance(item, dict):
        raise ValueError("each [[dataset]] must be a table")
    name = _string(item.get("id"), "dataset.id")
    if not _ID.match(name):
        raise ValueError(f"dataset id {name!r}: lower-case letters, digits, - and _ only (at most 100)")
    where = f"dataset {name}"
    _only(item, DATASET_KEYS, where)
    themes = tuple(_strings(item.get("themes", []), f"{where}: themes"))
    unknown = [t for t in themes if t not in THEMES]
    if unknown:
        raise ValueError(f"{where}: unknown theme {unknown[0]} (one of {', '.join(sorted(THEMES))})")
    area = item.get("area")
    box: tuple[float, float, float, float] | None = None
    if area is not None:
        if not (isinstance(area, list) and len(area) == 4 and all(isinstance(v, int | float) for v in area)):
            raise ValueError(f"{where}: area is [min lon, min lat, max lon, max lat]")
        box = (float(area[0]), float(area[1]), float(area[2]), float(area[3]))
        if not (-180 <= box[0] < box[2] <= 180 and -90 <= box[1] < box[3] <= 90):
            raise ValueError(f"{where}: area is not a valid bounding box")
    keywords = item.get("keywords", {})
    if not isinstance(keywords, dict):
        raise ValueError(f"{where}: keywords is a table of language = [words]")
    offer = item.get("offer")
    if offer is not None:  # the type (and area, attributes) are the offer's, read while serving
        offer = _string(offer, f"{where}: offer")
        for key in ("type", "q", "area"):
            if key in item:
                raise ValueError(f"{where}: a dataset of an offer takes its {key} from the offer")
    return Dataset(
        id=name,
        type=_string(item.get("type"), f"{where}: type") if offer is None else "",
        title=_texts(item.get("title"), f"{where}: title") if offer is None or "title" in item else {},
        description=_texts(item.get("description"), f"{where}: description")
        if offer is None or "description" in item
        else {},
        offer=offer,
        keywords={_lang(k, where): tuple(_strings(v, f"{where}: keywords.{k}")) for k, v in keywords.items()},
        themes=themes,
        q=_string(item["q"], f"{where}: q") if "q" in item else None,
        area=box,
        licence=_string(item.get("licence", licence), f"{where}: licence"),
        personal=frozenset(_strings(item.get("personal", []), f"{where}: personal")),
        group_by=tuple(_strings(item.get("group_by", []), f"{where}: group_by")),
    )


def _only(table: Any, keys: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    extra = sorted(set(table) - keys)
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]}")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _optional(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return list(value)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be an array of tables")
    return value


def _lang(tag: str, where: str) -> str:
    if not _LANG.match(tag):
        raise ValueError(f"{where}: {tag!r} is not a language tag")
    return tag


def _texts(value: Any, what: str) -> dict[str, str]:
    """A text per language: a table {en = "...", zh = "..."} (a plain string is English)."""
    if isinstance(value, str):
        value = {"en": value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{what} must be a table of language = text")
    return {_lang(k, what): _string(v, f"{what}.{k}") for k, v in value.items()}
