"""Exports of a public dataset (catalog/public.py's view): its entities or its history, as CSV,
GeoJSON or Parquet chunks. Framework-free: the HTTP handlers and `cityos export` both stream these.

Entities are written in the keyValues representation (as GET /ngsi-ld/v1/entities?options=keyValues
gives them): one row per entity, one column per attribute, structured values as JSON text.
History is written long: one row per attribute instance (entityId, entityType, attribute,
datasetId, observedAt, modifiedAt, value), the value as the temporal API's temporalValues give it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cityos.catalog.model import Catalog, Dataset
from cityos.catalog.public import PublicData
from cityos.entities.model import Entity
from cityos.entities.render import RenderOptions, key_value, render_entity, to_geojson_feature
from cityos.errors import BadRequestData, OperationNotSupported
from cityos.exports import formats
from cityos.exports.formats import Columns, FileInfo, Row

KINDS = ("entities", "history")
FORMATS = ("csv", "geojson", "parquet")
HISTORY_COLUMNS = ("entityId", "entityType", "attribute", "datasetId", "observedAt", "modifiedAt", "value")


@dataclass
class Export:
    """A file about to be streamed: its media type, name and chunks."""

    media_type: str
    filename: str
    chunks: AsyncIterator[bytes]
    info: FileInfo
    columns: Columns | None = None  # CSV and Parquet: set once the stream has begun (the sidecar's)


class Exporter:
    def __init__(self, public: PublicData) -> None:
        self.public = public
        self.options = RenderOptions(terms=public.terms, format="keyValues")

    @property
    def catalog(self) -> Catalog:
        return self.public.catalog

    def info(self, dataset: Dataset, source: str = "") -> FileInfo:
        return FileInfo(dataset.id, dataset.licence, self.catalog.credit, source)

    async def export(self, dataset: Dataset, kind: str, fmt: str, source: str = "") -> Export:
        """Checks the size first (ExportTooLarge before any byte), then returns the stream."""
        if kind not in KINDS:
            raise BadRequestData(f"unknown export {kind!r}: one of {', '.join(KINDS)}")
        if fmt not in FORMATS:
            raise BadRequestData(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
        if fmt == "parquet" and not formats.parquet_available():
            raise OperationNotSupported("Parquet needs pyarrow: pip install 'cityos[parquet]' (docs/open-data.md)")
        await self.public.check_size(dataset)
        info = self.info(dataset, source)
        filename = f"{dataset.id}-{kind}.{formats.EXTENSIONS[fmt]}"
        if fmt == "geojson":
            features = self.features(dataset) if kind == "entities" else self.history_features(dataset)
            return Export(formats.MEDIA[fmt], filename, formats.geojson_chunks(features, info), info)

        def rows() -> AsyncIterator[Row]:
            return self.entity_rows(dataset) if kind == "entities" else self.history_rows(dataset)

        export = Export(formats.MEDIA[fmt], filename, _empty(), info)
        export.chunks = self._tabular(rows, fmt, kind, export)
        return export

    async def _tabular(self, rows: formats.Rows, fmt: str, kind: str, export: Export) -> AsyncIterator[bytes]:
        columns = export.columns = await self.columns(rows, kind)
        info = export.info
        chunks = formats.csv_chunks(rows, columns) if fmt == "csv" else formats.parquet_chunks(rows, columns, info)
        async for chunk in chunks:
            yield chunk

    async def columns(self, rows: formats.Rows, kind: str) -> Columns:
        found = await formats.columns_of(rows)
        if kind == "history":  # the same columns whatever the data (a reader can count on them)
            fixed = Columns(list(HISTORY_COLUMNS), {name: "string" for name in HISTORY_COLUMNS})
            fixed.kinds["value"] = found.kinds.get("value", "string")
            if fixed.kinds["value"] in ("null", "bool"):
                fixed.kinds["value"] = "string"
            return fixed
        for required in ("id", "type"):
            if required not in found.kinds:
                found.names.insert(0 if required == "id" else 1, required)
                found.kinds[required] = "string"
        found.kinds = {name: "string" if kind == "null" else kind for name, kind in found.kinds.items()}
        return found

    async def csvw(
        self, dataset: Dataset, csv_url: str, source: str = "", columns: Columns | None = None
    ) -> dict[str, Any]:
        """The CSV's sidecar; `columns`: those of an export just written (else a pass over the data)."""
        if columns is None:
            await self.public.check_size(dataset)
            columns = await self.columns(lambda: self.entity_rows(dataset), "entities")
        return formats.csvw_metadata(self.info(dataset, source), columns, csv_url)

    # -- rows --
    def entity_row(self, entity: Entity) -> Row:
        return {name: formats.cell(value) for name, value in render_entity(entity, self.options).items()}

    async def entity_rows(self, dataset: Dataset) -> AsyncIterator[Row]:
        async for entity in self.public.entities(dataset):
            yield self.entity_row(entity)

    async def features(self, dataset: Dataset) -> AsyncIterator[dict[str, Any]]:
        async for entity in self.public.entities(dataset):
            yield to_geojson_feature(entity, self.options, None)

    def history_row(self, entity: Entity, attr: str, instance: dict[str, Any]) -> Row:
        terms = self.public.terms
        return {
            "entityId": entity["id"],
            "entityType": ",".join(terms.compact(t) for t in entity["type"]),
            "attribute": terms.compact(attr),
            "datasetId": instance.get("datasetId"),
            "observedAt": instance.get("observedAt"),
            "modifiedAt": instance.get("modifiedAt"),
            "value": formats.cell(key_value(instance, self.options)),
        }

    async def history_rows(self, dataset: Dataset) -> AsyncIterator[Row]:
        async for entity, attr, instance in self.public.history(dataset):
            yield self.history_row(entity, attr, instance)

    async def history_features(self, dataset: Dataset) -> AsyncIterator[dict[str, Any]]:
        """One Feature per instance, placed at its entity's current location."""
        geometry: Any = None
        current = None
        async for entity, attr, instance in self.public.history(dataset):
            if entity["id"] != current:
                current = entity["id"]
                geometry = to_geojson_feature(entity, self.options, None)["geometry"]
            yield {"type": "Feature", "geometry": geometry, "properties": self.history_row(entity, attr, instance)}


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing
