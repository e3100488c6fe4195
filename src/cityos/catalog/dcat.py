"""The catalogue as DCAT-AP 3.0.1 (an RDF graph, rdflib): one dcat:Dataset per public dataset, its
extent, time span, update frequency and distributions computed from the live data (catalog/public.py).

Every object of a DCAT-AP property carries the class the profile's range shapes ask for
(dct:LicenseDocument, dct:Location, dct:PeriodOfTime, dct:MediaType, ...), so the graph validates
against the release's SHACL shapes on its own (tests/test_catalog_dcat.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS, XSD

from cityos.catalog.model import THEMES, Catalog, Dataset
from cityos.catalog.public import Stats
from cityos.temporal.query import format_micros

GSP = Namespace("http://www.opengis.net/ont/geosparql#")
ADMS = Namespace("http://www.w3.org/ns/adms#")
EU = "http://publications.europa.eu/resource/authority/"
IANA = "http://www.iana.org/assignments/media-types/"
LANGUAGES = {"en": "ENG", "zh": "ZHO", "fr": "FRA", "de": "DEU", "es": "SPA", "it": "ITA", "nl": "NLD", "pt": "POR"}
# format -> (IANA media type, EU file type, title)
DISTRIBUTIONS = {
    "ngsi-ld": ("application/ld+json", "JSON_LD", "NGSI-LD query (live)"),
    "geojson": ("application/geo+json", "GEOJSON", "GeoJSON snapshot"),
    "csv": ("text/csv", "CSV", "CSV snapshot"),
    "parquet": ("application/vnd.apache.parquet", "PARQUET", "Parquet snapshot"),
    "history-csv": ("text/csv", "CSV", "History (CSV)"),
    "history-parquet": ("application/vnd.apache.parquet", "PARQUET", "History (Parquet)"),
}
# seconds between updates -> the EU frequency vocabulary (the first whose bound is not passed)
FREQUENCIES = (
    (90.0, "UPDATE_CONT"),
    (2 * 3600.0, "HOURLY"),
    (2 * 86400.0, "DAILY"),
    (10 * 86400.0, "WEEKLY"),
    (45 * 86400.0, "MONTHLY"),
    (400 * 86400.0, "ANNUAL"),
)
MEDIA = {"jsonld": "application/ld+json", "ttl": "text/turtle", "rdf": "application/rdf+xml"}
RDFLIB_FORMAT = {"jsonld": "json-ld", "ttl": "turtle", "rdf": "xml"}


def distributions() -> list[str]:
    """The distributions this installation serves (Parquet only with pyarrow: the parquet extra)."""
    from cityos.exports.formats import parquet_available

    return [name for name in DISTRIBUTIONS if parquet_available() or not name.endswith("parquet")]


def frequency(stats: Stats) -> str:
    """The EU frequency code of the observed median interval between updates."""
    if stats.interval is None:
        return "UNKNOWN" if stats.instances == 0 else "IRREG"
    return next((code for bound, code in FREQUENCIES if stats.interval <= bound), "IRREG")


@dataclass
class Described:
    """A dataset with what the live data says about it, and the byte size of its snapshots where known."""

    dataset: Dataset
    stats: Stats
    sizes: dict[str, int]


class CatalogGraph:
    def __init__(self, catalog: Catalog, base: str) -> None:
        self.catalog = catalog
        self.base = base.rstrip("/")
        self.graph = Graph()
        for prefix, namespace in (("dcat", DCAT), ("dct", DCTERMS), ("foaf", FOAF), ("skos", SKOS), ("gsp", GSP)):
            self.graph.bind(prefix, namespace)

    def uri(self, path: str) -> URIRef:
        return URIRef(f"{self.base}{path}")

    def add(self, subject: Any, predicate: Any, obj: Any, kind: Any = None) -> Any:
        self.graph.add((subject, predicate, obj))
        if kind is not None:
            self.graph.add((obj, RDF.type, kind))
        return obj

    def texts(self, subject: Any, predicate: Any, values: dict[str, str]) -> None:
        for lang, text in values.items():
            self.graph.add((subject, predicate, Literal(text, lang=lang)))

    def build(self, described: list[Described]) -> Graph:
        g, cat = self.graph, self.catalog
        node = self.uri("/catalog")
        g.add((node, RDF.type, DCAT.Catalog))
        self.texts(node, DCTERMS.title, cat.title)
        self.texts(node, DCTERMS.description, cat.description)
        self.publisher(node)
        self.add(node, DCTERMS.license, URIRef(cat.licence), DCTERMS.LicenseDocument)
        if cat.homepage:
            self.add(node, FOAF.homepage, URIRef(cat.homepage), FOAF.Document)
        for lang in sorted({lang for d in described for lang in d.dataset.title} | set(cat.title)):
            if lang in LANGUAGES:
                self.add(node, DCTERMS.language, URIRef(f"{EU}language/{LANGUAGES[lang]}"), DCTERMS.LinguisticSystem)
        # modified when its data last changed (not when it was asked: the same data, the same catalogue)
        lasts = [d.stats.last for d in described if d.stats.last is not None]
        if lasts:
            g.add((node, DCTERMS.modified, Literal(format_micros(max(lasts)), datatype=XSD.dateTime)))
        for item in described:
            g.add((node, DCAT.dataset, self.dataset(item)))
        return g

    def publisher(self, subject: Any) -> None:
        agent = self.uri("/catalog#publisher")
        self.add(subject, DCTERMS.publisher, agent, FOAF.Agent)
        self.graph.add((agent, FOAF.name, Literal(self.catalog.publisher)))
        if self.catalog.publisher_url:
            self.add(agent, FOAF.homepage, URIRef(self.catalog.publisher_url), FOAF.Document)

    def dataset(self, item: Described) -> URIRef:
        g, dataset, stats = self.graph, item.dataset, item.stats
        node = self.uri(f"/catalog/datasets/{dataset.id}")
        g.add((node, RDF.type, DCAT.Dataset))
        g.add((node, DCTERMS.identifier, Literal(dataset.id)))
        self.texts(node, DCTERMS.title, dataset.title)
        self.texts(node, DCTERMS.description, dataset.description)
        for lang, words in dataset.keywords.items():
            for word in words:
                g.add((node, DCAT.keyword, Literal(word, lang=lang)))
        for theme in dataset.themes:
            concept = self.add(node, DCAT.theme, URIRef(f"{EU}data-theme/{theme}"), SKOS.Concept)
            g.add((concept, SKOS.prefLabel, Literal(THEMES[theme], lang="en")))
        self.publisher(node)
        self.add(node, DCTERMS.accrualPeriodicity, URIRef(f"{EU}frequency/{frequency(stats)}"), DCTERMS.Frequency)
        if stats.bbox is not None:
            place = self.add(node, DCTERMS.spatial, BNode(), DCTERMS.Location)
            g.add((place, DCAT.bbox, Literal(_wkt(stats.bbox), datatype=GSP.wktLiteral)))
        if stats.first is not None and stats.last is not None:
            period = self.add(node, DCTERMS.temporal, BNode(), DCTERMS.PeriodOfTime)
            g.add((period, DCAT.startDate, Literal(format_micros(stats.first), datatype=XSD.dateTime)))
            g.add((period, DCAT.endDate, Literal(format_micros(stats.last), datatype=XSD.dateTime)))
            g.add((node, DCTERMS.modified, Literal(format_micros(stats.last), datatype=XSD.dateTime)))
        for name in distributions():
            g.add((node, DCAT.distribution, self.distribution(item, name)))
        return node

    def distribution(self, item: Described, name: str) -> URIRef:
        g, dataset = self.graph, item.dataset
        media, file_type, title = DISTRIBUTIONS[name]
        node = self.uri(f"/catalog/datasets/{dataset.id}/distributions/{name}")
        url = URIRef(download_url(self.base, dataset, name))
        g.add((node, RDF.type, DCAT.Distribution))
        g.add((node, DCTERMS.title, Literal(title, lang="en")))
        g.add((node, DCAT.accessURL, url))
        if name != "ngsi-ld":
            g.add((node, DCAT.downloadURL, url))
        self.add(node, DCAT.mediaType, URIRef(IANA + media), DCTERMS.MediaType)
        self.add(node, DCTERMS.format, URIRef(f"{EU}file-type/{file_type}"), DCTERMS.MediaTypeOrExtent)
        self.add(node, DCTERMS.license, URIRef(dataset.licence), DCTERMS.LicenseDocument)
        if name in item.sizes:
            g.add((node, DCAT.byteSize, Literal(item.sizes[name], datatype=XSD.nonNegativeInteger)))
        return node


def download_url(base: str, dataset: Dataset, name: str) -> str:
    """Where a distribution is fetched: the NGSI-LD query for `ngsi-ld`, else a download route."""
    base = base.rstrip("/")
    if name == "ngsi-ld":
        from urllib.parse import urlencode

        params = {"type": dataset.type, **({"q": dataset.q} if dataset.q else {})}
        if dataset.attrs is not None:
            params["attrs"] = ",".join(sorted(dataset.attrs))
        if dataset.shape is not None:
            import orjson

            shape = orjson.loads(dataset.shape)
            params |= {
                "georel": "intersects",
                "geometry": shape["type"],
                "coordinates": orjson.dumps(shape["coordinates"]).decode(),
            }
        if dataset.area is not None:
            x0, y0, x1, y1 = dataset.area
            params |= {
                "georel": "intersects",
                "geometry": "Polygon",
                "coordinates": f"[[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]]",
            }
        return f"{base}/ngsi-ld/v1/entities?{urlencode(params)}"
    kind, _, fmt = name.rpartition("-")
    return f"{base}/catalog/datasets/{dataset.id}/{kind or 'entities'}.{fmt}"


def serialize(graph: Graph, fmt: str) -> bytes:
    if fmt == "jsonld":
        context = {"dcat": str(DCAT), "dct": str(DCTERMS), "foaf": str(FOAF), "skos": str(SKOS), "gsp": str(GSP)}
        text = graph.serialize(format="json-ld", context=context, auto_compact=True)
    else:
        text = graph.serialize(format=RDFLIB_FORMAT[fmt])
    return text.encode() if isinstance(text, str) else bytes(text)


def _wkt(box: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = box
    return f"POLYGON(({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"
