"""`cityos indicators list|compute|verify`: the indicator engine (docs/indicators.md) from the shell.

compute and verify open the database with the server's write pipeline, so a stored value has its
history and its audit record, and its notifications wait in the outbox for `cityos serve`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

from cityos.cli.common import fail, setting_option
from cityos.insight.model import IndicatorFileError, load_indicators
from cityos.settings import Settings


def register(commands: Any) -> None:
    """Add the indicators command to the `cityos` parser's subcommands."""
    parser = commands.add_parser(
        "indicators",
        help="List, compute and verify city indicators (ISO 37120/37122, U4SSC).",
        description="Indicators are declared in TOML files (the shipped set and --indicators-dir); each value is "
        "stored as a KeyPerformanceIndicator entity with its provenance.",
        epilog="Example: cityos indicators compute pm25-annual-mean --database city.db",
    )
    actions = parser.add_subparsers(dest="indicators_action", required=True, metavar="{list,compute,verify}")
    listing = actions.add_parser(
        "list",
        help="Print every loaded indicator (a refused file: its path, line and reason, exit 1).",
        epilog="Example: cityos indicators list --indicators-dir ./indicators",
    )
    compute = actions.add_parser(
        "compute",
        help="Compute indicators (all, or those named) and store each as a KeyPerformanceIndicator.",
        epilog="Example: cityos indicators compute --database city.db pm25-annual-mean traffic-aadt",
    )
    verify = actions.add_parser(
        "verify",
        help="Recompute stored values from their provenance; exit 1 if one does not match.",
        epilog="Example: cityos indicators verify --database city.db pm25-annual-mean",
    )
    for command, run in ((listing, run_list), (compute, run_compute), (verify, run_verify)):
        setting_option(command, "--indicators-dir", "indicators_dir", "directory of extra *.toml indicator files")
        command.set_defaults(run=run)
    for command in (compute, verify):
        command.add_argument("ids", nargs="*", help="indicator ids (default: every loaded indicator)")
        setting_option(command, "--database", "database", "SQLite file or postgresql:// URL")
        command.add_argument("--tenant", default="", help="NGSI-LD tenant (default: the default tenant)")
        setting_option(command, "--city-profile", "city_profile", "city profile file (population, area)")
        command.add_argument("--demo", action="store_true", help="use the demo city's profile when none is given")
        command.add_argument("--json", action="store_true", help="print one JSON object per indicator")


def run_list(args: argparse.Namespace) -> int:
    try:
        indicators = load_indicators(args.indicators_dir)
    except (IndicatorFileError, OSError) as exc:
        return fail(str(exc))
    for key in sorted(indicators):
        item = indicators[key]
        print(f"{item.id}\t{item.standard} {item.clause}\t{item.unit}\t{item.period}\t{item.formula.text}")
    return 0


def _run(args: argparse.Namespace, action: str) -> int:
    from cityos.insight.http import summary
    from cityos.insight.service import IndicatorService, UnknownIndicator
    from cityos.pipeline import open_pipeline

    async def run() -> int:
        settings = Settings.from_env(database=args.database, indicators_dir=args.indicators_dir)
        async with open_pipeline(settings) as pipeline:
            service = IndicatorService(
                pipeline.store,
                pipeline.contexts.core_terms(),
                directory=args.indicators_dir,
                tenant=args.tenant,
                profile_file=args.city_profile,
                demo=args.demo,
            )
            service.load()
            failed = 0
            for indicator_id in args.ids or sorted(service.indicators):
                if action == "compute":
                    for written in await service.compute_scopes(indicator_id):  # the city, or each district
                        shown = summary(written.result, written.error)
                        failed += written.error is not None
                        where = f" [{shown['district']}]" if "district" in shown else ""
                        text = f"{shown['id']}{where}: {shown['value']} {shown['unit']} ({shown['status']}"
                        text += f", coverage {shown['coverage']:.3f}"
                        text += (f"; {shown['reason']}" if shown["reason"] else "") + ")"
                        text += f" NOT STORED: {written.error}" if written.error else ""
                        print(orjson.dumps(shown).decode() if args.json else text)
                    continue
                else:
                    verdict = await service.verify(indicator_id)
                    shown = {"id": indicator_id, "matches": verdict.matches, "stored": verdict.stored}
                    shown |= {"recomputed": verdict.recomputed, "reason": verdict.reason}
                    failed += not verdict.matches
                    text = f"{indicator_id}: " + ("matches" if verdict.matches else "DIFFERS")
                    text += f" (stored {verdict.stored}, recomputed {verdict.recomputed})"
                    text += f": {verdict.reason}" if verdict.reason else ""
                print(orjson.dumps(shown).decode() if args.json else text)
            return 1 if failed else 0

    try:
        return asyncio.run(run())
    except (IndicatorFileError, OSError) as exc:
        return fail(str(exc))
    except UnknownIndicator as exc:
        return fail(f"no indicator {exc.args[0]} (cityos indicators list)")


def run_compute(args: argparse.Namespace) -> int:
    return _run(args, "compute")


def run_verify(args: argparse.Namespace) -> int:
    return _run(args, "verify")
