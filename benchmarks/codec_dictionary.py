"""Train the zstd dictionary of stored entity documents (src/cityos/store/data/documents-1.zdict).

    python -m benchmarks.codec_dictionary [SMART_DATA_MODELS_FOLDER] [OUT]

The samples are the documents CityOS stores (store/sqlite_layout.py) for the Smart Data Models
examples in normalized form (`*/*/example-normalized.jsonld` of the shared data set, sorted by path;
each without its @context, so under the default context; an example the broker refuses is left
out), each created 20 times under ids of its own, with every createdAt/modifiedAt replaced by a time
drawn from a generator of fixed seed: the same examples give the same samples, and zstd's COVER
trainer with fixed parameters (one thread) the same dictionary. The benchmark's own entities
(benchmarks/entities.py) are NOT among the samples, so their sizes in docs/performance.md are those
of documents the dictionary never saw.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import sys
import tempfile
from pathlib import Path

import orjson
import zstandard

from cityos.clock import second_text
from cityos.store.sqlite_layout import inflate

DICTIONARY_SIZE = 16384
COPIES = 20
SEED = 15
FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "smart-data-models"
OUT = Path(__file__).resolve().parents[1] / "src" / "cityos" / "store" / "data" / "documents-1.zdict"
_TIME = re.compile(rb'"(createdAt|modifiedAt)":"[^"]*"')


def stored_documents(folder: Path) -> list[bytes]:
    """The stored JSON of every example, COPIES times, through a real broker on a scratch SQLite file."""
    from starlette.testclient import TestClient

    from cityos.app import create_app
    from cityos.settings import Settings

    with tempfile.TemporaryDirectory(prefix="cityos-zdict-") as scratch:
        database = str(Path(scratch) / "samples.db")
        headers = {"Content-Type": "application/json"}
        with TestClient(create_app(Settings(database=database, log_level="warning"))) as client:
            for path in sorted(folder.glob("*/*/example-normalized.jsonld")):
                example = orjson.loads(path.read_bytes())
                example = example[0] if isinstance(example, list) else example
                example.pop("@context", None)
                for copy in range(COPIES):
                    body = orjson.dumps({**example, "id": f"{example['id']}-{copy}"})
                    if client.post("/ngsi-ld/v1/entities", content=body, headers=headers).status_code != 201:
                        break
        with sqlite3.connect(database) as connection:
            return [inflate(row[0]) for row in connection.execute("SELECT doc FROM entities ORDER BY pk")]


def samples(folder: Path) -> list[bytes]:
    rng = random.Random(SEED)

    def stamp(match: re.Match[bytes]) -> bytes:
        second = rng.randrange(1_700_000_000, 1_900_000_000)
        text = f"{second_text(second)}.{rng.randrange(1000):03d}Z"
        return b'"' + match.group(1) + b'":"' + text.encode() + b'"'

    return [_TIME.sub(stamp, document) for document in stored_documents(folder)]


def train(documents: list[bytes]) -> bytes:
    trained = zstandard.train_dictionary(
        DICTIONARY_SIZE, list[bytes | bytearray | memoryview](documents), k=64, d=8, threads=0, steps=0, level=1
    )
    return trained.as_bytes()


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
    documents = samples(folder)
    dictionary = train(documents)
    out.write_bytes(dictionary)
    print(f"{len(documents)} samples, {len(dictionary)} bytes, sha256 {hashlib.sha256(dictionary).hexdigest()}: {out}")


if __name__ == "__main__":
    main()
