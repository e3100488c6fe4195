"""Open-data exports (docs/open-data.md) compared with the NGSI-LD API's own answers, on both
back-ends: entities as CSV, GeoJSON and Parquet against GET /entities?options=keyValues, history
against the temporal API; the licence in each file; a dataset above the limit refused at once;
`cityos export` writing the same bytes as the download; and with --auth required, only what the
policies give the anonymous caller, without the attributes they mark personal."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from backends import cli_env
from catalog_helpers import API, CATALOG, HOURS, Served, city_entities, load, serve_city
from cityos.app import create_app
from cityos.settings import Settings

LICENCE = "http://publications.europa.eu/resource/authority/licence/CC_BY_4_0"


@pytest.fixture(scope="module")
def served(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_city(module_db_url, tmp_path_factory.mktemp("exports")) as city:
        yield city


def cell(value: Any) -> str:
    """A keyValues value as the CSV writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return orjson.dumps(value).decode()


def api_entities(served: Served, entity_type: str) -> list[dict[str, Any]]:
    answer = served.http.get(f"{API}/entities", params={"type": entity_type, "options": "keyValues", "limit": 1000})
    assert answer.status_code == 200
    return sorted(answer.json(), key=lambda e: e["id"])


def test_entity_csv_is_the_api_answer(served: Served) -> None:
    download = served.http.get("/catalog/datasets/lamps/entities.csv")
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    assert f'<{LICENCE}>; rel="license"' in download.headers["link"]
    assert 'rel="describedby"; type="application/csvm+json"' in download.headers["link"]
    rows = sorted(csv.DictReader(io.StringIO(download.text)), key=lambda r: r["id"])
    expected = [{name: cell(value) for name, value in entity.items()} for entity in api_entities(served, "Streetlight")]
    assert [{k: v for k, v in row.items() if v != ""} for row in rows] == expected


def test_geojson_is_the_api_answer(served: Served) -> None:
    download = served.http.get("/catalog/datasets/parking/entities.geojson").json()
    assert download["licence"] == LICENCE and download["attribution"] == "Test City open data team"
    api = served.http.get(
        f"{API}/entities",
        params={"type": "OffStreetParking", "options": "keyValues"},
        headers={"Accept": "application/geo+json"},
    ).json()
    strip = [
        {**f, "properties": {k: v for k, v in f["properties"].items() if k != "@context"}} for f in api["features"]
    ]
    assert sorted(download["features"], key=lambda f: f["id"]) == sorted(strip, key=lambda f: f["id"])


def test_parquet_is_the_api_answer_with_its_licence(served: Served) -> None:
    download = served.http.get("/catalog/datasets/parking/entities.parquet")
    assert download.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(download.content))
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert metadata["licence"] == LICENCE and metadata["attribution"] == "Test City open data team"
    assert metadata["source"] == f"{served.base}/catalog/datasets/parking/entities.parquet"
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    for row, entity in zip(rows, api_entities(served, "OffStreetParking"), strict=True):
        assert row["availableSpotNumber"] == float(entity["availableSpotNumber"])
        assert orjson.loads(row["location"]) == entity["location"]
        assert {k: v for k, v in row.items() if v is not None}.keys() == entity.keys()


def test_history_is_the_temporal_api_answer(served: Served) -> None:
    download = served.http.get("/catalog/datasets/parking/history.csv")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert list(rows[0]) == ["entityId", "entityType", "attribute", "datasetId", "observedAt", "modifiedAt", "value"]
    exported = {(r["entityId"], r["observedAt"], r["value"]) for r in rows if r["attribute"] == "availableSpotNumber"}
    expected = set()
    for i in (1, 2, 3):
        entity_id = f"urn:ngsi-ld:OffStreetParking:p{i}"
        answer = served.http.get(f"{API}/temporal/entities/{entity_id}", params={"attrs": "availableSpotNumber"})
        assert answer.status_code == 200
        for instance in answer.json()["availableSpotNumber"]:
            expected.add((entity_id, instance["observedAt"], str(instance["value"])))
    assert exported == expected and len(expected) == 3 * len(HOURS)
    table = pq.read_table(io.BytesIO(served.http.get("/catalog/datasets/parking/history.parquet").content))
    assert table.num_rows == len(rows)
    assert table.column_names == list(rows[0])


def test_the_csv_sidecar_names_the_licence_and_columns(served: Served) -> None:
    meta = served.http.get("/catalog/datasets/lamps/entities.csv-metadata.json")
    assert meta.headers["content-type"] == "application/csvm+json"
    body = meta.json()
    assert body["dc:license"] == {"@id": LICENCE} and body["dc:creator"] == "Test City open data team"
    header = served.http.get("/catalog/datasets/lamps/entities.csv").text.splitlines()[0].split(",")
    assert [c["name"] for c in body["tableSchema"]["columns"]] == header


