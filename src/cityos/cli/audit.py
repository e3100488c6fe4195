"""`cityos audit export|verify|pubkey|checkpoint`: the audit trail from the command line.

`verify` works offline, on an export and a public key only: it is what an auditor outside the
city's IT runs, with no access to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from cityos.cli.common import fail, setting_option
from cityos.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="Export, verify and sign the tamper-evident audit trail.",
        description="The hash-chained audit trail (docs/security.md, 'The audit trail').",
        epilog="Example: cityos audit export --database city.db > audit.jsonl && cityos audit pubkey"
        " --database city.db > audit.pub && cityos audit verify audit.jsonl --public-key audit.pub",
    )
    actions = parser.add_subparsers(dest="audit_action", required=True, metavar="{export,verify,pubkey,checkpoint}")
    export = actions.add_parser(
        "export",
        help="Write the records (JSON Lines) with their signed checkpoints, one signed now for the last.",
        epilog="Example: cityos audit export --database city.db --from 2026-01-01 --to 2026-02-01 -o jan.jsonl",
    )
    export.add_argument("--from", dest="since", help="first time included (ISO 8601, UTC if no offset)")
    export.add_argument("--to", dest="until", help="time excluded and after (ISO 8601)")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    export.set_defaults(run=run_export)
    pubkey = actions.add_parser(
        "pubkey",
        help="Print the deployment's public key (PEM), for verifiers.",
        epilog="Example: cityos audit pubkey --database city.db > audit.pub",
    )
    pubkey.set_defaults(run=run_pubkey)
    checkpoint = actions.add_parser(
        "checkpoint", help="Sign a checkpoint of the chain's head now.", epilog="Example: cityos audit checkpoint"
    )
    checkpoint.set_defaults(run=run_checkpoint)
    for command in (export, pubkey, checkpoint):
        setting_option(command, "--database", "database", "SQLite file or postgresql:// URL")
        setting_option(command, "--audit-key", "audit_key", "the signing key's path")
    verify = actions.add_parser(
        "verify",
        help="Check an export offline: every hash, every link, every signature; exit 1 on any problem.",
        epilog="Example: cityos audit verify audit.jsonl --public-key audit.pub",
    )
    verify.add_argument("export", help="the export file (- for standard input)")
    verify.add_argument("--public-key", required=True, help="the PEM file `cityos audit pubkey` printed")
    verify.add_argument(
        "--allow-unsigned-tail",
        action="store_true",
        help="accept records after the last signed checkpoint (an export made without the key)",
    )
    verify.add_argument(
        "--partial",
        action="store_true",
        help="the export is of a time range (--from): it may start inside the chain",
    )
    verify.set_defaults(run=run_verify)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(database=args.database, audit_key=args.audit_key)


async def _with_trail(settings: Settings, action: Any) -> Any:
    from cityos.audit.service import AuditTrail
    from cityos.pipeline import settings_store

    store = settings_store(settings)
    await store.open()
    try:
        return await action(AuditTrail(store, settings))
    finally:
        await store.close()


def run_export(args: argparse.Namespace) -> int:
    try:
        from cityos.audit.service import parse_time

        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as exc:
        return fail(f"--from/--to: {exc}")

    async def export(trail: Any) -> int:
        if trail.existing_key() is None:
            print(
                f"warning: no audit key at {trail.path}: the export ends without a checkpoint signed now"
                " (give --audit-key, the server's key path)",
                file=sys.stderr,
            )
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115 - closed below
        count = 0
        try:
            async for line in trail.export(since, until):
                out.write(line)
                count += 1
        finally:
            if args.output:
                out.close()
            else:
                out.flush()
        return count

    count = asyncio.run(_with_trail(_settings(args), export))
    print(f"exported {count} lines", file=sys.stderr)
    return 0


def run_pubkey(args: argparse.Namespace) -> int:
    from cityos.audit.signing import key_path, load_or_create, public_pem

    settings = _settings(args)
    path = key_path(settings.database, settings.audit_key)
    if not path.exists():
        return fail(f"no audit key at {path}: start the server once (it makes one), or give --audit-key")
    sys.stdout.write(public_pem(load_or_create(path)))
    return 0


def run_checkpoint(args: argparse.Namespace) -> int:
    async def sign(trail: Any) -> Any:
        return await trail.checkpoint()

    checkpoint = asyncio.run(_with_trail(_settings(args), sign))
    if checkpoint is None:
        print("nothing signed: the chain is empty, or there is no key (give --audit-key, the server's key path)")
    else:
        print(f"checkpoint at seq {checkpoint.seq}: {checkpoint.hash}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from cityos.audit.signing import load_public
    from cityos.audit.verify import verify

    try:
        with open(args.public_key, "rb") as key_file:
            public = load_public(key_file.read())
    except (OSError, ValueError) as exc:
        return fail(f"cannot read the public key {args.public_key}: {exc}")
    try:
        if args.export == "-":
            report = verify(
                sys.stdin.buffer, public, allow_unsigned_tail=args.allow_unsigned_tail, partial=args.partial
            )
        else:
            with open(args.export, "rb") as lines:
                report = verify(lines, public, allow_unsigned_tail=args.allow_unsigned_tail, partial=args.partial)
    except OSError as exc:
        return fail(f"cannot read {args.export}: {exc}")
    for problem in report.problems:
        print(f"FAIL {problem}")
    span = f"seq {report.first_seq}-{report.last_seq}" if report.records else "no records"
    partial = " (a partial export: what precedes its first record is not checked)" if report.partial else ""
    verdict = "OK" if report.ok else "TAMPERED"
    print(
        f"{verdict}: {report.records} records ({span}){partial}, {report.checkpoints} checkpoints,"
        f" signed through seq {report.signed_through}"
    )
    return 0 if report.ok else 1
