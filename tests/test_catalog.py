"""The open-data catalogue (docs/open-data.md) against one real `cityos serve` per back-end: the
DCAT-AP 3 catalogue validated with pyshacl against the release's SHACL shapes, its computed extent,
time span and frequency, content negotiation, the CKAN read API through the real `ckanapi` client,
personal attributes never published and counts that hide small groups. Exports: tests/test_exports.py."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import ckanapi
import pytest
from rdflib import Graph
from rdflib.compare import isomorphic
from rdflib.namespace import DCAT, DCTERMS, SH, SKOS

from catalog_helpers import API, HOURS, Served, serve_city

SHAPES = Path("/work/shared/data/dcat-ap")
if not SHAPES.is_dir():  # the shared test data beside the checkout
    SHAPES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcat-ap"
EU = "http://publications.europa.eu/resource/authority/"


@pytest.fixture(scope="module")
def served(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real server per back-end with the test catalogue and city."""
    with serve_city(module_db_url, tmp_path_factory.mktemp("catalog")) as city:
        yield city


def shapes_graph() -> tuple[Graph, int]:
    """The DCAT-AP 3.0.1 validation shapes (dcat-ap-SHACL.ttl + ranges.ttl), less the sh:property
    links to shapes neither file defines (the release's ranges.ttl names 5 such property shapes:
    pyshacl refuses a link to an undefined shape, and an undefined shape constrains nothing)."""
    shapes = Graph()
    for name in ("dcat-ap-SHACL.ttl", "ranges.ttl"):
        shapes.parse(SHAPES / name)
    dangling = [(s, o) for s, o in shapes.subject_objects(SH.property) if (o, None, None) not in shapes]
    for subject, shape in dangling:
        shapes.remove((subject, SH.property, shape))
    return shapes, len(dangling)


def test_the_catalogue_is_valid_dcat_ap_3(served: Served) -> None:
    from pyshacl import validate

    turtle = served.http.get("/catalog", headers={"Accept": "text/turtle"})
    assert turtle.status_code == 200 and turtle.headers["content-type"].startswith("text/turtle")
    data = Graph().parse(data=turtle.text, format="turtle")
    shapes, dangling = shapes_graph()
    assert dangling == 5  # the release's defect, exactly: a changed shapes file is noticed here
    conforms, _, report = validate(data, shacl_graph=shapes, inference="none")
    assert conforms, report
    datasets = set(data.subjects(predicate=None, object=DCAT.Dataset))
    assert {str(d).rsplit("/", 1)[1] for d in datasets} == {"parking", "lamps", "defective-lamps", "bins", "centre"}


def test_json_ld_turtle_and_rdf_xml_say_the_same(served: Served) -> None:
    graphs = {}
    for accept, fmt, media in (
        ("text/turtle", "turtle", "text/turtle"),
        ("application/rdf+xml", "xml", "application/rdf+xml"),
        ("application/ld+json", "json-ld", "application/ld+json"),
        ("application/json", "json-ld", "application/ld+json"),
    ):
        answer = served.http.get("/catalog", headers={"Accept": accept})
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media), accept
        with warnings.catch_warnings():  # rdflib's own JSON-LD parser uses its deprecated ConjunctiveGraph
            warnings.filterwarnings("ignore", "ConjunctiveGraph is deprecated", DeprecationWarning)
            graphs[accept] = Graph().parse(data=answer.text, format=fmt)
    forced = served.http.get("/catalog?format=ttl", headers={"Accept": "application/ld+json"})
    assert forced.headers["content-type"].startswith("text/turtle")
    assert isomorphic(graphs["text/turtle"], graphs["application/rdf+xml"])
    assert isomorphic(graphs["text/turtle"], graphs["application/ld+json"])
    wrong = served.http.get("/catalog?format=xlsx")
    assert wrong.status_code == 400 and wrong.json()["type"].endswith("BadRequestData")


