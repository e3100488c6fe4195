"""`cityos import gtfs|gtfs-rt|csv` and `cityos demo`: thin layers over cityos.ingest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

from cityos.cli.common import DEFAULT_URL, ProgressBar, add_target_options, fail, open_sink
from cityos.ingest import runs

MAX_PRINTED_ISSUES = 40


def register(commands: Any) -> None:
    """Add the import and demo commands to the `cityos` parser's subcommands."""
    parser = commands.add_parser(
        "import",
        help="Load data: a GTFS feed, a GTFS-Realtime feed, a CSV file.",
        description="Load open data into the broker, through the same validation as the API.",
        epilog="Example: cityos import gtfs feed.zip --database city.db",
    )
    kinds = parser.add_subparsers(dest="import_kind", required=True, metavar="{gtfs,gtfs-rt,csv}")

    gtfs = kinds.add_parser(
        "gtfs",
        help="Validate a GTFS zip and load it as Smart Data Models UrbanMobility entities.",
        description="Validate a GTFS feed; if it has no errors, load agencies, stops, routes, services, "
        "trips, stop times, shapes, frequencies and transfers (GtfsAgency, GtfsStop, GtfsRoute, ...).",
        epilog="Example: cityos import gtfs sample-feed.zip --prefix dta: --database city.db",
    )
    gtfs.add_argument("feed", type=Path, help="the GTFS zip file")
    gtfs.add_argument("--prefix", default="", help="put before every GTFS id in entity ids (to keep feeds apart)")
    gtfs.add_argument("--check", action="store_true", help="only validate the feed; write nothing")
    add_target_options(gtfs)
    gtfs.set_defaults(run=run_gtfs)

    realtime = kinds.add_parser(
        "gtfs-rt",
        help="Apply a GTFS-Realtime feed (vehicle positions, trip updates, alerts), once or polled.",
        description="Read a GTFS-Realtime FeedMessage from a file or an http(s) URL (binary protobuf, or text "
        "format for .asciipb/.textproto files) and apply it as entity updates.",
        epilog="Example: cityos import gtfs-rt https://example.org/vehicle-positions.pb --interval 30",
    )
    realtime.add_argument("source", help="file path or http(s) URL of the feed")
    realtime.add_argument("--interval", type=float, default=0.0, help="poll every N seconds (default: read once)")
    realtime.add_argument("--rounds", type=int, default=None, help="stop after N polls (default: until Ctrl-C)")
    realtime.add_argument("--prefix", default="", help="the --prefix the static feed was imported with")
    add_target_options(realtime)
    realtime.set_defaults(run=run_gtfs_realtime)

    csv = kinds.add_parser(
        "csv",
        help="Load a CSV file through a YAML column mapping; bad rows go to a reject file.",
        description="Map each row of a CSV file to an entity (see the README's 'Ingesting data' section for the "
        "mapping format), load the good rows in batches and write the bad ones, with the reason, to a reject file.",
        epilog="Example: cityos import csv stations.csv --mapping stations.yaml --database city.db",
    )
    csv.add_argument("file", type=Path, help="the CSV file")
    csv.add_argument("--mapping", type=Path, required=True, help="the YAML mapping of columns to attributes")
    csv.add_argument("--rejects", type=Path, help="where rejected rows go (default: FILE.rejects.csv next to FILE)")
    add_target_options(csv)
    csv.set_defaults(run=run_csv)

    demo = commands.add_parser(
        "demo",
        help="Load the demo city: GTFS transit, parking, air quality, weather, streetlights and more.",
        description="Load the demo city shipped with CityOS (Beatty, Nevada): the GTFS Demo Transit Authority "
        "feed, Smart Data Models entities around the same town and a year of real hourly observations.",
        epilog="Example: cityos demo --database city.db && cityos serve --database city.db",
    )
    add_target_options(demo)
    demo.set_defaults(run=run_demo)


def run_gtfs(args: argparse.Namespace) -> int:
    from cityos.ingest import gtfs

    feed: Path = args.feed
    if not feed.is_file():
        return fail(f"{feed} does not exist")
    if args.check:
        tables, issues = gtfs.read_feed(feed)
        if not any(i.severity == "error" for i in issues):
            issues += gtfs.validate(tables)
        _print_issues(issues)
        errors = sum(i.severity == "error" for i in issues)
        print(f"{feed.name}: {errors} error(s), {len(issues) - errors} warning(s)")
        return 1 if errors else 0

    async def run() -> gtfs.GtfsReport:
        bar = ProgressBar(f"Loading {feed.name}")
        try:
            async with open_sink(args) as sink:
                record = runs.new_run("gtfs", feed.name, args.tenant)
                await runs.save(sink, record)
                try:
                    report = await gtfs.import_feed(feed, sink, args.tenant, prefix=args.prefix, progress=bar)
                except gtfs.GtfsError as exc:
                    errors = [("", str(i)) for i in exc.issues if i.severity == "error"]
                    await runs.save(
                        sink, runs.finish(record, stored=0, rejects=errors, failed=True, message="not imported")
                    )
                    raise
                failures = [runs.split_failure(f) for f in report.failed]
                summary = f"{report.written} entities loaded"
                await runs.save(sink, runs.finish(record, stored=report.written, rejects=failures, message=summary))
                return report
        finally:
            bar.close()

    try:
        report = asyncio.run(run())
    except gtfs.GtfsError as exc:
        _print_issues(exc.issues)
        errors = sum(i.severity == "error" for i in exc.issues)
        return fail(f"{feed.name} was not imported: it has {errors} error(s) (listed above); nothing was written")
    _print_issues(report.issues)
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(report.counts.items()))
    print(f"{feed.name}: {report.written} entities loaded ({counts})")
    for failure in report.failed[:MAX_PRINTED_ISSUES]:
        print(f"  refused: {failure}")
    return 1 if report.failed else 0


