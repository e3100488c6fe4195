"""Per-type history retention (--temporal-retention-types): the setting's form, and the sweep on both
back-ends dropping the old history of the types named only (the store's purge: test_store_temporal_contract)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from cityos.settings import Settings
from cityos.store import open_store
from cityos.store.temporal_base import TemporalQuery
from cityos.temporal.retention import DEFAULT_VOCAB, by_days, parse_types
from cityos.temporal.service import HistoryService

WEATHER, PARKING = DEFAULT_VOCAB + "WeatherObserved", "https://smartdatamodels.org/dataModel.Parking/OffStreetParking"
TEMP = DEFAULT_VOCAB + "temperature"


def test_the_setting() -> None:
    assert parse_types(f" WeatherObserved=90, {PARKING}=30 ,") == {WEATHER: 90, PARKING: 30}
    for bad in ("WeatherObserved", "WeatherObserved=0", "=5", "WeatherObserved=ninety"):
        with pytest.raises(ValueError, match="TYPE=DAYS"):
            parse_types(bad)
        with pytest.raises(ValueError, match="TYPE=DAYS"):
            Settings.from_env({}, temporal_retention_types=bad)
    assert by_days({WEATHER: 90, PARKING: 30}, 0) == {30: [PARKING], 90: [WEATHER]}
    assert by_days({WEATHER: 90, PARKING: 30}, 60) == {30: [PARKING]}  # the global 60 days bound both


def test_the_sweep_drops_old_history_of_the_types_named(db_url: str) -> None:
    now = datetime.now(UTC)

    def reading(value: float, days_ago: int) -> tuple[str, dict[str, object]]:
        moment = (now - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return TEMP, {"type": "Property", "value": value, "observedAt": moment}

    async def run() -> tuple[int, list[int]]:
        store = open_store(db_url)
        await store.open()
        try:
            for entity, types in (("urn:ngsi-ld:WeatherObserved:1", [WEATHER]), ("urn:ngsi-ld:Other:1", [PARKING])):
                await store.temporal_write("", entity, types, [reading(1, 200), reading(2, 100), reading(3, 1)])
            service = HistoryService(store, Settings(database=db_url, temporal_retention_types="WeatherObserved=90"))
            removed = await service.purge_old()
            left = []
            for entity in ("urn:ngsi-ld:WeatherObserved:1", "urn:ngsi-ld:Other:1"):
                page = await store.temporal_query("", TemporalQuery(ids=[entity], attrs=[TEMP]))
                left.append(len(page.entities[0]["attrs"][TEMP]))
            return removed, left
        finally:
            await store.close()

    assert asyncio.run(run()) == (2, [1, 3])
