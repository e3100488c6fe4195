"""Computing forecasts from the store and writing them as TimeSeriesForecast entities.

History is read through the store's temporal aggregation (the SQL of the temporal API's
aggregation, on SQLite and PostgreSQL alike): one average per step per entity comes back, never
the instances. The forecast starts at the step after the entity's latest instance (the demo city's
history is from 2016-2017), and is written through the one write path (the ingest StoreSink:
parse_entity, the upsert mutator, store.mutate), replacing the entity, so its history, the
subscriptions and the audit trail see it as any other write. Models are fitted in a thread: a fit
takes from milliseconds to a second, which the event loop must not wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cityos.ingest.sink import StoreSink
from cityos.insight import forecast as fc
from cityos.insight import forecast_files
from cityos.insight.engine import SECOND, iso
from cityos.jsonld.termmap import TermMap
from cityos.store.base import EntityStore
from cityos.store.temporal_base import AggregationSpec, TemporalQuery, TemporalWindow

Method = Callable[[fc.Array, fc.Forecaster], fc.Prediction]


class UnknownForecaster(KeyError):
    """No forecaster has this id."""


def statsforecast_method(y: fc.Array, forecaster: fc.Forecaster) -> fc.Prediction:
    return fc.model_forecast(y, forecaster.horizon, forecaster.seasons)


def baseline_method(y: fc.Array, forecaster: fc.Forecaster) -> fc.Prediction:
    return fc.seasonal_naive(y, forecaster.horizon, forecaster.baseline_season)


@dataclass(slots=True)
class History:
    entity: str
    start: int  # microseconds: the first step's start
    values: list[float | None]  # one average per step (None: no instance in that step)
    instances: int  # instances averaged


@dataclass(slots=True)
class Issued:
    forecaster: str
    entity: str  # the entity forecast
    forecast_entity: str
    valid_from: str | None = None
    valid_to: str | None = None
    error: str | None = None  # why there is no forecast, or why the store refused it
    values: list[dict[str, Any]] = field(default_factory=list)


async def latest_times(store: EntityStore, tenant: str, terms: TermMap, forecaster: fc.Forecaster) -> dict[str, int]:
    """Each entity of the type with history of the attribute: its latest instance time (SQL)."""
    query = TemporalQuery(
        window=TemporalWindow(),
        types=[terms.expand(forecaster.type)],
        attrs=[terms.expand(forecaster.attribute)],
        max_instances=0,
        limit=forecaster.max_entities,
    )
    page = await store.temporal_aggregate(tenant, query, AggregationSpec(stats=frozenset({"count"})))
    latest: dict[str, int] = {}
    for entity in page.entities:
        for series in entity.attrs.values():
            for period in (p for s in series for p in s.periods if p.count):
                latest[entity.id] = max(latest.get(entity.id, period.last), period.last)
    return latest


async def read_history(
    store: EntityStore, tenant: str, terms: TermMap, forecaster: fc.Forecaster, entity: str, end: int
) -> History:
    """The `history` steps before `end` (a step boundary), averaged per step inside the database."""
    step = forecaster.step * SECOND
    start = end - forecaster.history * step
    query = TemporalQuery(
        window=TemporalWindow("observedAt", start, end),
        ids=[entity],
        attrs=[terms.expand(forecaster.attribute)],
        max_instances=0,
    )
    spec = AggregationSpec(micros=step, origin=start, stats=frozenset({"numbers", "avg"}))
    page = await store.temporal_aggregate(tenant, query, spec)
    values: list[float | None] = [None] * forecaster.history
    instances = 0
    for found in page.entities:
        for series in found.attrs.values():
            for period in (p for s in series for p in s.periods):
                if 0 <= period.index < forecaster.history and period.numbers and period.avg is not None:
                    values[period.index] = period.avg  # one series per attribute without datasetId
                    instances += period.numbers
    return History(entity, start, values, instances)


def forecast_body(
    forecaster: fc.Forecaster, history: History, prediction: fc.Prediction, gaps: int, method: str
) -> dict[str, Any]:
    """The normalized TimeSeriesForecast entity (terms of the core @context), docs/indicators.md."""
    step = forecaster.step * SECOND
    valid_from = history.start + forecaster.history * step
    values = []
    for k in range(forecaster.horizon):
        # every forecast quantity is a concentration or a count: below 0 is clipped to 0 (the normal
        # intervals know nothing of that; clipping changes no interval's coverage of real values)
        item: dict[str, Any] = {
            "at": iso(valid_from + k * step),
            "value": round(max(0.0, float(prediction.mean[k])), 6),
        }
        for level, (lower, upper) in prediction.bounds.items():
            item[f"lower{level}"] = round(max(0.0, float(lower[k])), 6)
            item[f"upper{level}"] = round(max(0.0, float(upper[k])), 6)
        values.append(item)
    measured = fc.accuracy().get("forecasters", {}).get(forecaster.id)

    def prop(value: Any) -> dict[str, Any]:
        return {"type": "Property", "value": value}

    issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    details = {
        "method": method,
        "modelVersion": forecaster.version,
        "intervalLevels": list(prediction.bounds),
        "stepSeconds": forecaster.step,
        "historyStart": iso(history.start),
        "historyEnd": iso(valid_from),
        "historySteps": forecaster.history,
        "historyInstances": history.instances,
        "filledSteps": gaps,
        "accuracy": measured if measured else "not measured",
        "comparedToBaseline": fc.verdict(forecaster.id),
    }
    forecast: dict[str, Any] = {"type": "Property", "value": values, "observedAt": iso(valid_from)}
    forecast["unitCode"] = forecaster.unit
    forecast.update({key: prop(value) for key, value in details.items()})
    return {
        "id": forecaster.entity_id(history.entity),
        "type": fc.FORECAST_TYPE,
        "name": prop(forecaster.name),
        "description": prop(forecaster.purpose),
        "refEntity": {"type": "Relationship", "object": history.entity},
        "forecastedAttribute": prop(forecaster.attribute),
        "forecaster": prop(forecaster.id),
        "dateIssued": prop(issued),
        "validFrom": prop(iso(valid_from)),
        "validTo": prop(iso(valid_from + forecaster.horizon * step)),
        "forecast": forecast,
    }


class ForecastService:
    def __init__(
        self,
        store: EntityStore,
        terms: TermMap,
        *,
        tenant: str = "",
        forecasters: dict[str, fc.Forecaster] | None = None,
        directory: str = "",
        method: Method = statsforecast_method,
        method_name: str = "",
    ) -> None:
        self.store = store
        self.terms = terms
        self.tenant = tenant
        self.directory = directory  # extra forecaster files (--forecasters-dir), read by load()
        self.forecasters = dict(forecasters or {})
        self.method = method
        self.method_name = method_name
        self.sink = StoreSink(store, terms)

    def load(self) -> None:
        """The shipped forecaster files, then those of the directory (ForecasterFileError: a
        refused file, its line and why)."""
        self.forecasters = forecast_files.load(self.directory)

    def get(self, forecaster_id: str) -> fc.Forecaster:
        try:
            return self.forecasters[forecaster_id]
        except KeyError:
            raise UnknownForecaster(forecaster_id) from None

    async def compute(self, forecaster_id: str, *, tenant: str | None = None) -> list[Issued]:
        """A forecast for each entity of the type with history (at most max_entities), written.
        ForecastUnavailable propagates: without the library no forecaster can run."""
        forecaster = self.get(forecaster_id)
        where = self.tenant if tenant is None else tenant
        step = forecaster.step * SECOND
        issued: list[Issued] = []
        for entity, latest in sorted((await latest_times(self.store, where, self.terms, forecaster)).items()):
            end = (latest // step + 1) * step  # the step after the latest instance's
            history = await read_history(self.store, where, self.terms, forecaster, entity, end)
            issued.append(await self._issue(where, forecaster, history))
        return issued

    async def _issue(self, tenant: str, forecaster: fc.Forecaster, history: History) -> Issued:
        done = Issued(forecaster.id, history.entity, forecaster.entity_id(history.entity))
        present = sum(value is not None for value in history.values)
        if present < 2 * max(forecaster.baseline_season, *forecaster.seasons):
            done.error = f"{present} of {forecaster.history} steps have values: too few to forecast"
            return done
        y, gaps = fc.fill_gaps(history.values)
        try:
            prediction = await asyncio.to_thread(self.method, y, forecaster)
        except ValueError as exc:  # a series the model cannot fit (constant, too short)
            done.error = f"the model could not be fitted: {exc}"
            return done
        body = forecast_body(forecaster, history, prediction, gaps, self.method_name or forecaster.method)
        [outcome] = await self.sink.upsert(tenant, [body], replace=True)
        done.error = outcome.error
        done.valid_from, done.valid_to = body["validFrom"]["value"], body["validTo"]["value"]
        done.values = body["forecast"]["value"]
        return done

    async def compute_all(self, ids: Sequence[str] = (), *, tenant: str | None = None) -> list[Issued]:
        found: list[Issued] = []
        for forecaster_id in ids or sorted(self.forecasters):
            found += await self.compute(forecaster_id, tenant=tenant)
        return found
