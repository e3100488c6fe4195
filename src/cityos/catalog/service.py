"""The catalogue service: each public dataset described from the live data (statistics, snapshot
sizes), cached for a short while because harvesters poll and every description reads the data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from rdflib import Graph

from cityos.catalog.dcat import CatalogGraph, Described, download_url
from cityos.catalog.model import Catalog, Dataset
from cityos.catalog.public import STATS_SECONDS, PublicData
from cityos.exports.formats import parquet_available
from cityos.exports.service import Exporter

SIZE_ROWS = 10_000  # snapshots of datasets up to this many entities are measured (dcat:byteSize)
SIZED = ("geojson", "csv", "parquet")
# history downloads of datasets up to this many history instances are measured too (one row each);
# a larger history's size is left out: only making the file gives it exactly (the values' lengths
# vary), and an estimate from the instance count is not a size
SIZE_INSTANCES = 20_000
HISTORY_SIZED = ("csv", "parquet")  # the history distributions the catalogue lists


class CatalogService:
    """`file_base`: the server's own address (from --host and --port), which the files name as
    their source; not the caller's Host header, so the files, their sizes and the cache are the
    same whoever asks, and a caller cannot make the data be read again by inventing host names."""

    def __init__(
        self,
        public: PublicData,
        file_base: str = "http://127.0.0.1:1026",
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.public = public
        self.file_base = file_base
        self._refresh = refresh  # reads the dataspace offers again when they changed (at most once a second)
        self.exporter = Exporter(public)
        self._described: dict[str, tuple[float, Described]] = {}
        self._lock = asyncio.Lock()

    @property
    def catalog(self) -> Catalog:
        return self.public.catalog

    async def refresh(self) -> None:
        """Before a request: the offers datasets may stand for, as published now."""
        if self._refresh is not None:
            await self._refresh()

    async def describe(self, dataset: Dataset) -> Described:
        key = f"{dataset.id}\n{dataset.type}\n{dataset.attrs}\n{dataset.shape}"  # an offer may change
        async with self._lock:  # one computation at a time: a burst of harvester calls reads the data once
            cached = self._described.get(key)
            if cached is not None and time.monotonic() - cached[0] < STATS_SECONDS:
                return cached[1]
            stats = await self.public.stats(dataset)
            sizes: dict[str, int] = {}
            served = [f for f in SIZED if f != "parquet" or parquet_available()]
            if stats.count <= SIZE_ROWS:
                for fmt in served:
                    sizes[fmt] = await self._size(dataset, "entities", fmt)
                if stats.instances <= SIZE_INSTANCES:
                    for fmt in (f for f in HISTORY_SIZED if f in served):
                        sizes[f"history-{fmt}"] = await self._size(dataset, "history", fmt)
            described = Described(dataset, stats, sizes)
            self._described[key] = (time.monotonic(), described)
            return described

    async def _size(self, dataset: Dataset, kind: str, fmt: str) -> int:
        """The byte size of a download, measured by making it (as a download makes it)."""
        name = fmt if kind == "entities" else f"{kind}-{fmt}"
        export = await self.exporter.export(dataset, kind, fmt, source=download_url(self.file_base, dataset, name))
        return sum([len(chunk) async for chunk in export.chunks])

    async def describe_all(self) -> list[Described]:
        return [await self.describe(d) for d in self.public.datasets()]

    async def graph(self, base: str) -> Graph:
        """The catalogue with its URIs under `base` (the address the caller used)."""
        return CatalogGraph(self.catalog, base).build(await self.describe_all())
