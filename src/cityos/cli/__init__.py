"""The `cityos` command: a thin layer over the Python API.

cityos serve --port 1026 --database city.db
cityos import gtfs|gtfs-rt|csv ...   cityos demo   cityos iot group|device|provision ...
cityos db upgrade|status --database city.db|postgresql://...
cityos backup PATH   cityos backup --verify PATH   cityos restore PATH
cityos keys create|list|revoke   cityos users create|list|delete|passwd
cityos audit export|verify|pubkey|checkpoint
cityos dataspace init|show   cityos partners|offers|agreements ...
cityos indicators list|compute|verify   cityos rules list
cityos config show [--config city.toml]
cityos export DATASET --format csv|geojson|parquet [--history]
cityos --version
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cityos import __version__
from cityos.auth.ratelimit import RATE_TABLE_VARIABLE, shared_table
from cityos.cli import audit, backup, config, dataspace, db, export, identity, imports, indicators, iot, rules
from cityos.cli.common import fail, settings_defaults
from cityos.errors import DatabaseBusy
from cityos.settings import CONFIG_VARIABLE, Settings, describe, env_name
from cityos.store import is_postgres, open_store

if TYPE_CHECKING:
    from cityos.serving.interrupts import Interrupts

INTERRUPTED = 130
"""The exit code of a start stopped by Ctrl-C (128 + SIGINT), as shells give it."""


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"TOML configuration file holding any of the settings below (flags and CITYOS_* variables "
        f"override it; docs/operations.md) [env {CONFIG_VARIABLE}]",
    )
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
    # each command group registers its own subcommands
    for module in (imports, iot, db, backup, identity, audit, dataspace, indicators, rules, export):
        module.register(commands)
    config.register(commands, _add_setting_options)
    return parser


def serve(settings: Settings) -> int:
    from cityos.serving.interrupts import Interrupts

    interrupts = Interrupts()  # a Ctrl-C from here on is never lost (serving/interrupts.py)
    interrupts.install()
    try:
        return _serve(settings, interrupts)
    finally:
        interrupts.uninstall()


def _serve(settings: Settings, interrupts: Interrupts) -> int:
    import uvicorn

    from cityos.logs import configure as configure_logging

    problem = _cannot_serve(settings)  # before anything is loaded or created
    if problem is not None:
        return fail(problem)
    configure_logging(settings.log_level, settings.log_format)  # one line per record, control characters escaped
    debug = settings.log_level.lower() == "debug"
    if not debug:  # httpx logs every request it sends (each notification) at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    from cityos import serving

    settings = dataclasses.replace(  # the cap must fit the open-file limit, raised to its maximum
        settings, max_connections=serving.raise_open_file_limit(settings.max_connections)
    )
    serving.configure(serving.limits_from(settings))
    common: dict[str, Any] = {
        "http": serving.GuardedHttpToolsProtocol,  # head and body timeouts, connection cap (docs/security.md)
        "timeout_keep_alive": settings.keep_alive_timeout,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "access_log": False,  # --access-log: the application's own line (observe/access.py)
        "server_header": False,
        "lifespan": "on",
    }
    if settings.log_format == "json":  # uvicorn's own lines through the root handler: JSON too
        common["log_config"] = None
    if is_postgres(settings.database):
        problem = _prepare_postgres(settings, interrupts)
        if interrupts.seen:
            return INTERRUPTED
        if problem is not None:
            return fail(problem)
    if settings.demo_on_empty:
        loaded, problem, citizen_key = _load_demo_first(settings, interrupts)
        if interrupts.seen:
            if loaded:
                fail("stopped (Ctrl-C) once the demo city was loaded; the next start serves it")
            else:
                fail("stopped while loading the demo city; the next start removes what was loaded and loads it again")
            return INTERRUPTED
        if problem is not None:
            return fail(problem)
        # the demo city's open-data catalogue stays served (catalog/model.py), unless another is named
        from cityos.catalog.model import demo_catalog_path

        settings = dataclasses.replace(
            settings,
            demo_on_empty=False,
            catalog_file=settings.catalog_file or demo_catalog_path(),
            citizen_open311_key=citizen_key,  # made once here, shared by every worker
        )
    if settings.workers > 1:
        # worker processes rebuild their settings from the environment
        for name, _flag, env, _default, _help in describe():
            os.environ[env] = str(getattr(settings, name))
        with contextlib.ExitStack() as stack:
            if settings.metrics:  # the workers' metrics, added up at a scrape (observe/metrics.py)
                _multiprocess_metrics(settings, stack)
            # one bucket per caller for all workers (the door's, and Open311's per api_key)
            if (settings.auth == "required" and settings.rate_limit > 0) or settings.open311_rate_limit > 0:
                os.environ[RATE_TABLE_VARIABLE] = str(stack.enter_context(shared_table()))
            return interrupts.serve(
                uvicorn.Config("cityos.app:app_from_env", factory=True, workers=settings.workers, **common)
            )
    from cityos.app import create_app
    from cityos.serving import collector

    app = create_app(settings)
    collector.tune()
    return interrupts.serve(uvicorn.Config(app, **common))


def _multiprocess_metrics(settings: Settings, stack: contextlib.ExitStack) -> None:
    """A fresh directory for prometheus-client's multiprocess files, named to the workers by
    PROMETHEUS_MULTIPROC_DIR (read when they import it), removed at exit; with --metrics-port the
    supervisor serves the sums."""
    import shutil
    import tempfile

    from cityos.observe.metrics import MULTIPROC_VARIABLE

    directory = tempfile.mkdtemp(prefix="cityos-metrics-")
    stack.callback(shutil.rmtree, directory, True)
    os.environ[MULTIPROC_VARIABLE] = directory
    if settings.metrics_port:
        from cityos.observe.http import supervisor_endpoint

        server = supervisor_endpoint(directory, settings.metrics_host, settings.metrics_port)
        stack.callback(server.shutdown)


def _cannot_serve(settings: Settings) -> str | None:
    """Why the server could not start, found before it loads anything: the port is taken, or the
    SQLite file would go in a folder that does not exist."""
    if settings.auth == "off" and not settings.insecure_open and not _loopback(settings.host):
        return (
            f"--auth off on {settings.host} would let anyone on the network read and change everything: use"
            " --auth required (create the first admin with `cityos keys create --name admin --role admin`),"
            " or --insecure-open if that is really meant (docs/security.md)"
        )
    if not is_postgres(settings.database):
        folder = Path(settings.database).expanduser().absolute().parent
        if not folder.is_dir():
            return f"cannot create the database {settings.database}: the folder {folder} does not exist"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        return f"cannot listen on {settings.host}: {exc}; choose another --host"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {settings.port} on {settings.host} is already in use; choose another with --port"
            return f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}; choose another --port or --host"
    return None


def _loopback(host: str) -> bool:
    """Whether --host reaches only this machine (a name other than localhost counts as not)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load_demo_first(settings: Settings, interrupts: Interrupts) -> tuple[bool, str | None, str]:
    """Start the application once, without serving, so the demo city is loaded before the port
    opens: Ctrl-C stops the load at once (its task is cancelled), and the load is done one time
    even with several workers. Whether it was loaded, the problem that stopped it, and the
    citizens' page's Open311 key (the one configured, or the one made for the demo)."""
    from cityos.app import create_app

    started: list[bool] = []  # the start-up, the load included, completed (its stop may still be cut)
    page_key: list[str] = []  # the citizens' page's Open311 key the start made (citizen/page_key.py)

    async def start_once() -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            started.append(True)
            page_key.append(app.state.open311.page_key)

    try:
        interrupts.run(start_once)
    except DatabaseBusy as exc:
        return False, exc.detail, ""
    return bool(started), None, page_key[0] if page_key else ""


def _prepare_postgres(settings: Settings, interrupts: Interrupts) -> str | None:
    """Before any worker starts: refuse an unmigrated (or unreachable) database with one clear line."""
    from cityos.store.postgres import SchemaNotCurrent, redact

    async def check() -> None:
        store = open_store(settings.database, query_timeout=settings.query_timeout)
        await store.open()
        await store.close()

    try:
        interrupts.run(check)
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
            settings = Settings.from_env(config=args.config, **overrides)
        except ValueError as exc:
            parser.error(str(exc))
        return serve(settings)
    if hasattr(args, "run"):
        try:
            settings_defaults(args)  # --database and the like: env > configuration file > default
        except ValueError as exc:
            parser.error(str(exc))
        try:
            result: int = args.run(args)
        except DatabaseBusy as exc:  # another process holds the database: one line, no traceback
            return fail(f"{exc.detail}; try again when it is free, or wait longer with {env_name('db_busy_timeout')}")
        return result
    parser.print_help()
    return 2


__all__ = ["env_name", "main"]