def _print_issues(issues: list[Any]) -> None:
    for issue in issues[:MAX_PRINTED_ISSUES]:
        print(f"  {issue}")
    if len(issues) > MAX_PRINTED_ISSUES:
        print(f"  ... and {len(issues) - MAX_PRINTED_ISSUES} more")


def run_gtfs_realtime(args: argparse.Namespace) -> int:
    from cityos.ingest import gtfs_realtime

    failures = 0

    record = runs.new_run("gtfs-rt", args.source, args.tenant)  # one run, counted round by round
    rounds_done: list[Any] = []

    def report(outcome: gtfs_realtime.RealtimeReport | gtfs_realtime.RealtimeError) -> None:
        nonlocal failures
        rounds_done.append(outcome)
        if isinstance(outcome, gtfs_realtime.RealtimeError):
            failures += 1
            print(f"{args.source}: {outcome}")
            runs.add_round(record, stored=0, rejects=[("feed", str(outcome))])
        else:
            failures += bool(outcome.failed)
            print(f"{args.source}: {outcome.summary()}")
            for failure in outcome.failed[:MAX_PRINTED_ISSUES]:
                print(f"  refused: {failure}")
            stored = outcome.vehicles + outcome.trip_updates + outcome.alerts
            runs.add_round(record, stored=stored, rejects=[runs.split_failure(f) for f in outcome.failed])

    async def run() -> None:
        async with open_sink(args) as sink:
            await runs.save(sink, record)
            rounds = args.rounds if args.interval > 0 else 1
            try:
                await gtfs_realtime.poll(
                    args.source,
                    sink,
                    args.tenant,
                    interval=args.interval,
                    prefix=args.prefix,
                    rounds=rounds,
                    on_round=report,
                )
            finally:
                kept = [(r["where"], r["reason"]) for r in record.rejects]
                message = f"{len(rounds_done)} round(s)"
                ended = runs.finish(
                    record, stored=record.stored, rejects=kept, rejected=record.rejected, message=message
                )
                await runs.save(sink, ended)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends polling
        asyncio.run(run())
    return 1 if failures else 0


def run_csv(args: argparse.Namespace) -> int:
    from cityos.ingest import csv_import

    source: Path = args.file
    if not source.is_file():
        return fail(f"{source} does not exist")
    try:
        mapping = csv_import.load_mapping(args.mapping)
    except csv_import.MappingError as exc:
        return fail(str(exc))
    rejects = args.rejects or source.with_name(source.stem + ".rejects.csv")

    async def run() -> csv_import.CsvReport:
        bar = ProgressBar(f"Loading {source.name}")
        try:
            async with open_sink(args) as sink:
                record = runs.new_run("csv", source.name, args.tenant)
                await runs.save(sink, record)
                try:
                    report = await csv_import.import_csv(
                        source, mapping, sink, args.tenant, rejects_path=rejects, progress=bar
                    )
                except (csv_import.MappingError, ValueError, OSError) as exc:
                    await runs.save(sink, runs.finish(record, stored=0, failed=True, message=str(exc)))
                    raise
                examples = [(f"line {line}", reason) for line, reason in report.examples]
                ended = runs.finish(
                    record, stored=report.loaded, rejects=examples, rejected=report.rejected, message=report.summary()
                )
                await runs.save(sink, ended)
                return report
        finally:
            bar.close()

    try:
        report = asyncio.run(run())
    except (csv_import.MappingError, ValueError, OSError) as exc:  # OSError: e.g. the reject file
        return fail(str(exc))
    print(f"{source.name}: {report.summary()}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from cityos.ingest.demo import DemoReport, load_demo

    async def run() -> DemoReport:
        async with open_sink(args) as sink:
            record = runs.new_run("demo", "the demo city", args.tenant)
            await runs.save(sink, record)
            report = await load_demo(sink, args.tenant, history_sink=sink)
            await runs.save(sink, runs.demo_finished(record, report))
            return report

    report = asyncio.run(run())
    for line in report.lines(args.url or DEFAULT_URL):
        print(line)
    if not args.url:
        print(f"(loaded into {args.database}: serve it with `cityos serve --database {args.database}`)")
    return 1 if report.failed else 0
