"""A Mapbox Vector Tile 2.1 encoder: the protobuf wire format written by hand.

Why not the `mapbox-vector-tile` package: its releases pin protobuf below 7, which the GTFS-Realtime
bindings this project depends on need at 7.34 or above (pip cannot install both); and the tile
schema is four small messages, written here in 200 lines (varints, zigzag, packed fields, the
geometry commands). The tests decode every tile with Google's protobuf runtime (tests/mvt_decode.py).
Geometries arrive in tile coordinates (0..extent, y down), already rounded."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

POINT, LINESTRING, POLYGON = 1, 2, 3
EXTENT = 4096
Ring = Sequence[tuple[int, int]]
Value = str | int | float | bool


def _varint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def _key(field_number: int, wire: int, out: bytearray) -> None:
    _varint((field_number << 3) | wire, out)


def _bytes(field_number: int, data: bytes | bytearray, out: bytearray) -> None:
    _key(field_number, 2, out)
    _varint(len(data), out)
    out += data


def _packed(field_number: int, values: Sequence[int], out: bytearray) -> None:
    body = bytearray()
    for v in values:
        _varint(v, body)
    _bytes(field_number, body, out)


def _value(value: Value) -> bytes:
    out = bytearray()
    if isinstance(value, bool):
        _key(7, 0, out)
        _varint(int(value), out)
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        _key(6, 0, out)
        _varint(_zigzag(value) & 0xFFFFFFFFFFFFFFFF, out)
    elif isinstance(value, (int, float)):
        _key(3, 1, out)
        out += struct.pack("<d", float(value))
    else:
        _bytes(1, str(value).encode(), out)
    return bytes(out)


def _command(command: int, count: int) -> int:
    return (command & 0x7) | (count << 3)


def point_geometry(points: Sequence[tuple[int, int]]) -> list[int]:
    """MoveTo for each point (a MultiPoint is one command with several points)."""
    out = [_command(1, len(points))]
    x = y = 0
    for px, py in points:
        out += [_zigzag(px - x), _zigzag(py - y)]
        x, y = px, py
    return out


def _path(points: Ring, cursor: list[int], out: list[int]) -> None:
    x, y = cursor
    out += [_command(1, 1), _zigzag(points[0][0] - x), _zigzag(points[0][1] - y)]
    x, y = points[0]
    out.append(_command(2, len(points) - 1))
    for px, py in points[1:]:
        out += [_zigzag(px - x), _zigzag(py - y)]
        x, y = px, py
    cursor[:] = [x, y]


def line_geometry(lines: Sequence[Ring]) -> list[int]:
    out: list[int] = []
    cursor = [0, 0]
    for line in lines:
        if len(line) >= 2:
            _path(line, cursor, out)
    return out


def _area(ring: Ring) -> int:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, [*ring[1:], ring[0]], strict=True))


def polygon_geometry(polygons: Sequence[Sequence[Ring]]) -> list[int]:
    """Polygons as rings: the exterior with a positive area in tile coordinates (clockwise with y
    down, spec 4.3.4.4), holes negative; the closing point is implied (ClosePath)."""
    out: list[int] = []
    cursor = [0, 0]
    for rings in polygons:
        for index, ring in enumerate(rings):
            points = list(ring[:-1]) if len(ring) > 1 and ring[0] == ring[-1] else list(ring)
            deduped = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
            if len(deduped) < 3 or _area(deduped) == 0:
                if index == 0:
                    break  # a collapsed exterior: the polygon is too small to draw at this zoom
                continue
            if (_area(deduped) > 0) != (index == 0):
                deduped.reverse()
            _path(deduped, cursor, out)
            out.append(_command(7, 1))
    return out


@dataclass(slots=True)
class Layer:
    """One layer being filled: features added with their properties, keys and values interned."""

    name: str
    extent: int = EXTENT
    _features: list[bytes] = field(default_factory=list)
    _keys: dict[str, int] = field(default_factory=dict)
    _values: dict[tuple[type, Value], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._features)

    def add(self, kind: int, geometry: list[int], properties: dict[str, Value], feature_id: int | None = None) -> None:
        if not geometry:
            return
        tags: list[int] = []
        for name, value in properties.items():
            key = self._keys.setdefault(name, len(self._keys))
            value_key = (type(value), value)
            tags += [key, self._values.setdefault(value_key, len(self._values))]
        out = bytearray()
        if feature_id is not None:
            _key(1, 0, out)
            _varint(feature_id, out)
        if tags:
            _packed(2, tags, out)
        _key(3, 0, out)
        _varint(kind, out)
        _packed(4, geometry, out)
        self._features.append(bytes(out))

    def encode(self) -> bytes:
        out = bytearray()
        _key(15, 0, out)
        _varint(2, out)
        _bytes(1, self.name.encode(), out)
        for feature in self._features:
            _bytes(2, feature, out)
        for name in self._keys:
            _bytes(3, name.encode(), out)
        for _, value in self._values:
            _bytes(4, _value(value), out)
        _key(5, 0, out)
        _varint(self.extent, out)
        return bytes(out)


def encode(layers: Sequence[Layer]) -> bytes:
    """The tile: every non-empty layer (an empty tile is zero bytes, which the spec allows)."""
    out = bytearray()
    for layer in layers:
        if len(layer):
            _bytes(3, layer.encode(), out)
    return bytes(out)
