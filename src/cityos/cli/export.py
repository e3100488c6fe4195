"""`cityos export`: a public dataset (docs/open-data.md) written to a file or stdout, streamed as the
download routes stream it (the same code: exports/service.py), so the file equals the download.

The data is the public view: what the access policies give the anonymous caller with --auth required
(the policies stored in the database), less the personal attributes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from cityos.cli.common import fail, setting_option
from cityos.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="Write a public dataset's entities or history as CSV, GeoJSON or Parquet.",
        description="Datasets are declared in the open-data catalogue (--catalog-file, docs/open-data.md). "
        "The file carries the licence and attribution (Parquet metadata, GeoJSON members; a CSV's are in its "
        "CSVW sidecar, written beside it as FILE-metadata.json with --output).",
        epilog="Example: cityos export parking --format parquet --output parking.parquet --database city.db",
    )
    parser.add_argument("dataset", nargs="?", help="dataset id (omit with --list)")
    parser.add_argument("--list", action="store_true", help="print the public datasets' ids and titles")
    parser.add_argument("--format", choices=("csv", "geojson", "parquet"), default="csv", help="[default %(default)s]")
    parser.add_argument("--history", action="store_true", help="export the history (one row per instance)")
    parser.add_argument("--output", "-o", help="file to write (default stdout; Parquet needs a file)")
    setting_option(parser, "--database", "database", "SQLite file or postgresql:// URL")
    setting_option(parser, "--catalog-file", "catalog_file", "the open-data catalogue (TOML; empty: the demo city's)")
    setting_option(
        parser,
        "--auth",
        "auth",
        "as the server runs: with required, only what the stored policies give the anonymous caller",
        choices=("off", "required"),
    )
    setting_option(parser, "--max-rows", "export_max_rows", "refuse a dataset with more entities", type=int)
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cityos.catalog.model import CatalogFileError, load_catalog
    from cityos.errors import NgsiLdError

    if not args.list and not args.dataset:
        return fail("name a dataset, or --list")
    if args.format == "parquet" and not args.output and not args.list:
        return fail("Parquet is binary: give --output FILE")
    try:
        catalog = load_catalog(args.catalog_file, demo=not args.catalog_file)
    except CatalogFileError as exc:
        return fail(str(exc))
    try:
        return asyncio.run(_export(args, catalog))
    except NgsiLdError as exc:
        return fail(exc.detail)
    except OSError as exc:
        return fail(str(exc))


async def _export(args: argparse.Namespace, catalog: Any) -> int:
    from cityos.catalog.public import PublicData
    from cityos.exports.service import Exporter
    from cityos.pipeline import open_pipeline
    from cityos.policy.decision import Authorizer, OpenAuthorizer

    settings = Settings.from_env(database=args.database)
    async with open_pipeline(settings) as pipeline:
        terms = pipeline.contexts.core_terms()
        authorizer: Authorizer = OpenAuthorizer()
        if args.auth == "required":
            from cityos.policy.service import PolicyService

            policies = PolicyService(pipeline.store, terms.expand)
            await policies.reload()
            authorizer = policies.authorizer
        _, rows = await pipeline.store.load_records("offer")  # datasets may stand for the city's offers
        offers = {row.id: row.document for row in rows if row.document is not None}
        public = PublicData(
            pipeline.store, terms, catalog, authorizer=lambda: authorizer, max_rows=args.max_rows, offers=lambda: offers
        )
        if args.list:
            for dataset in public.datasets():
                print(f"{dataset.id}\t{dataset.type}\t{dataset.text(dataset.title)}")
            return 0
        exporter = Exporter(public)
        dataset = public.dataset(args.dataset)
        export = await exporter.export(dataset, "history" if args.history else "entities", args.format)
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115 (closed below)
        try:
            async for chunk in export.chunks:
                out.write(chunk)
        finally:
            if args.output:
                out.close()
            else:
                out.flush()
        if args.output and args.format == "csv" and not args.history:
            import orjson

            meta = await exporter.csvw(dataset, os.path.basename(args.output), columns=export.columns)
            with open(f"{args.output}-metadata.json", "wb") as sidecar:
                sidecar.write(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        return 0
