"""Document codecs compared on stored documents (issue 15, tenth pass; docs/performance.md).

    python -m benchmarks.codecs DB                 # µs per document (timeit) and bytes, every codec
    CITYOS_INSTRUCTIONS_CALLGRIND=1 valgrind --tool=callgrind --instr-atstart=no \\
        python -m benchmarks.codecs DB CODEC pack|unpack   # instructions of one codec's loop

DB is a SQLite file of CityOS whose `entities.doc` are the documents (any format `inflate` reads).
The codecs need `zlib-ng`, `isal`, `zstandard` and `lz4`; a codec whose package is missing is skipped.
Every codec gets the same preset dictionary (sqlite_layout.DICTIONARY), each document on its own.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import subprocess
import sys
import timeit
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cityos.store.sqlite_layout import DICTIONARY, inflate

TRAINED = Path(__file__).resolve().parents[1] / "src" / "cityos" / "store" / "data" / "documents-1.zdict"

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def _deflate_like(module: Any, level: int, copy: bool) -> Codec:
    """Raw DEFLATE with the dictionary: zlib's API, as zlib, zlib-ng and ISA-L give it."""
    compressobj, decompressobj = module.compressobj, module.decompressobj
    primed = compressobj(level, 8, -12, 4, 0, DICTIONARY)

    def pack(document: bytes) -> Any:
        packer = primed.copy() if copy else compressobj(level, 8, -15, 8, 0, DICTIONARY)
        return packer.compress(document) + packer.flush()

    def unpack(stored: bytes) -> Any:
        return decompressobj(-15, DICTIONARY).decompress(stored)

    return pack, unpack


def callgrind(switch: str) -> None:
    """benchmarks.instructions.callgrind, without importing the application (minutes under valgrind)."""
    if os.environ.get("CITYOS_INSTRUCTIONS_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", switch, str(os.getpid())], capture_output=True, check=False)


def codecs() -> dict[str, Codec]:
    found: dict[str, Codec] = {"none": (bytes, bytes), "zlib-1": _deflate_like(zlib, 1, True)}
    try:
        zlib_ng = importlib.import_module("zlib_ng.zlib_ng")

        found["zlib-ng-1"] = _deflate_like(zlib_ng, 1, True)
    except ImportError:
        pass
    try:
        isal_zlib = importlib.import_module("isal.isal_zlib")

        found["isal-0"] = _deflate_like(isal_zlib, 0, False)
        found["isal-1"] = _deflate_like(isal_zlib, 1, False)
    except ImportError:
        pass
    try:
        import zstandard

        raw = zstandard.ZstdCompressionDict(DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        trained = zstandard.ZstdCompressionDict(TRAINED.read_bytes())
        for name, dictionary in (("zstd", raw), ("zstd-trained", trained)):
            for level in (1, 3):
                params = zstandard.ZstdCompressionParameters.from_level(
                    level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=False, write_dict_id=False
                )
                packer = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params)
                unpacker = zstandard.ZstdDecompressor(dict_data=dictionary, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
                found[f"{name}-{level}"] = (packer.compress, unpacker.decompress)
    except ImportError:
        pass
    try:
        zstd: Any = importlib.import_module("backports.zstd")

        options = {zstd.CompressionParameter.compression_level: 1, zstd.CompressionParameter.checksum_flag: 0}
        options[zstd.CompressionParameter.dict_id_flag] = 0
        stdlib_dict = zstd.ZstdDict(TRAINED.read_bytes())
        stdlib_packer = zstd.ZstdCompressor(options=options, zstd_dict=stdlib_dict)

        def stdlib_pack(document: bytes) -> Any:
            return stdlib_packer.compress(document, zstd.ZstdCompressor.FLUSH_FRAME)

        def stdlib_unpack(stored: bytes) -> Any:
            return zstd.decompress(stored, stdlib_dict)

        found["backports.zstd-trained-1"] = (stdlib_pack, stdlib_unpack)
    except ImportError:
        pass
    try:
        lz4_block = importlib.import_module("lz4.block")

        def lz4_pack(document: bytes) -> Any:
            return lz4_block.compress(document, dict=DICTIONARY)

        def lz4_unpack(stored: bytes) -> Any:
            return lz4_block.decompress(stored, dict=DICTIONARY)

        found["lz4"] = (lz4_pack, lz4_unpack)
    except ImportError:
        pass
    return found


def documents(database: str) -> list[bytes]:
    with sqlite3.connect(database) as connection:
        return [inflate(row[0]) for row in connection.execute("SELECT doc FROM entities ORDER BY pk")]


def _seconds(work: Callable[[bytes], bytes], items: list[bytes]) -> float:
    """The best of 5 of 3 rounds over `items`, per round."""
    return min(timeit.repeat(lambda: [work(item) for item in items], number=3, repeat=5)) / 3


def compare(docs: list[bytes]) -> None:
    total = sum(map(len, docs))
    print(f"\n{len(docs)} documents, {total / len(docs):.0f} B of JSON each")
    print("| codec | bytes per document | pack µs | unpack µs |")
    print("|---|---|---|---|")
    for name, (pack, unpack) in codecs().items():
        packed = [pack(d) for d in docs]
        assert [unpack(p) for p in packed] == docs, name
        pack_s, unpack_s = _seconds(pack, docs), _seconds(unpack, packed)
        size = sum(map(len, packed)) / len(docs)
        print(f"| {name} | {size:.1f} | {pack_s / len(docs) * 1e6:.2f} | {unpack_s / len(docs) * 1e6:.2f} |")


def count(docs: list[bytes], name: str, op: str) -> None:
    """One codec's loop alone between callgrind's switches (instructions / len(docs) per document)."""
    pack, unpack = codecs()[name]
    packed = [pack(d) for d in docs]
    work, items = (pack, docs) if op == "pack" else (unpack, packed)
    for item in items[:100]:
        work(item)
    callgrind("on")
    for item in items:
        work(item)
    callgrind("off")
    print(f"{name} {op}: {len(items)} documents")


def main() -> None:
    docs = documents(sys.argv[1])
    bench = [d for d in docs if d.startswith(b'{"id":"urn:ngsi-ld:OffStreetParking:bench-')]
    if len(sys.argv) == 4:
        count(bench, sys.argv[2], sys.argv[3])
        return
    compare(bench)  # the benchmark's entities (none of them among the trained dictionary's samples)
    compare([d for d in docs if d not in bench])  # any other (the Smart Data Models examples: its samples)


if __name__ == "__main__":
    main()
