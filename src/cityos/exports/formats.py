"""CSV, GeoJSON and Parquet written as a stream of byte chunks, one page of rows at a time.

Rows are flat dicts (column -> str, number, bool or None). CSV and Parquet need their columns (and
Parquet their types) before the first row, so they read the rows twice: a first pass that keeps only
the column names and kinds, then the pass that writes. GeoJSON needs one pass.

The licence and attribution travel with every file: Parquet key-value metadata (`licence`,
`attribution`, `dataset`, `source`), GeoJSON foreign members of the FeatureCollection, and for CSV a
W3C CSV on the Web metadata document (sidecar, csvw_metadata) which the download links to; the CSV
itself stays plain (no comment lines that spreadsheet tools would read as data).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

Row = dict[str, Any]
Rows = Callable[[], AsyncIterator[Row]]  # a fresh pass over the rows each call
FLUSH_ROWS = 2000  # rows per chunk sent (and per Parquet row group)
MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "geojson": "application/geo+json",
    "parquet": "application/vnd.apache.parquet",
}
EXTENSIONS = {"csv": "csv", "geojson": "geojson", "parquet": "parquet"}


def parquet_available() -> bool:
    """Parquet needs pyarrow, the `parquet` extra (170 MB installed): without it the catalogue
    leaves the Parquet distributions out and a Parquet download is a clear 422."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


@dataclass
class FileInfo:
    """What every file says about itself."""

    dataset: str
    licence: str
    attribution: str
    source: str = ""  # the URL of the query the file was made from

    def metadata(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "licence": self.licence,
            "attribution": self.attribution,
            "source": self.source,
        }


@dataclass
class Columns:
    """The column names in order of first appearance, and each one's kind (number, bool, string)."""

    names: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)

    def see(self, row: Row) -> None:
        for name, value in row.items():
            kind = _kind(value)
            known = self.kinds.get(name)
            if known is None:
                self.names.append(name)
                self.kinds[name] = kind
            elif kind != "null" and known != kind:
                self.kinds[name] = kind if known == "null" else "string"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


def cell(value: Any) -> Any:
    """A value as one cell: scalars as they are, structures as compact JSON text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return orjson.dumps(value).decode()


async def columns_of(rows: Rows) -> Columns:
    found = Columns()
    async for row in rows():
        found.see(row)
    return found


async def csv_chunks(rows: Rows, columns: Columns) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow(columns.names)
    pending = 0
    async for row in rows():
        writer.writerow(["" if (v := row.get(name)) is None else _csv_text(v) for name in columns.names])
        pending += 1
        if pending >= FLUSH_ROWS:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue().encode()


def _csv_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csvw_metadata(info: FileInfo, columns: Columns, csv_url: str) -> dict[str, Any]:
    """The CSV's sidecar (W3C "Metadata Vocabulary for Tabular Data"): licence, attribution, columns."""
    datatypes = {"number": "number", "bool": "boolean"}
    return {
        "@context": "http://www.w3.org/ns/csvw",
        "url": csv_url,
        "dc:title": info.dataset,
        "dc:license": {"@id": info.licence},
        "dc:creator": info.attribution,
        "dc:source": info.source,
        "tableSchema": {
            "columns": [
                {"name": name, "titles": name, "datatype": datatypes.get(columns.kinds[name], "string")}
                for name in columns.names
            ]
        },
    }


async def geojson_chunks(features: AsyncIterator[dict[str, Any]], info: FileInfo) -> AsyncIterator[bytes]:
    head = {"type": "FeatureCollection", **info.metadata()}
    yield orjson.dumps(head)[:-1] + b',"features":['
    parts: list[bytes] = []
    first = True
    async for feature in features:
        parts.append(orjson.dumps(feature) if first else b"," + orjson.dumps(feature))
        first = False
        if len(parts) >= FLUSH_ROWS:
            yield b"".join(parts)
            parts.clear()
    parts.append(b"]}")
    yield b"".join(parts)


class _Sink:
    """A write-only file for pyarrow whose bytes are taken out after each row group."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


async def parquet_chunks(rows: Rows, columns: Columns, info: FileInfo) -> AsyncIterator[bytes]:
    import pyarrow as pa  # the parquet extra, checked by the caller (parquet_available)
    import pyarrow.parquet as pq

    types = {"number": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema(
        [pa.field(name, types.get(columns.kinds[name], pa.string())) for name in columns.names],
        metadata={k.encode(): v.encode() for k, v in info.metadata().items()},
    )
    sink = _Sink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd")
    batch: dict[str, list[Any]] = {name: [] for name in columns.names}
    pending = 0

    def flush() -> bytes:
        nonlocal pending
        arrays = [pa.array(batch[name], type=schema.field(name).type) for name in columns.names]
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        for values in batch.values():
            values.clear()
        pending = 0
        return sink.take()

    async for row in rows():
        for name in columns.names:
            batch[name].append(_typed(row.get(name), columns.kinds[name]))
        pending += 1
        if pending >= FLUSH_ROWS:
            yield flush()
    if pending:
        yield flush()
    writer.close()
    yield sink.take()


def _typed(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "number":
        return float(value)
    if kind == "string" and not isinstance(value, str):
        return _csv_text(value) if isinstance(value, bool | int | float) else orjson.dumps(value).decode()
    return value
