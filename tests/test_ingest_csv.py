"""CSV import: a mapping, a file with deliberately bad rows, the reject file, and every good row
read back through the NGSI-LD API (in-process, and through a running broker with --url)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from backends import db_rows
from cityos.app import create_app
from cityos.cli.common import ProgressBar
from cityos.ingest import csv_import
from cityos.ingest.schemas import load_validator, schema_errors, shipped
from cityos.ingest.sink import StoreSink
from cityos.pipeline import open_pipeline
from cityos.settings import Settings

pytestmark = pytest.mark.slow(seconds=60)

DATA = Path(__file__).parent / "data" / "csv"
STATIONS = DATA / "air-stations.csv"
GOOD = ["AQ01", "AQ02", "AQ04", "AQ06", "AQ11", "AQ12", "AQ13", "AQ14", "AQ15"]
BAD = {  # line -> the start of its reason
    4: "no2: 'abc' is not a valid number",
    6: "the id column station is empty",
    8: "lat/lon: '95.0000,-3.7000' is not a valid point",
    9: "measured 'yesterday' is not a date-time in the format %Y-%m-%d %H:%M",
    10: "schema AirQualityObserved: pm10: -5.0 is less than the minimum of 0",
    11: "the row has more fields than the header",
    17: "refused by the broker: BadRequestData",
}


def load(database: str, source: Path, mapping: Path, rejects: Path, progress: Any = None) -> csv_import.CsvReport:
    """An import in-process, through the write pipeline the `cityos import` command opens."""

    async def main() -> csv_import.CsvReport:
        async with open_pipeline(Settings(database=database)) as pipeline:
            sink = StoreSink(pipeline.store, pipeline.contexts.core_terms())
            parsed = csv_import.load_mapping(mapping)
            return await csv_import.import_csv(source, parsed, sink, rejects_path=rejects, progress=progress)

    return asyncio.run(main())


def read_rejects(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def stations(base: Any, **headers: str) -> dict[str, dict[str, Any]]:
    response = base.get("/ngsi-ld/v1/entities", params={"type": "AirQualityObserved", "limit": "100"}, headers=headers)
    assert response.status_code == 200, response.text
    return {e["id"].rsplit(":", 1)[1]: e for e in response.json()}


def check_good_rows(found: dict[str, dict[str, Any]]) -> None:
    assert sorted(found) == GOOD
    with STATIONS.open(newline="") as handle:
        rows = {r["station"]: r for r in csv.DictReader(handle) if r["station"] in GOOD}
    for station, entity in found.items():
        row = rows[station]
        assert entity["name"]["value"] == row["name"]
        assert entity["no2"] == {
            "type": "Property",
            "value": float(row["no2"]),
            "unitCode": "GQ",
            "observedAt": "2024-03-01T09:00:00Z",  # 10:00 in Madrid (CET)
        }
        if row["pm10"]:
            assert entity["pm10"]["value"] == float(row["pm10"])
        else:
            assert "pm10" not in entity
        assert entity["location"]["value"] == {"type": "Point", "coordinates": [float(row["lon"]), float(row["lat"])]}
        assert entity["dateObserved"]["value"] == "2024-03-01T09:00:00Z"
        assert entity["status"]["value"] == row["status"]
        assert entity["dataProvider"]["value"] == "CityOS tests"


class TestImport:
    def test_bad_rows_are_rejected_with_reasons_and_good_rows_land(self, tmp_path: Path, db_url: str) -> None:
        database, rejects = db_url, tmp_path / "rejects.csv"
        calls: list[tuple[int, int]] = []
        report = load(database, STATIONS, DATA / "air-stations.yaml", rejects, lambda d, t: calls.append((d, t)))
        assert (report.rows, report.loaded, report.rejected) == (16, 9, 7)
        assert len(report.entities) == 9
        assert calls[-1] == (STATIONS.stat().st_size, STATIONS.stat().st_size)
        rejected = read_rejects(rejects)
        assert [int(r["line"]) for r in rejected] == sorted(BAD)
        for row in rejected:
            assert row["reason"].startswith(BAD[int(row["line"])]), row
        assert rejected[0]["station"] == "AQ03" and rejected[0]["no2"] == "abc"  # the original cells are kept
        assert list(rejected[0])[:3] == ["line", "reason", "station"]
        with TestClient(create_app(Settings(database=database)), base_url="http://127.0.0.1:1026") as client:
            check_good_rows(stations(client))

    def test_time_series_rows_update_one_entity(self, tmp_path: Path, db_url: str) -> None:
        database, rejects = db_url, tmp_path / "series-rejects.csv"
        report = load(database, DATA / "station-hours.csv", DATA / "station-hours.yaml", rejects)
        assert (report.rows, report.loaded, report.rejected, len(report.entities)) == (6, 5, 1, 2)
        [bad] = read_rejects(rejects)
        assert bad["line"] == "5" and "no2: 'bad' is not a valid number" in bad["reason"]
        with TestClient(create_app(Settings(database=database)), base_url="http://127.0.0.1:1026") as client:
            found = stations(client)
        assert found["S1"]["no2"]["value"] == 15 and found["S1"]["no2"]["observedAt"] == "2024-03-01T10:00:00Z"
        assert found["S2"]["no2"]["value"] == 31 and found["S2"]["no2"]["observedAt"] == "2024-03-01T09:00:00Z"

    def test_no_reject_file_without_rejects(self, tmp_path: Path, db_url: str) -> None:
        source = tmp_path / "clean.csv"
        source.write_text("station;hour;no2\nS9;2024-01-01T00:00:00Z;1\n", encoding="utf-8")
        report = load(db_url, source, DATA / "station-hours.yaml", tmp_path / "r.csv")
        assert report.rejected == 0 and not (tmp_path / "r.csv").exists()
        assert "1 rows read, 1 loaded into 1 entities, 0 rejected" in report.summary()


BEIJING = Path(csv_import.__file__).parent / "data" / "timeseries" / "beijing-aotizhongxin-2016-03_2017-02.csv.gz"
BEIJING_MAPPING = {
    "type": "AirQualityObserved",
    "id": "urn:ngsi-ld:AirQualityObserved:Beijing-{station}",  # constant text around a column
    "time": {"columns": ["year", "month", "day", "hour"], "format": "%Y %m %d %H", "timezone": "Asia/Shanghai"},
    "null_values": ["NA"],
    "attributes": {
        "pm25": {"column": "PM2.5", "type": "Number", "unit": "GQ"},
        "no2": {"column": "NO2", "type": "Number", "unit": "GQ"},
    },
}


class TestBeijingSeries:
    """The Beijing air-quality files as published: the time in four columns, NA for no value."""

    @pytest.fixture
    def series(self, tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
        source = tmp_path / "aotizhongxin.csv"
        source.write_bytes(gzip.decompress(BEIJING.read_bytes()))
        with source.open(newline="", encoding="utf-8") as handle:
            return source, list(csv.DictReader(handle))

    def write(self, tmp_path: Path, **changes: Any) -> Path:
        mapping = tmp_path / "beijing.yaml"
        mapping.write_text(yaml.safe_dump({**BEIJING_MAPPING, **changes}), encoding="utf-8")
        return mapping

    def test_a_year_with_time_columns_and_null_values(self, tmp_path: Path, db_url: str, series: Any) -> None:
        source, rows = series
        report = load(db_url, source, self.write(tmp_path), tmp_path / "rejects.csv")
        assert (report.rows, report.loaded, report.rejected) == (8760, 8760, 0)
        assert report.entities == {"urn:ngsi-ld:AirQualityObserved:Beijing-Aotizhongxin"}
        history = db_rows(
            db_url,
            "SELECT i.attr, count(*), min(i.observed_us), max(i.observed_us) FROM temporal_instances i"
            " JOIN temporal_entities e ON e.pk = i.epk GROUP BY i.attr ORDER BY i.attr",
        )
        counts = {attr.rsplit("/", 1)[-1]: (n, first, last) for attr, n, first, last in history}
        # a cell that says NA is no value: that hour has no instance of the attribute
        assert counts["pm25"][0] == sum(r["PM2.5"] != "NA" for r in rows) < 8760
        assert counts["no2"][0] == sum(r["NO2"] != "NA" for r in rows)
        first = datetime(2016, 2, 29, 16, tzinfo=UTC)  # 2016-03-01 00:00 in Beijing
        last = datetime(2017, 2, 28, 15, tzinfo=UTC)  # 2017-02-28 23:00 in Beijing
        assert counts["no2"][1:] == (int(first.timestamp() * 1e6), int(last.timestamp() * 1e6))

    def test_without_null_values_the_na_rows_are_rejected(self, tmp_path: Path, db_url: str, series: Any) -> None:
        source, rows = series
        report = load(db_url, source, self.write(tmp_path, null_values=[]), tmp_path / "rejects.csv")
        assert report.rejected == sum("NA" in (r["PM2.5"], r["NO2"]) for r in rows) > 0
        assert "is not a valid number" in read_rejects(tmp_path / "rejects.csv")[0]["reason"]

    def test_a_constant_id(self, tmp_path: Path, db_url: str, series: Any) -> None:
        source, _ = series
        mapping = self.write(tmp_path, id="urn:ngsi-ld:AirQualityObserved:Beijing-1", null_values="NA")
        report = load(db_url, source, mapping, tmp_path / "rejects.csv")
        assert (report.loaded, report.entities) == (8760, {"urn:ngsi-ld:AirQualityObserved:Beijing-1"})


def test_id_templates_name_columns_as_written() -> None:
    mapping = csv_import.parse_mapping(
        {"type": "T", "id": "urn:ngsi-ld:T:{{x}}-{PM2.5}-{a b}", "attributes": {"v": "v"}, "null_values": [-1]}
    )
    body, _ = csv_import.map_row(mapping, {"PM2.5": "12", "a b": "c d", "v": "-1"})
    assert body == {"id": "urn:ngsi-ld:T:{x}-12-c%20d", "type": "T"}  # -1 and the empty cell: no value
    with pytest.raises(csv_import.RowError, match=r"the id column PM2\.5 is empty"):
        csv_import.map_row(mapping, {"PM2.5": " ", "a b": "c", "v": "1"})


class TestMappings:
    @pytest.mark.parametrize(
        ("mapping", "message"),
        [
            ([], "must be a YAML object"),
            ({"type": "T"}, "needs `type`"),
            ({"type": "T", "id": "urn:x:{c:>3}", "attributes": {"a": "a"}}, "is not a column name"),
            ({"type": "T", "id": "urn:x:{c", "attributes": {"a": "a"}}, "id: "),
            ({"type": "T", "id": "urn:x:{}", "attributes": {"a": "a"}}, "names no column"),
            ({"type": "T", "id": "urn:x:1", "attributes": {"a": "a"}, "time": {"columns": ["y"]}}, "needs a format"),
            (
                {"type": "T", "id": "urn:x:1", "attributes": {"a": "a"}, "time": {"columns": "y", "format": "%Y"}},
                "list",
            ),
            (
                {"type": "T", "id": "urn:x:1", "attributes": {"a": "a"}, "time": {"column": "y", "columns": ["y"]}},
                "not both",
            ),
            ({"type": "T", "id": "urn:x:1", "attributes": {"a": "a"}, "null_values": {"a": 1}}, "null_values"),
            ({"type": "T", "id": "urn:x:{c}", "attributes": {"a": {"column": "a", "type": "Colour"}}}, "unknown value"),
            (
                {
                    "type": "T",
                    "id": "urn:x:{c}",
                    "attributes": {"a": "a"},
                    "time": {"column": "t", "timezone": "Mars/Base"},
                },
                "time zone",
            ),
            ({"type": "T", "id": "urn:x:{c}", "location": {"lat": "y"}}, "location must be"),
            ({"type": "T", "id": "urn:x:{c}"}, "at least one attribute"),
        ],
    )
    def test_invalid_mappings(self, mapping: Any, message: str) -> None:
        with pytest.raises(csv_import.MappingError, match=message.replace("{", r"\{").replace("(", r"\(")):
            csv_import.parse_mapping(mapping)

    def test_missing_columns_are_named(self, tmp_path: Path, db_url: str) -> None:
        mapping = tmp_path / "m.yaml"
        mapping.write_text(yaml.safe_dump({"type": "T", "id": "urn:x:{nope}", "attributes": {"v": "value"}}))
        with pytest.raises(csv_import.MappingError, match="has no column nope, value"):
            load(db_url, STATIONS, mapping, tmp_path / "r.csv")

    def test_shipped_schemas_validate_offline_with_formats(self) -> None:
        assert {"AirQualityObserved", "OffStreetParking", "WeatherObserved", "GtfsStop"} <= set(shipped())
        validator = load_validator("WeatherObserved")
        base = {
            "id": "urn:ngsi-ld:WeatherObserved:1",
            "type": "WeatherObserved",
            "dateObserved": "2024-01-01T00:00:00Z",
        }
        base["location"] = {"type": "Point", "coordinates": [1.0, 2.0]}
        assert schema_errors(validator, base) is None
        problem = schema_errors(validator, {**base, "dateObserved": "2024-01-01 noon"})
        assert problem is not None and "is not a 'date-time'" in problem
        with pytest.raises(ValueError, match="neither a shipped type"):
            load_validator("NoSuchType")


def test_progress_bar_draws_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = ProgressBar("Loading x.csv", screen, width=10)
    bar(5, 10)
    bar(10, 10)
    bar.close()
    assert "Loading x.csv [#####.....]  50%" in screen.getvalue()
    assert "[##########] 100%" in screen.getvalue() and screen.getvalue().endswith("\n")
    quiet = io.StringIO()
    ProgressBar("x", quiet)(1, 2)
    assert quiet.getvalue() == ""


def test_cli_through_a_running_broker(server: str, tmp_path: Path) -> None:
    """`cityos import csv --url`: the same rows land through the batch API of a real server; the
    reject file goes next to the input, not into the current folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    inputs, elsewhere = tmp_path / "inputs", tmp_path / "elsewhere"
    inputs.mkdir()
    elsewhere.mkdir()
    source = inputs / STATIONS.name
    source.write_bytes(STATIONS.read_bytes())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cityos",
            "import",
            "csv",
            str(source),
            "--mapping",
            str(DATA / "air-stations.yaml"),
            "--url",
            server,
            "--tenant",
            "madrid",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr
    assert "air-stations.csv: 16 rows read, 9 loaded into 9 entities, 7 rejected" in result.stdout
    assert str(inputs / "air-stations.rejects.csv") in result.stdout
    assert list(elsewhere.iterdir()) == []
    rejected = read_rejects(inputs / "air-stations.rejects.csv")
    assert [int(r["line"]) for r in rejected] == sorted(BAD)
    assert rejected[-1]["reason"].startswith("refused by the broker: BadRequestData")
    import httpx

    with httpx.Client(base_url=server, timeout=10) as client:
        check_good_rows(stations(client, **{"NGSILD-Tenant": "madrid"}))
