"""A Mapbox Vector Tile decoder for the tests, independent of the encoder under test: the tile
schema (vector_tile.proto 2.1) built as a descriptor at run time and parsed by Google's protobuf
runtime, then the geometry commands read back as the spec defines them."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _schema() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="vector_tile_test.proto", package="vt", syntax="proto2")
    tile = file.message_type.add(name="Tile")
    value = tile.nested_type.add(name="Value")
    for number, name, kind in (
        (1, "string_value", _F.TYPE_STRING),
        (2, "float_value", _F.TYPE_FLOAT),
        (3, "double_value", _F.TYPE_DOUBLE),
        (4, "int_value", _F.TYPE_INT64),
        (5, "uint_value", _F.TYPE_UINT64),
        (6, "sint_value", _F.TYPE_SINT64),
        (7, "bool_value", _F.TYPE_BOOL),
    ):
        value.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
    feature = tile.nested_type.add(name="Feature")
    feature.field.add(name="id", number=1, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL)
    feature.field.add(name="tags", number=2, type=_F.TYPE_UINT32, label=_F.LABEL_REPEATED, options={"packed": True})
    feature.field.add(name="type", number=3, type=_F.TYPE_UINT32, label=_F.LABEL_OPTIONAL)
    feature.field.add(name="geometry", number=4, type=_F.TYPE_UINT32, label=_F.LABEL_REPEATED, options={"packed": True})
    layer = tile.nested_type.add(name="Layer")
    layer.field.add(name="version", number=15, type=_F.TYPE_UINT32, label=_F.LABEL_REQUIRED)
    layer.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REQUIRED)
    layer.field.add(
        name="features", number=2, type=_F.TYPE_MESSAGE, type_name=".vt.Tile.Feature", label=_F.LABEL_REPEATED
    )
    layer.field.add(name="keys", number=3, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    layer.field.add(name="values", number=4, type=_F.TYPE_MESSAGE, type_name=".vt.Tile.Value", label=_F.LABEL_REPEATED)
    layer.field.add(name="extent", number=5, type=_F.TYPE_UINT32, label=_F.LABEL_OPTIONAL)
    tile.field.add(name="layers", number=3, type=_F.TYPE_MESSAGE, type_name=".vt.Tile.Layer", label=_F.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("vt.Tile"))


TileMessage = _schema()


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _geometry(kind: int, commands: list[int]) -> list[list[tuple[int, int]]]:
    """The paths of a feature (a point feature: one path of its points), in tile coordinates."""
    paths: list[list[tuple[int, int]]] = []
    x = y = 0
    i = 0
    while i < len(commands):
        command, count = commands[i] & 7, commands[i] >> 3
        i += 1
        if command == 7:
            paths[-1].append(paths[-1][0])
            continue
        for _ in range(count):
            x += _unzigzag(commands[i])
            y += _unzigzag(commands[i + 1])
            i += 2
            if command == 1 and (kind != 1 or not paths):
                paths.append([])
            paths[-1].append((x, y))
    return paths


def decode(data: bytes) -> dict[str, dict[str, Any]]:
    """{layer name: {"extent", "version", "features": [{"id", "type", "properties", "paths"}]}}."""
    tile = TileMessage()
    tile.ParseFromString(data)
    layers = {}
    for layer in tile.layers:
        values = [v.ListFields()[0][1] for v in layer.values]
        features = []
        for feature in layer.features:
            tags = list(feature.tags)
            properties = {layer.keys[tags[i]]: values[tags[i + 1]] for i in range(0, len(tags), 2)}
            features.append(
                {
                    "id": feature.id,
                    "type": feature.type,
                    "properties": properties,
                    "paths": _geometry(feature.type, list(feature.geometry)),
                }
            )
        layers[layer.name] = {"extent": layer.extent, "version": layer.version, "features": features}
    return layers
