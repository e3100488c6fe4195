"""History downsampling (--temporal-downsample): the store's fold on both back-ends against hourly
means computed here in plain Python, a re-run weighting what was folded by its sample count, and the
running service's hourly task answering through the temporal API."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cityos.settings import Settings
from cityos.store import open_store
from cityos.store.base import EntityStore
from cityos.store.temporal_base import AggregatePage, AggregationSpec, TemporalQuery
from cityos.store.temporal_downsample import GREATEST, HOUR, LEAST, SAMPLES
from cityos.temporal.query import to_micros
from cityos.temporal.retention import DEFAULT_VOCAB, parse_downsample
from notify_helpers import cityos_serving

WEATHER, OTHER = DEFAULT_VOCAB + "WeatherObserved", DEFAULT_VOCAB + "Other"
TEMP, STATE = DEFAULT_VOCAB + "temperature", DEFAULT_VOCAB + "state"
START = datetime(2026, 1, 10, tzinfo=UTC)  # the first reading; the cutoff is START + 5 hours
CUTOFF = START + timedelta(hours=5)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def readings() -> list[tuple[str, dict[str, Any]]]:
    """Six hours of irregular readings of two temperature series (the default one and dataset "b"),
    a text attribute, and an hour (the third) that holds a single reading."""
    out: list[tuple[str, dict[str, Any]]] = []
    for hour in range(6):
        minutes = [7] if hour == 2 else [0, 5, 17, 29, 41, 58]
        for n, minute in enumerate(minutes):
            moment = START + timedelta(hours=hour, minutes=minute, seconds=n)
            value: float | int = round(10 + hour * 1.5 + n * 0.25 - (minute % 3), 2) if n % 2 else hour + n
            out.append((TEMP, {"type": "Property", "value": value, "observedAt": stamp(moment), "unitCode": "CEL"}))
            out.append(
                (TEMP, {"type": "Property", "value": value * 2, "observedAt": stamp(moment), "datasetId": "urn:b"})
            )
            out.append((STATE, {"type": "Property", "value": f"s{n}", "observedAt": stamp(moment)}))
    return out


def expected(raw: list[tuple[str, dict[str, Any]]], dataset: str | None) -> list[tuple[str, float, int]]:
    """(observedAt, value, samples) per instance of the temperature series after downsampling:
    before the cutoff the plain mean of each hour holding two readings or more, the rest untouched."""
    hours: dict[int, list[tuple[str, float]]] = {}
    kept: list[tuple[str, float, int]] = []
    for attr, instance in raw:
        if attr != TEMP or instance.get("datasetId") != dataset:
            continue
        moment = datetime.strptime(instance["observedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if moment >= CUTOFF:
            kept.append((instance["observedAt"], instance["value"], 1))
        else:
            hours.setdefault(to_micros(moment) // HOUR, []).append((instance["observedAt"], instance["value"]))
    for hour, found in hours.items():
        values = [value for _, value in found]
        if len(values) == 1:
            kept.append((found[0][0], values[0], 1))
        else:
            kept.append((stamp(datetime.fromtimestamp(hour * 3600, UTC)), sum(values) / len(values), len(values)))
    return sorted(kept)


async def series(store: EntityStore, entity: str, attr: str) -> dict[str | None, list[dict[str, Any]]]:
    page = await store.temporal_query("", TemporalQuery(ids=[entity], attrs=[attr]))
    out: dict[str | None, list[dict[str, Any]]] = {}
    for instance in page.entities[0]["attrs"][attr]:
        out.setdefault(instance.get("datasetId"), []).append(instance)
    return out


def shown(instances: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    return sorted(
        (i["observedAt"].replace(".000000", ""), i["value"], i.get(SAMPLES, {}).get("value", 1)) for i in instances
    )


def close(got: list[tuple[str, float, int]], want: list[tuple[str, float, int]]) -> None:
    assert [(t, n) for t, _, n in got] == [(t, n) for t, _, n in want]
    assert [v for _, v, _ in got] == pytest.approx([v for _, v, _ in want], rel=1e-12)


def test_the_setting() -> None:
    assert parse_downsample("WeatherObserved=90, Other=30:hour") == {WEATHER: 90, OTHER: 30}
    for bad in ("WeatherObserved=90:day", "WeatherObserved", "WeatherObserved=0:hour"):
        with pytest.raises(ValueError, match="temporal_downsample"):
            Settings.from_env({}, temporal_downsample=bad)


def test_hourly_means_on_both_backends(db_url: str) -> None:
    raw = readings()

    async def run() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            await store.temporal_write("", "urn:w:1", [WEATHER], raw)
            await store.temporal_write("", "urn:o:1", [OTHER], raw)  # another type: untouched
            before = to_micros(CUTOFF)
            assert await store.temporal_downsample(before, []) == 0
            removed = await store.temporal_downsample(before, [WEATHER])
            assert removed == 2 * 4 * (6 - 1)  # two series, four hours of six readings each become one
            got = await series(store, "urn:w:1", TEMP)
            close(shown(got[None]), expected(raw, None))
            close(shown(got["urn:b"]), expected(raw, "urn:b"))
            folded = [i for i in got[None] if SAMPLES in i]
            assert {i["unitCode"] for i in folded} == {"CEL"}  # the hour's last instance's other members stay
            assert len((await series(store, "urn:w:1", STATE))[None]) == 6 * 5 + 1  # text: left alone
            assert len((await series(store, "urn:o:1", TEMP))[None]) == 6 * 5 + 1
            # a re-run changes nothing; readings arriving late in a folded hour are weighted with it
            assert await store.temporal_downsample(before, [WEATHER]) == 0
            late = [
                (TEMP, {"type": "Property", "value": v, "observedAt": stamp(START + timedelta(minutes=m, seconds=30))})
                for v, m in ((100.0, 3), (-7.5, 44))
            ]
            await store.temporal_write("", "urn:w:1", [WEATHER], late)
            assert await store.temporal_downsample(before, [WEATHER], to_micros(START)) == 2
            close(shown((await series(store, "urn:w:1", TEMP))[None]), expected(raw + late, None))
        finally:
            await store.close()

    asyncio.run(run())


def test_the_running_service_downsamples(db_url: str) -> None:
    """A real `cityos serve` with --temporal-downsample: its first sweep folds the readings older
    than the raw period, the temporal API shows the hourly means, newer readings stay as they came."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old = [now - timedelta(days=3, hours=h, minutes=m) for h in range(1, 3) for m in (10, 20, 30)]
    recent = [now - timedelta(hours=5, minutes=m) for m in (10, 20, 30)]
    raw = [(TEMP, {"type": "Property", "value": float(n), "observedAt": stamp(t)}) for n, t in enumerate(old + recent)]

    async def write() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            await store.temporal_write("", "urn:w:1", [WEATHER], raw)
        finally:
            await store.close()

    asyncio.run(write())
    with cityos_serving(db_url, CITYOS_TEMPORAL_DOWNSAMPLE="WeatherObserved=2:hour") as base:
        url = f"{base}/ngsi-ld/v1/temporal/entities/urn:w:1?attrs=temperature"
        deadline = time.monotonic() + 20
        while True:
            answer = httpx.get(url)
            assert answer.status_code == 200, answer.text
            instances = answer.json()["temperature"]
            if len(instances) < len(raw) or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the sweep runs in the server; nothing to await from here
        got = sorted((i["observedAt"], i["value"], i.get(SAMPLES, {}).get("value", 1)) for i in instances)
        # the readings of h hours and 10-30 minutes before (3 days ago) lie in the hour starting h+1 hours before
        hours = [stamp(now - timedelta(days=3, hours=h)) for h in (3, 2)]
        assert [(t.replace(".000", ""), n) for t, _, n in got[:2]] == [(hours[0], 3), (hours[1], 3)]
        assert [v for _, v, _ in got[:2]] == pytest.approx([4.0, 1.0])  # the means of 3, 4, 5 and of 0, 1, 2
        assert [(v, n) for _, v, n in got[2:]] == [(8.0, 1), (7.0, 1), (6.0, 1)]  # newer: as they came


