"""Downsampling on SQLite (store/temporal_downsample.py), mixed into SQLiteStore next to
SQLiteTemporal, whose row helpers it uses."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from cityos.store.sqlite_history import DECODED, INSERT_INSTANCE, Names, TimeCodec, decode, encode
from cityos.store.sqlite_layout import name_ids
from cityos.store.temporal_downsample import GREATEST, HOUR, LEAST, SAMPLES, SQUARES, chunks, fold

T = TypeVar("T")
_COLUMNS = ", ".join(f"i.{name}" for name in DECODED)
# a numeric Property instance (downsampling folds them): a number in num, a shape of type Property
_NUMERIC = "vkind IN (1, 2) AND shape IN (SELECT id FROM temporal_names WHERE name LIKE 'Property %')"


def _folded(member: str, otherwise: str) -> str:
    """SQL of a number a downsampled hourly instance (store/temporal_downsample.py) keeps in its
    `rest` as sub-property `member`, else `otherwise`: a byte search in the few rows that have a
    `rest` first, so the readings pay no JSON parse."""
    found = f"json_extract(CAST(i.rest AS TEXT), '$.\"{member}\".value')"
    marked = f"instr(i.rest, CAST('{_MARK}' AS BLOB)) > 0"
    return f"CASE WHEN {marked} THEN COALESCE({found}, {otherwise}) ELSE {otherwise} END"


_MARK = SAMPLES.rsplit("/", 1)[1]  # "history#sampleCount": only a downsampled instance has it
# what each row stands for: w readings (1, or an hourly instance's sampleCount), the least and
# greatest of them (lo, hi) and the sum of their squares (sq); the statistics are weighted by them,
# so an aggregation over hourly instances gives what it gave over the readings (but distinctCount)
WEIGHTED = (
    f"{_folded(SAMPLES, '1')} AS w, {_folded(LEAST, 'i.num')} AS lo, {_folded(GREATEST, 'i.num')} AS hi,"
    f" {_folded(SQUARES, 'i.num * i.num')} AS sq"
)
# the statistics of sqlite_temporal.STAT_SQL that differ over rows with WEIGHTED's columns (w, lo,
# hi, sq): once history was downsampled
WEIGHTED_STATS = {
    "count": "SUM(w)",
    "numbers": "COALESCE(SUM(CASE WHEN num IS NOT NULL THEN w END), 0)",
    "sum": "SUM(num * w)",
    "avg": "SUM(num * w) / SUM(CASE WHEN num IS NOT NULL THEN w END)",
    "min": "MIN(lo)",
    "max": "MAX(hi)",
    "sumsq": "SUM(CASE WHEN num IS NOT NULL THEN sq END)",
}


class SQLiteDownsample:
    if TYPE_CHECKING:
        _wnames: Names
        _times: TimeCodec
        _instance_prefix: str

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, groupable: bool = True) -> T: ...

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _delete_rows(self, connection: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int: ...

    async def temporal_downsample(self, before: int, types: Sequence[str], after: int | None = None) -> int:
        """Fold the hours of numeric Property instances observed in [after, before) of the entities
        of these types that hold more than one instance (store/temporal_downsample.py): found by one
        read, then folded a chunk of hours per write (other writes go between them). Returns how
        many instances went (those folded, less the hourly ones made)."""
        if not types:
            return 0
        low = 0 if after is None else max(after, 0)  # hours before 1970 are left alone

        def find(connection: sqlite3.Connection) -> list[tuple[tuple[int, int, int, int], int]]:
            rows = connection.execute(
                f"SELECT epk, attr, dataset, observed_us / {HOUR}, count(*) FROM temporal_rows"
                f" WHERE epk IN (SELECT epk FROM temporal_types WHERE type IN {name_ids(len(types))})"
                f" AND observed_us >= ? AND observed_us < ? AND {_NUMERIC}"
                " GROUP BY 1, 2, 3, 4 HAVING count(*) > 1 ORDER BY 1, 2, 3, 4",
                (*types, low, before),
            ).fetchall()
            return [((epk, attr, dataset, hour), n) for epk, attr, dataset, hour, n in rows]

        hours = await self._read(find)
        # the mark that aggregations weight instances from now on (sqlite_temporal.WEIGHTED): set by
        # every run, so a file folded by a CityOS before the mark gets it at the next run
        await self._write(lambda connection: self._wnames.id(connection, SAMPLES), groupable=False)

        def run(chunk: list[tuple[int, int, int, int]]) -> Callable[[sqlite3.Connection], int]:
            def folded(connection: sqlite3.Connection) -> int:
                removed = 0
                names, times, prefix = self._wnames, self._times, self._instance_prefix
                for epk, attr, dataset, hour in chunk:
                    rows = connection.execute(
                        f"SELECT i.pk, {_COLUMNS} FROM temporal_rows i WHERE i.epk = ? AND i.attr = ?"
                        f" AND i.dataset = ? AND i.observed_us >= ? AND i.observed_us < ? AND {_NUMERIC}"
                        " ORDER BY i.observed_us, i.pk",
                        (epk, attr, dataset, hour * HOUR, (hour + 1) * HOUR),
                    ).fetchall()
                    if len(rows) < 2:  # changed since it was found
                        continue
                    instances = [decode(connection, names, times, prefix, row[0], row[1:]) for row in rows]
                    pks = [row[0] for row in rows]
                    self._delete_rows(connection, f"pk IN ({','.join('?' * len(pks))})", tuple(pks))
                    # inserted, as PostgreSQL does: a non-numeric instance at the hour's start stays
                    folded = fold(instances, hour)
                    row = encode(connection, names, times, epk, names.name(connection, attr), folded)
                    connection.execute(INSERT_INSTANCE, row)
                    removed += len(rows) - 1
                return removed

            return folded

        removed = 0
        for group in chunks(hours):
            removed += await self._write(run([hours[n][0] for n in group]), groupable=False)
        return removed
