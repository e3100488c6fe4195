"""`cityos rules list`: check and print the alert rules of a directory (docs/indicators.md,
"Alert rules") before a server loads them: a refused file prints its path, line and reason."""

from __future__ import annotations

import argparse
from typing import Any

from cityos.cli.common import fail, setting_option
from cityos.insight.rules import RuleFileError, load_rules


def register(commands: Any) -> None:
    """Add the rules command to the `cityos` parser's subcommands."""
    parser = commands.add_parser(
        "rules",
        help="Check and list alert rules (TOML files of --rules-dir).",
        description="Alert rules are declared in TOML files of --rules-dir; a firing rule writes an Alert entity.",
        epilog="Example: cityos rules list --rules-dir ./rules",
    )
    actions = parser.add_subparsers(dest="rules_action", required=True, metavar="{list}")
    listing = actions.add_parser(
        "list",
        help="Print every rule of the directory (a refused file: its path, line and reason, exit 1).",
        epilog="Example: cityos rules list --rules-dir ./rules",
    )
    setting_option(listing, "--rules-dir", "rules_dir", "directory of *.toml rule files")
    listing.set_defaults(run=run_list)


def run_list(args: argparse.Namespace) -> int:
    if not args.rules_dir:
        return fail("no --rules-dir given")
    try:
        rules = load_rules(args.rules_dir)
    except (RuleFileError, OSError) as exc:
        return fail(str(exc))
    for key in sorted(rules):
        rule = rules[key]
        conditions = f" {rule.mode} ".join(f"{c.attribute} {c.kind}" for c in rule.conditions)
        print(f"{rule.id}\t{rule.type}\t{rule.severity}\t{conditions}" + (f"\tfor {rule.hold:g}s" if rule.hold else ""))
    return 0