def test_aggregations_over_hourly_instances_are_those_of_the_readings(db_url: str) -> None:
    """totalCount, sum, avg, min, max, sumsq (and so stddev) over the hourly instances are what
    they were over the readings they fold, per period, on both back-ends; so after late readings
    are folded in too. (distinctCount cannot be: the distinct readings are gone.)"""
    raw = readings()
    query = TemporalQuery(ids=["urn:w:2"], attrs=[TEMP])
    specs = [
        AggregationSpec(),  # one period
        AggregationSpec(micros=2 * HOUR),  # from the first instance (an hour's start: the same)
        AggregationSpec(micros=3 * HOUR, origin=to_micros(START)),
        AggregationSpec(months=1, stats=frozenset({"count", "numbers", "sum", "avg"})),
    ]

    def figures(page: AggregatePage) -> list[tuple[Any, ...]]:
        (entity,) = page.entities
        return [
            (series.dataset, p.index, p.count, p.numbers, p.sum, p.avg, p.min, p.max, p.sumsq)
            for series in sorted(entity.attrs[TEMP], key=lambda s: s.dataset or "")
            for p in series.periods
        ]

    def same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
        assert [row[:4] for row in got] == [row[:4] for row in want]  # series, period, counts
        for row, wanted in zip(got, want, strict=True):
            for value, expected_value in zip(row[4:], wanted[4:], strict=True):
                assert value == (None if expected_value is None else pytest.approx(expected_value, rel=1e-9)), (
                    row,
                    wanted,
                )

    async def run() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            await store.temporal_write("", "urn:w:2", [WEATHER], raw)
            before = [figures(await store.temporal_aggregate("", query, spec)) for spec in specs]
            assert before[0][0][2] == 31  # the default series' readings
            everything = to_micros(START + timedelta(hours=6))
            assert await store.temporal_downsample(everything, [WEATHER]) == 2 * 5 * (6 - 1)
            assert len((await series(store, "urn:w:2", TEMP))[None]) == 6  # one instance an hour
            for spec, want in zip(specs, before, strict=True):
                same(figures(await store.temporal_aggregate("", query, spec)), want)
            # late readings, one in an hour already folded, then folded with it
            late = [
                (TEMP, {"type": "Property", "value": v, "observedAt": stamp(START + timedelta(hours=h, minutes=m))})
                for v, h, m in ((100.0, 0, 3), (-7.5, 4, 44), (3, 2, 1))
            ]
            await store.temporal_write("", "urn:w:2", [WEATHER], late)
            with_late = [figures(await store.temporal_aggregate("", query, spec)) for spec in specs]
            assert await store.temporal_downsample(everything, [WEATHER], to_micros(START)) == 3
            for spec, want in zip(specs, with_late, strict=True):
                same(figures(await store.temporal_aggregate("", query, spec)), want)
            folded = (await series(store, "urn:w:2", TEMP))[None][0]
            assert folded[LEAST]["value"] == 0 and folded[GREATEST]["value"] == 100.0
        finally:
            await store.close()

    asyncio.run(run())
