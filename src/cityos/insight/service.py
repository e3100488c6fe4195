"""The indicator service: the loaded indicators, computing and writing them, verifying a value.

Results are written through the one write path (the ingest StoreSink: parse_entity, the upsert
mutator, store.mutate), so history, subscriptions and the audit trail see a KPI like any entity.
The schedule is one background task, stopped with cityos.tasks.stop_task.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cityos.errors import NgsiLdError
from cityos.ingest.sink import StoreSink
from cityos.insight import engine
from cityos.insight.kpi import Verdict, compare, kpi_body, stored_value
from cityos.insight.model import Indicator, IndicatorFileError, load_indicators, parse_indicator
from cityos.insight.profile import demo_profile, load_profile
from cityos.jsonld.termmap import TermMap
from cityos.store.base import EntityStore
from cityos.tasks import stop_task

log = logging.getLogger("cityos.insight")


class UnknownIndicator(KeyError):
    """No indicator has this id."""


@dataclass(frozen=True, slots=True)
class Written:
    result: engine.Result
    error: str | None  # why the store refused the entity (None: stored)


class IndicatorService:
    def __init__(
        self,
        store: EntityStore,
        terms: TermMap,
        *,
        directory: str = "",
        interval: float = 0.0,
        tenant: str = "",
        profile: Mapping[str, float] | None = None,
        profile_file: str = "",
        demo: bool = False,
    ) -> None:
        self.store = store
        self.terms = terms
        self.directory = directory
        self.interval = interval
        self.tenant = tenant
        self.profile = dict(profile or {})  # the city profile's population and area
        self.profile_file = profile_file  # read at load(); with `demo` and none, the demo city's
        self.demo = demo
        self.sink = StoreSink(store, terms)
        self.indicators: dict[str, Indicator] = {}
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Load the shipped set and the directory's files (IndicatorFileError names a bad file)."""
        self.indicators = load_indicators(self.directory)
        if self.profile_file:
            self.profile = load_profile(self.profile_file)
        elif self.demo and not self.profile:
            self.profile = demo_profile()

    def put(self, indicator_id: str, text: str) -> tuple[Indicator, bool]:
        """Add or replace an indicator from its file's text, kept as {id}.toml in the directory
        (so it is loaded again at the next start); True if it is new. IndicatorFileError: refused,
        with the line; ValueError: there is no directory, or the id differs from the file's."""
        if not self.directory:
            raise ValueError("indicators are added as files of --indicators-dir, and none is set")
        target = Path(self.directory) / f"{indicator_id}.toml"
        indicator = parse_indicator(text, str(target))
        if indicator.id != indicator_id:
            raise IndicatorFileError(str(target), None, f"the file's id is {indicator.id}, the path's {indicator_id}")
        partial = target.with_suffix(".toml.partial")  # not *.toml: never loaded half-written
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
        created = indicator_id not in self.indicators
        self.indicators[indicator_id] = indicator
        return indicator, created

    def get(self, indicator_id: str) -> Indicator:
        try:
            return self.indicators[indicator_id]
        except KeyError:
            raise UnknownIndicator(indicator_id) from None

    async def compute(self, indicator_id: str, *, write: bool = True, tenant: str | None = None) -> Written:
        """The value of a city-scoped indicator (of a district-scoped one: its first district's)."""
        return (await self.compute_scopes(indicator_id, write=write, tenant=tenant))[0]

    async def compute_scopes(
        self, indicator_id: str, *, write: bool = True, tenant: str | None = None
    ) -> list[Written]:
        """One value per scope: the city's, or each district's (one KPI entity each)."""
        indicator = self.get(indicator_id)
        where = self.tenant if tenant is None else tenant
        done: list[Written] = []
        for district in indicator.scopes:
            result = await engine.compute(
                self.store, where, self.terms, indicator, profile=self.profile, district=district
            )
            if not write:
                done.append(Written(result, None))
                continue
            [outcome] = await self.sink.upsert(where, [kpi_body(result)], replace=True)
            done.append(Written(result, outcome.error))
        return done

    async def compute_all(self, ids: Sequence[str] = (), *, tenant: str | None = None) -> list[Written]:
        self.get_all(ids)
        return [
            written
            for indicator_id in (ids or sorted(self.indicators))
            for written in await self.compute_scopes(indicator_id, tenant=tenant)
        ]

    def get_all(self, ids: Sequence[str]) -> None:
        """UnknownIndicator for the first id that names none (before anything is computed)."""
        for indicator_id in ids:
            self.get(indicator_id)

    async def verify(self, indicator_id: str, *, tenant: str | None = None) -> Verdict:
        """Recompute the stored value over its recorded window and compare (each district's, for a
        district-scoped indicator: the first that differs is the verdict)."""
        indicator = self.get(indicator_id)
        where = self.tenant if tenant is None else tenant
        verdict = Verdict(False, None, None, "nothing to verify")
        for district in indicator.scopes:
            entity_id = indicator.entity_of(district)
            entity = await self.store.get_entity(where, entity_id)
            stored = stored_value(entity, self.terms) if entity is not None else None
            if stored is None:
                return Verdict(False, None, None, f"no stored value of {entity_id}")
            again = await engine.compute(
                self.store, where, self.terms, indicator, window=stored.window, profile=self.profile, district=district
            )
            verdict = compare(indicator, stored, again)
            if not verdict.matches:
                prefix = "" if district is None else f"district {district.id}: "
                return Verdict(False, verdict.stored, verdict.recomputed, prefix + verdict.reason)
        return verdict

    def start(self) -> None:
        if self.interval > 0 and self.indicators:
            self._task = asyncio.create_task(self._schedule())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _schedule(self) -> None:
        """Every indicator at each interval; a failure is logged and the schedule goes on."""
        while True:
            for indicator_id in sorted(self.indicators):
                try:
                    for written in await self.compute_scopes(indicator_id):
                        if written.error:
                            log.warning("indicator %s was not stored: %s", indicator_id, written.error)
                except NgsiLdError as exc:  # the database busy, a refused query: the next round tries again
                    log.warning("indicator %s was not computed: %s", indicator_id, exc)
                except Exception:  # a bug must not end the schedule of the others
                    log.exception("indicator %s failed", indicator_id)
            await asyncio.sleep(self.interval)
