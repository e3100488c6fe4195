"""The `cityos` command: a thin layer over the Python API.

cityos serve --port 1026 --database city.db
cityos import gtfs|gtfs-rt|csv ...   cityos demo   cityos iot group|device|provision ...
cityos db upgrade|status --database postgresql://...
cityos --version
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from cityos import __version__
from cityos.cli import db, imports, iot
from cityos.cli.common import fail
from cityos.settings import Settings, describe, env_name
from cityos.store import is_postgres, open_store


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for name, flag, env, default, help_text in describe():
        if isinstance(default, bool):
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} [env {env}, default {default}]",
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=type(default),
                default=None,
                metavar=name.upper(),
                help=f"{help_text} [env {env}, default {default!r}]",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityos",
        description="CityOS: an open smart-city data platform (ETSI NGSI-LD context broker).",
        epilog="Example: cityos serve --port 1026 --database city.db",
    )
    parser.add_argument("--version", action="version", version=f"cityos {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser(
        "serve",
        help="Serve the NGSI-LD API.",
        description="Serve the NGSI-LD API. Every option can also be set with its CITYOS_* variable.",
        epilog="Example: cityos serve --host 127.0.0.1 --port 1026 --database city.db",
    )
    _add_setting_options(serve)
    for module in (imports, iot, db):  # each command group registers its own subcommands
        module.register(commands)
    return parser


def serve(settings: Settings) -> int:
    import uvicorn

    from cityos.logs import configure as configure_logging

    configure_logging(settings.log_level)  # one line per record, control characters escaped
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "access_log": settings.log_level.lower() == "debug",
        "server_header": False,
        "lifespan": "on",
    }
    if is_postgres(settings.database):
        problem = _prepare_postgres(settings)
        if problem is not None:
            return fail(problem)
    if settings.workers > 1:
        # worker processes rebuild their settings from the environment; the demo is loaded once, above
        for name, _flag, env, _default, _help in describe():
            os.environ[env] = str(getattr(settings, name))
        os.environ[env_name("demo_on_empty")] = "false"
        uvicorn.run("cityos.app:app_from_env", factory=True, workers=settings.workers, **common)
    else:
        from cityos.app import create_app

        uvicorn.run(create_app(settings), **common)
    return 0


def _prepare_postgres(settings: Settings) -> str | None:
    """Before any worker starts: refuse an unmigrated (or unreachable) database with one clear
    line, and with several workers load the demo city here, once, instead of in each of them."""
    from cityos.app import create_app
    from cityos.store.postgres import SchemaNotCurrent, redact

    async def check() -> None:
        if settings.workers > 1 and settings.demo_on_empty:
            app = create_app(settings)
            async with app.router.lifespan_context(app):  # the whole start-up, demo included, then stop
                return
        store = open_store(settings.database, query_timeout=settings.query_timeout)
        await store.open()
        await store.close()

    try:
        asyncio.run(check())
    except SchemaNotCurrent as exc:
        return str(exc)
    except (OSError, TimeoutError) as exc:
        return f"cannot reach {redact(settings.database)}: {exc}"
    except Exception as exc:  # driver errors (authentication, missing database, ...): one line, no traceback
        return f"cannot use {redact(settings.database)}: {type(exc).__name__}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    if args.command == "serve":
        overrides = {name: getattr(args, name) for name, *_ in describe()}
        try:
            settings = Settings.from_env(**overrides)
        except ValueError as exc:
            parser.error(str(exc))
        return serve(settings)
    if hasattr(args, "run"):
        result: int = args.run(args)
        return result
    parser.print_help()
    return 2


__all__ = ["env_name", "main"]