def test_unknown_exports_are_clear_errors(served: Served) -> None:
    for path, status in (
        ("/catalog/datasets/lamps/entities.xlsx", 400),
        ("/catalog/datasets/lamps/secrets.csv", 400),
        ("/catalog/datasets/nothing/entities.csv", 404),
    ):
        answer = served.http.get(path)
        assert answer.status_code == status and answer.headers["content-type"] == "application/json", path


@pytest.fixture
def catalog_file(tmp_path: Path) -> str:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    return str(path)


def test_too_large_is_refused_at_once_and_the_cli_writes_the_download(
    db_url: str, catalog_file: str, tmp_path: Path
) -> None:
    settings = Settings(database=db_url, catalog_file=catalog_file, export_max_rows=5)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        load(client)  # type: ignore[arg-type]  # the same calls as on httpx.Client
        refused = client.get("/catalog/datasets/lamps/entities.parquet")
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/json"
        problem = refused.json()
        assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/TooManyResults"
        assert "7 entities, above the export limit of 5 (--export-max-rows)" in problem["detail"]
        download = client.get("/catalog/datasets/parking/entities.csv").content
        # history read a few instances at a time (many share one modifiedAt) gives the same rows
        public = client.app.state.catalog.public  # type: ignore[attr-defined]
        dataset = public.dataset("parking")

        async def history(chunk: int) -> list[tuple[str, str, str]]:
            return [(e["id"], a, i["instanceId"]) async for e, a, i in public.history(dataset, chunk=chunk)]

        whole = client.portal.call(history, 5000)
        assert len(whole) == len(set(whole)) == 3 * (3 + len(HOURS))  # location, name, category, 6 readings
        for chunk in (1, 2, 3):
            assert sorted(client.portal.call(history, chunk)) == sorted(whole)
    command = [sys.executable, "-m", "cityos", "export", "--database", db_url, "--catalog-file", catalog_file]
    done = subprocess.run([*command, "parking"], env=cli_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == download
    too_many = subprocess.run([*command, "lamps", "--max-rows", "5"], env=cli_env(), capture_output=True, timeout=60)
    assert too_many.returncode == 1 and b"above the export limit of 5" in too_many.stderr
    csv_file = tmp_path / "parking.csv"
    with_sidecar = subprocess.run(
        [*command, "parking", "-o", str(csv_file)], env=cli_env(), capture_output=True, timeout=60
    )
    assert with_sidecar.returncode == 0 and csv_file.read_bytes() == download
    sidecar = orjson.loads((tmp_path / "parking.csv-metadata.json").read_bytes())
    assert sidecar["url"] == "parking.csv" and sidecar["dc:license"] == {"@id": LICENCE}
    assert [c["name"] for c in sidecar["tableSchema"]["columns"]] == download.decode().splitlines()[0].split(",")
    out = tmp_path / "lamps.parquet"
    written = subprocess.run(
        [*command, "lamps", "--format", "parquet", "-o", str(out)], env=cli_env(), capture_output=True, timeout=60
    )
    assert written.returncode == 0, written.stderr
    assert pq.read_table(out).num_rows == 7


POLICIES = """
- id: parking-is-open
  effect: allow
  principals: {anonymous: true}
  actions: [read]
  resources: {types: [OffStreetParking, WasteContainer]}
- id: drivers-are-personal
  personal: {attrs: [driverName]}
"""


def test_with_auth_only_what_the_policies_give_the_public(db_url: str, catalog_file: str, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        answer = client.post(f"{API}/entityOperations/upsert", json=city_entities())
        assert answer.status_code == 201
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICIES, encoding="utf-8")
    settings = Settings(database=db_url, catalog_file=catalog_file, auth="required", policy_file=str(policy_file))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as anonymous:
        assert [d["id"] for d in anonymous.get("/catalog/datasets").json()] == ["parking", "bins"]
        assert anonymous.get("/api/3/action/package_list").json()["result"] == ["parking", "bins"]
        assert anonymous.get("/catalog/datasets/lamps/entities.csv").status_code == 404
        assert b"Streetlight" not in anonymous.get("/catalog", params={"format": "ttl"}).content
        bins = anonymous.get("/catalog/datasets/bins/entities.csv")
        assert bins.status_code == 200 and b"urn:ngsi-ld:WasteContainer:b1" in bins.content
        # driverName: marked personal by the policies; licensePlate: by the dataset declaration
        for marker in (b"driverName", b"Driver 1", b"licensePlate", b"PLATE-1"):
            assert marker not in bins.content
        api = anonymous.get(f"{API}/entities", params={"type": "Streetlight"})
        assert api.status_code == 200 and api.json() == []  # the API agrees: no lamp for the public
