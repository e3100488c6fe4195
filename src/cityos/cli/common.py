"""Option bundles and helpers shared by the data commands (import, demo, iot)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

import httpx

from cityos.ingest.sink import HttpSink, Sink, StoreSink
from cityos.pipeline import open_pipeline
from cityos.settings import CONFIG_VARIABLE, Settings, env_name, resolve

DEFAULT_URL = "http://127.0.0.1:1026"
DEFAULT_NOTIFY_WAIT = 60.0
TOKEN_VARIABLE = "CITYOS_TOKEN"  # a key or token for a broker with --auth required (never a flag:
# a flag's value is visible to every user of the machine in the process list)


def auth_headers() -> dict[str, str]:
    """The Authorization header for commands that call a running broker, from CITYOS_TOKEN."""
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class FromSettings:
    """The default of a data command's option that is also a setting of `cityos serve`: resolved
    when the command runs (settings_defaults), as the server resolves it: CITYOS_* variable >
    configuration file (--config, CITYOS_CONFIG) > the setting's default. A flag given wins."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:  # in the help
        default = Settings.__dataclass_fields__[self.name].default
        return f"env {env_name(self.name)}, else the configuration file, else {default!r}"


def setting_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, name: str, help: str, **kw: Any
) -> None:
    """`flag`, whose default is the setting `name` (FromSettings); the command gets a --config too."""
    parser.add_argument(flag, default=FromSettings(name), help=f"{help} [%(default)s]", **kw)
    owner = getattr(parser, "_container", parser)  # a group's parser holds the options
    if "--config" not in owner._option_string_actions:
        owner.add_argument(
            "--config",
            default=None,
            metavar="FILE",
            help=f"TOML configuration file of `cityos serve`, read for the settings this command takes "
            f"(flags and CITYOS_* variables override it) [env {CONFIG_VARIABLE}]",
        )


def settings_defaults(args: argparse.Namespace) -> None:
    """Replace every FromSettings default left in `args` by its value (ValueError: a bad file)."""
    deferred = {key: value.name for key, value in vars(args).items() if isinstance(value, FromSettings)}
    if deferred:
        found = resolve(config=getattr(args, "config", None))
        for key, name in deferred.items():
            setattr(args, key, found[name][0])


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Where entities go: a database file (in-process), or a running broker (--url)."""
    target = parser.add_argument_group("where to write")
    setting_option(target, "--database", "database", "SQLite file to write into directly")
    target.add_argument(
        "--url",
        help="write to a running broker instead, through its batch API (its subscribers are then notified),"
        " e.g. http://127.0.0.1:1026",
    )
    target.add_argument("--tenant", default="", help="NGSI-LD tenant to write into (default: the default tenant)")
    target.add_argument(
        "--notify-wait",
        type=float,
        default=DEFAULT_NOTIFY_WAIT,
        metavar="SECONDS",
        help="with --database: notifications are delivered while the command writes, and after its last write"
        " for at most this long; what is left stays in the database for `cityos serve` to deliver (0: leave"
        " them all to the server)"
        " [default %(default)s]",
    )


@contextlib.asynccontextmanager
async def open_sink(args: argparse.Namespace) -> AsyncIterator[Sink]:
    """The sink the options name. A database is opened with the server's write pipeline (history,
    subscriptions), and the notifications the command caused are delivered before it closes."""
    if args.url:
        async with httpx.AsyncClient(timeout=120, headers=auth_headers()) as client:
            yield HttpSink(args.url, client)
        return
    settings = Settings.from_env(database=args.database)  # CITYOS_* as for `cityos serve`
    async with open_pipeline(settings, deliver=args.notify_wait > 0) as pipeline:
        yield StoreSink(pipeline.store, pipeline.contexts.core_terms())
        await pipeline.store.refresh_statistics()  # a bulk load: queries should use the indexes at once
        left = await pipeline.drain(args.notify_wait)
        if left:
            print(
                f"cityos: {left} notification(s) not delivered within --notify-wait {args.notify_wait:g} s"
                " are kept in the database; `cityos serve` on it delivers them",
                file=sys.stderr,
            )


class ProgressBar:
    """A one-line progress bar on a terminal (stderr); silent when output is not a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        fraction = min(done / total, 1.0)
        filled = int(fraction * self.width)
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {elapsed:5.1f} s")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def fail(message: str) -> int:
    print(f"cityos: error: {message}", file=sys.stderr)
    return 1
