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
    """`file_base`: the server's own address (from --host and --port), which the files name as
    their source; not the caller's Host header, so the files, their sizes and the cache are the
    same whoever asks, and a caller cannot make the data be read again by inventing host names."""

    def __init__(self, public: PublicData, file_base: str = "http://127.0.0.1:1026") -> None:
        self.public = public
        self.file_base = file_base
        self.exporter = Exporter(public)
        self._described: dict[str, tuple[float, Described]] = {}
        self._lock = asyncio.Lock()

    @property
    def catalog(self) -> Catalog:
        return self.public.catalog

    async def describe(self, dataset: Dataset) -> Described:
        key = dataset.id
        async with self._lock:  # one computation at a time: a burst of harvester calls reads the data once
            cached = self._described.get(key)
            if cached is not None and time.monotonic() - cached[0] < STATS_SECONDS:
                return cached[1]
            stats = await self.public.stats(dataset)
            sizes: dict[str, int] = {}
            if stats.count <= SIZE_ROWS:
                for fmt in SIZED:
                    source = download_url(self.file_base, dataset, fmt)
                    export = await self.exporter.export(dataset, "entities", fmt, source=source)
                    sizes[fmt] = sum([len(chunk) async for chunk in export.chunks])
            described = Described(dataset, stats, sizes)
            self._described[key] = (time.monotonic(), described)
            return described

    async def describe_all(self) -> list[Described]:
        return [await self.describe(d) for d in self.public.datasets()]

    async def graph(self, base: str) -> Graph:
        """The catalogue with its URIs under `base` (the address the caller used)."""
        return CatalogGraph(self.catalog, base).build(await self.describe_all())
