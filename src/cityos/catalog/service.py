"""The catalogue service: each public dataset described from the live data (statistics, snapshot
sizes), cached for a short while because harvesters poll and every description reads the data."""

from __future__ import annotations

import asyncio
import time

from rdflib import Graph

from cityos.catalog.dcat import CatalogGraph, Described, download_url
from cityos.catalog.model import Catalog, Dataset
from cityos.catalog.public import STATS_SECONDS, PublicData
from cityos.exports.service import Exporter

SIZE_ROWS = 10_000  # snapshots of datasets up to this many entities are measured (dcat:byteSize)
SIZED = ("geojson", "csv", "parquet")


class CatalogService:
    def __init__(self, public: PublicData) -> None:
        self.public = public
        self.exporter = Exporter(public)
        self._described: dict[str, tuple[float, Described]] = {}
        self._lock = asyncio.Lock()

    @property
    def catalog(self) -> Catalog:
        return self.public.catalog

    async def describe(self, dataset: Dataset, base: str) -> Described:
        """`base`: the server's URL as the caller reached it, which the files name as their source."""
        key = f"{dataset.id} {base}"
        async with self._lock:  # one computation at a time: a burst of harvester calls reads the data once
            cached = self._described.get(key)
            if cached is not None and time.monotonic() - cached[0] < STATS_SECONDS:
                return cached[1]
            stats = await self.public.stats(dataset)
            sizes: dict[str, int] = {}
            if stats.count <= SIZE_ROWS:
                for fmt in SIZED:
                    source = download_url(base, dataset, fmt)
                    export = await self.exporter.export(dataset, "entities", fmt, source=source)
                    sizes[fmt] = sum([len(chunk) async for chunk in export.chunks])
            described = Described(dataset, stats, sizes)
            if len(self._described) >= 1024:  # a bound on the bases callers can make up (Host header)
                self._described.clear()
            self._described[key] = (time.monotonic(), described)
            return described

    async def describe_all(self, base: str) -> list[Described]:
        return [await self.describe(d, base) for d in self.public.datasets()]

    async def graph(self, base: str) -> Graph:
        return CatalogGraph(self.catalog, base).build(await self.describe_all(base))
