"""`cityos config show`: every setting, its value and where it came from (flag, env, file,
default), with the credentials of secret settings masked."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import orjson

from cityos.cli.common import fail
from cityos.redact import REDACTED, redact_uri
from cityos.settings import Settings, describe, is_secret, resolve


def register(commands: Any, add_setting_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the config command to the `cityos` parser's subcommands."""
    parser = commands.add_parser(
        "config",
        help="Show the settings a server would run with.",
        description="Precedence: flags > CITYOS_* variables > configuration file (--config, CITYOS_CONFIG) > "
        "defaults (docs/operations.md, Configuration file).",
        epilog="Example: cityos config show --config /etc/cityos.toml",
    )
    actions = parser.add_subparsers(dest="config_action", required=True, metavar="{show}")
    show = actions.add_parser(
        "show",
        help="Print every setting with its value and source (secrets masked); exit 1 on an invalid one.",
        epilog="Example: CITYOS_PORT=8080 cityos config show --config city.toml --json",
    )
    show.add_argument("--json", action="store_true", help="one JSON object: {setting: {value, source}}")
    add_setting_options(show)
    show.set_defaults(run=run_show)


def masked(name: str, value: Any) -> Any:
    """A secret setting's value without its credentials (a URL's password, secret query values)."""
    if not is_secret(name) or not isinstance(value, str) or not value:
        return value
    return redact_uri(value) if "://" in value else REDACTED if "=" in value else value


def run_show(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name, *_ in describe()}
    try:
        found = resolve(config=args.config, overrides=overrides)
        Settings(**{name: value for name, (value, _) in found.items()}).validate()
    except ValueError as exc:
        return fail(str(exc))
    if args.json:
        shown = {name: {"value": masked(name, value), "source": source} for name, (value, source) in found.items()}
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return 0
    width = max(len(name) for name in found)
    for name, (value, source) in found.items():
        print(f"{name:<{width}}  {masked(name, value)!r}  ({source})")
    return 0
