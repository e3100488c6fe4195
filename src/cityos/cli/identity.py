"""`cityos keys create|list|revoke` and `cityos users create|list|delete|passwd`: manage API keys and
local users directly in the database (--database, as `cityos serve` uses it). A running server sees a
revoke within a second (at once on PostgreSQL). `cityos keys create --role admin` bootstraps the
first admin. A key's token is printed once, alone on stdout, so scripts can capture it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cityos.audit.service import StoreAudit
from cityos.auth.credentials import Credentials, public_view
from cityos.auth.hashing import parse_expiry
from cityos.auth.principal import ADMIN_ROLE, Principal
from cityos.cli.common import fail, setting_option
from cityos.errors import NgsiLdError
from cityos.redact import redact_uri
from cityos.settings import Settings
from cityos.store import open_store

T = TypeVar("T")
# who acts from the command line: the operator with access to the database itself
OPERATOR = Principal(id="cli", kind="cli", tenants=None, roles=frozenset({ADMIN_ROLE}))


def _database(parser: argparse.ArgumentParser) -> None:
    setting_option(parser, "--database", "database", "SQLite file or postgresql:// URL")


def _scope_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant",
        action="append",
        metavar="TENANT",
        help="a tenant it is valid for (repeatable; @default: the default tenant; * every tenant)."
        " Default: every tenant for role admin, else the default tenant",
    )
    parser.add_argument("--role", action="append", default=[], help="a role (repeatable): admin, device, ...")
    parser.add_argument("--group", action="append", default=[], help="a group (repeatable), for policies")


def register(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="Create, list and revoke API keys.",
        description="Manage API keys in the database. The token (`<key id>.<secret>`) is printed once;"
        " only its argon2id hash is stored.",
        epilog="Example: cityos keys create --name ops --role admin --database city.db",
    )
    verbs = keys.add_subparsers(dest="keys_verb", required=True, metavar="{create,list,revoke}")
    create = verbs.add_parser(
        "create",
        help="create a key; prints its token once",
        epilog="Example: cityos keys create --name parking-sensors --role device --tenant parking --expires 365d",
    )
    create.add_argument("--name", required=True, help="what the key is for (shown in listings and audit)")
    _scope_options(create)
    create.add_argument("--expires", help="a duration (90d, 12h) or an ISO 8601 time; default: never")
    _database(create)
    create.set_defaults(run=keys_create)
    listing = verbs.add_parser(
        "list", help="list keys (ids and scopes, never secrets)", epilog="Example: cityos keys list"
    )
    _database(listing)
    listing.set_defaults(run=keys_list)
    revoke = verbs.add_parser("revoke", help="revoke a key at once", epilog="Example: cityos keys revoke ck_0123...")
    revoke.add_argument("key_id")
    _database(revoke)
    revoke.set_defaults(run=keys_revoke)

    users = commands.add_parser(
        "users",
        help="Create, list and delete local users (embedded mode).",
        description="Manage local users in the database; passwords are stored as argon2id hashes. A user logs"
        " in with HTTP Basic, or gets a short-lived token from POST /cityos/v1/auth/token.",
        epilog="Example: cityos users create alice --role admin --database city.db",
    )
    verbs = users.add_subparsers(dest="users_verb", required=True, metavar="{create,list,delete,passwd}")
    create = verbs.add_parser("create", help="create a user", epilog="Example: cityos users create alice --role reader")
    create.add_argument("name")
    _scope_options(create)
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (else: prompt)"
    )
    _database(create)
    create.set_defaults(run=users_create)
    listing = verbs.add_parser("list", help="list users", epilog="Example: cityos users list")
    _database(listing)
    listing.set_defaults(run=users_list)
    delete = verbs.add_parser(
        "delete", help="delete a user and its tokens", epilog="Example: cityos users delete alice"
    )
    delete.add_argument("name")
    _database(delete)
    delete.set_defaults(run=users_delete)
    passwd = verbs.add_parser("passwd", help="set a new password", epilog="Example: cityos users passwd alice")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _database(passwd)
    passwd.set_defaults(run=users_passwd)


def _with_credentials(args: argparse.Namespace, work: Callable[[Credentials], Awaitable[T]]) -> T:
    async def run() -> T:
        settings = Settings.from_env(database=args.database)
        store = open_store(
            settings.database, query_timeout=settings.query_timeout, busy_timeout=settings.db_busy_timeout
        )
        await store.open()
        try:
            # the operator's changes are audited like the admin API's (actor "cli")
            return await work(Credentials(store, lambda: StoreAudit(store)))
        finally:
            await store.close()

    return asyncio.run(run())


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except NgsiLdError as exc:
            return fail(exc.detail or exc.title)
        except ValueError as exc:
            return fail(str(exc))
        except (RuntimeError, OSError) as exc:  # an unmigrated or unreachable database: one line
            return fail(f"cannot use {redact_uri(args.database)}: {exc}")

    return run


def _show(rows: list[dict[str, Any]]) -> None:
    for view in rows:
        tenants = "*" if view["tenants"] is None else ",".join(t or "@default" for t in view["tenants"])
        print(
            f"{view['id']}\t{view['name']}\t{view['status']}\troles={','.join(view['roles'])}"
            f"\ttenants={tenants}\tgroups={','.join(view['groups'])}\texpires={view['expiresAt'] or 'never'}"
        )


@_guarded
def keys_create(args: argparse.Namespace) -> int:
    expires = parse_expiry(args.expires) if args.expires else None
    issued = _with_credentials(
        args,
        lambda c: c.create_key(
            OPERATOR, name=args.name, tenants=args.tenant, roles=args.role, groups=args.group, expires_at=expires
        ),
    )
    print(issued.token)
    print(f"created key {issued.row.id} ({issued.row.name}); the token above is shown only this once", file=sys.stderr)
    return 0


@_guarded
def keys_list(args: argparse.Namespace) -> int:
    rows = _with_credentials(args, lambda c: c.list_keys(OPERATOR))
    _show([public_view(row, time.time()) for row in rows])
    return 0


@_guarded
def keys_revoke(args: argparse.Namespace) -> int:
    _with_credentials(args, lambda c: c.revoke_key(OPERATOR, args.key_id))
    print(f"revoked key {args.key_id}", file=sys.stderr)
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


@_guarded
def users_create(args: argparse.Namespace) -> int:
    password = _password(args)
    _with_credentials(
        args,
        lambda c: c.create_user(
            OPERATOR, name=args.name, password=password, tenants=args.tenant, roles=args.role, groups=args.group
        ),
    )
    print(f"created user {args.name}", file=sys.stderr)
    return 0


@_guarded
def users_list(args: argparse.Namespace) -> int:
    rows = _with_credentials(args, lambda c: c.list_users(OPERATOR))
    _show([public_view(row, time.time()) for row in rows])
    return 0


@_guarded
def users_delete(args: argparse.Namespace) -> int:
    _with_credentials(args, lambda c: c.delete_user(OPERATOR, args.name))
    print(f"deleted user {args.name}", file=sys.stderr)
    return 0


@_guarded
def users_passwd(args: argparse.Namespace) -> int:
    password = _password(args)
    _with_credentials(args, lambda c: c.set_password(OPERATOR, args.name, password))
    print(f"changed the password of {args.name}", file=sys.stderr)
    return 0