def instant(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_extent_time_span_frequency_and_sizes_come_from_the_data(served: Served) -> None:
    graph = Graph().parse(data=served.http.get("/catalog?format=ttl").text, format="turtle")
    node = next(d for d in graph.subjects(predicate=None, object=DCAT.Dataset) if str(d).endswith("/parking"))
    titles = {(t.language, str(t)) for t in graph.objects(node, DCTERMS.title)}
    assert titles == {("en", "Car parks"), ("zh", "停车场")}
    bbox = str(graph.value(graph.value(node, DCTERMS.spatial), DCAT.bbox))
    assert bbox == "POLYGON((10.01 50.02, 10.2 50.02, 10.2 50.3, 10.01 50.3, 10.01 50.02))"
    period = graph.value(node, DCTERMS.temporal)
    assert instant(graph.value(period, DCAT.startDate)) == instant(HOURS[0])
    assert instant(graph.value(period, DCAT.endDate)) == instant(HOURS[-1])
    assert str(graph.value(node, DCTERMS.accrualPeriodicity)) == f"{EU}frequency/HOURLY"
    theme = graph.value(node, DCAT.theme)
    assert str(theme) == f"{EU}data-theme/TRAN" and str(graph.value(theme, SKOS.prefLabel)) == "Transport"
    sizes = {}
    for dist in graph.objects(node, DCAT.distribution):
        url = str(graph.value(dist, DCAT.accessURL))
        size = graph.value(dist, DCAT.byteSize)
        if size is not None:
            sizes[url] = int(size)
    # the snapshots (GeoJSON, CSV, Parquet) and the history downloads (CSV, Parquet): a small history
    assert sorted(url.rsplit("/", 1)[1] for url in sizes) == [
        "entities.csv", "entities.geojson", "entities.parquet", "history.csv", "history.parquet",
    ]  # fmt: skip
    for url, size in sizes.items():  # the size the catalogue says is the size of the download
        assert len(served.http.get(url).content) == size, url
    shown = served.http.get("/catalog/datasets/parking").json()
    assert shown["entities"] == 3 and shown["frequency"] == "HOURLY"
    assert shown["temporal"] == [HOURS[0], HOURS[-1]] and shown["bbox"] == [10.01, 50.02, 10.2, 50.3]


def test_q_and_area_narrow_a_dataset(served: Served) -> None:
    defective = served.http.get("/catalog/datasets/defective-lamps/entities.geojson").json()
    assert [f["id"] for f in defective["features"]] == ["urn:ngsi-ld:Streetlight:l7"]
    centre = served.http.get("/catalog/datasets/centre/entities.geojson").json()
    assert [f["id"] for f in centre["features"]] == ["urn:ngsi-ld:Building:in"]
    listed = {d["id"]: d for d in served.http.get("/catalog/datasets").json()}
    assert "q=status%3D%3D%22defectiveLamp%22" in listed["defective-lamps"]["distributions"]["ngsi-ld"]
    live = served.http.get(listed["defective-lamps"]["distributions"]["ngsi-ld"]).json()
    assert [e["id"] for e in live] == ["urn:ngsi-ld:Streetlight:l7"]  # the NGSI-LD distribution is the same set


def test_ckanapi_reads_the_catalogue(served: Served) -> None:
    """The real CKAN client, over HTTP POST (its default) and GET (get_only)."""
    for get_only in (False, True):
        ckan = ckanapi.RemoteCKAN(served.base, get_only=get_only)
        assert ckan.action.package_list() == ["parking", "lamps", "defective-lamps", "bins", "centre"]
        package = ckan.action.package_show(id="parking")
        assert package["title"] == "Car parks" and package["license_id"] == "CC-BY-4.0"
        assert package["organization"]["title"] == "Test City" and package["num_records"] == 3
        assert {r["format"] for r in package["resources"]} == {"JSON-LD", "GeoJSON", "CSV", "Parquet"}
        assert {"key": "frequency", "value": "HOURLY"} in package["extras"]
        found = ckan.action.package_search(q="streetlight", fq="res_format:CSV", rows=1, start=0)
        assert found["count"] == 2 and [p["name"] for p in found["results"]] == ["lamps"]
        page_two = ckan.action.package_search(q="streetlight", rows=1, start=1)
        assert [p["name"] for p in page_two["results"]] == ["defective-lamps"]
        assert ckan.action.package_search(fq="tags:lighting")["count"] == 1
        assert ckan.action.package_search(q="停车")["count"] == 1  # the other languages' texts are searched
        assert ckan.action.organization_list() == ["test-city"]
        assert ckan.action.status_show()["site_title"] == "Test city open data"
        with pytest.raises(ckanapi.NotFound):
            ckan.action.package_show(id="nothing")
        with pytest.raises(ckanapi.SearchQueryError):
            ckan.action.package_search(fq="secret_field:x")


def test_personal_attributes_are_never_published(served: Served) -> None:
    api = served.http.get(f"{API}/entities", params={"type": "WasteContainer", "options": "keyValues"}).json()
    assert all("licensePlate" in e for e in api)  # the broker keeps it; the open data never shows it
    for path in (
        "/catalog?format=ttl",
        "/catalog/datasets/bins",
        "/catalog/datasets/bins/entities.csv",
        "/catalog/datasets/bins/entities.geojson",
        "/catalog/datasets/bins/entities.parquet",
        "/catalog/datasets/bins/entities.csv-metadata.json",
        "/catalog/datasets/bins/history.csv",
        "/catalog/datasets/bins/history.geojson",
        "/api/3/action/package_show?id=bins",
    ):
        answer = served.http.get(path)
        assert answer.status_code == 200, path
        assert b"licensePlate" not in answer.content and b"PLATE-" not in answer.content, path
    assert b"Driver 1" in served.http.get("/catalog/datasets/bins/entities.csv").content  # not marked here


def test_counts_hide_groups_smaller_than_k(served: Served) -> None:
    counts = served.http.get("/catalog/datasets/lamps/counts", params={"by": "status"}).json()
    assert counts == {"dataset": "lamps", "by": "status", "k": 5, "groups": {"ok": 6}, "hiddenGroups": 1}
    undeclared = served.http.get("/catalog/datasets/lamps/counts", params={"by": "powerState"})
    assert undeclared.status_code == 400 and undeclared.json()["type"].endswith("BadRequestData")
    assert served.http.get("/catalog/datasets/nothing").status_code == 404


OFFER = {
    "id": "lamps-for-partners",
    "title": "Streetlights of the west side",
    "types": ["Streetlight"],
    "attrs": ["status", "location"],
    "area": {
        "type": "Polygon",
        "coordinates": [[[10.005, 49.99], [10.045, 49.99], [10.045, 50.01], [10.005, 50.01], [10.005, 49.99]]],
    },
    "terms": {"purposes": ["maintenance"], "expires": "2030-01-01T00:00:00Z"},
}


def test_a_published_dataspace_offer_is_a_dataset(served: Served) -> None:
    """A dataset declared `offer = ID` is listed while the city publishes that dataspace offer: the
    offer's types, attributes and area, in the DCAT-AP catalogue (still valid), the CKAN API and the
    downloads; withdrawn, it is gone."""
    from pyshacl import validate

    offers = "/cityos/v1/admin/dataspace/offers"
    listed = [d["id"] for d in served.http.get("/catalog/datasets").json()]
    assert "lamps-offer" not in listed  # not published yet
    assert served.http.get("/catalog/datasets/lamps-offer").status_code == 404
    made = served.http.post(offers, json=OFFER)
    assert made.status_code == 201, made.text
    try:
        shown = served.http.get("/catalog/datasets/lamps-offer")
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["offer"] == "lamps-for-partners" and body["type"] == "Streetlight"
        assert body["title"] == {"en": "Streetlights of the west side"} and body["attrs"] == ["location", "status"]
        assert body["entities"] == 4  # l1..l4: the lamps inside the offer's area
        features = served.http.get("/catalog/datasets/lamps-offer/entities.geojson").json()["features"]
        assert sorted(f["id"] for f in features) == [f"urn:ngsi-ld:Streetlight:l{i}" for i in range(1, 5)]
        assert all(set(f["properties"]) <= {"id", "type", "status", "location"} for f in features), features[0]
        assert all("powerState" not in f["properties"] for f in features)  # not an attribute of the offer
        live = served.http.get(body["distributions"]["ngsi-ld"]).json()
        assert sorted(e["id"] for e in live) == [f"urn:ngsi-ld:Streetlight:l{i}" for i in range(1, 5)]
        assert all("powerState" not in e for e in live)
        # the DCAT-AP catalogue has it, and stays valid
        turtle = served.http.get("/catalog", headers={"Accept": "text/turtle"}).text
        data = Graph().parse(data=turtle, format="turtle")
        node = next(d for d in data.subjects(predicate=None, object=DCAT.Dataset) if str(d).endswith("/lamps-offer"))
        assert {str(t) for t in data.objects(node, DCTERMS.title)} == {"Streetlights of the west side"}
        shapes, _ = shapes_graph()
        conforms, _, report = validate(data, shacl_graph=shapes, inference="none")
        assert conforms, report
        # and the CKAN API, through the real client
        ckan = ckanapi.RemoteCKAN(served.base)
        assert "lamps-offer" in ckan.action.package_list()
        package = ckan.action.package_show(id="lamps-offer")
        assert package["title"] == "Streetlights of the west side" and package["num_records"] == 4
        assert ckan.action.package_search(fq="tags:dataspace")["count"] == 1
    finally:
        assert served.http.delete(f"{offers}/lamps-for-partners").status_code == 204
    assert "lamps-offer" not in [d["id"] for d in served.http.get("/catalog/datasets").json()]
    assert served.http.get("/catalog/datasets/lamps-offer/entities.csv").status_code == 404
    with pytest.raises(ckanapi.NotFound):
        ckanapi.RemoteCKAN(served.base).action.package_show(id="lamps-offer")
