"""`cityos dataspace|partners|offers|agreements ...`: the data channel between cities, managed in
the database (--database, as `cityos serve` uses it; a running server sees changes within a second),
and the signed requests one city makes to a partner (an agreement's negotiation, queries and
subscriptions under it). docs/federation.md has the two-city walkthrough.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cityos.audit.service import StoreAudit
from cityos.cli.common import fail, setting_option
from cityos.cli.identity import OPERATOR
from cityos.dataspace.client import PartnerUnavailable
from cityos.dataspace.service import INBOX, DataspaceService, ensure_key, identity_of, load_key
from cityos.errors import NgsiLdError
from cityos.redact import redact_uri
from cityos.settings import Settings
from cityos.store import open_store

Work = Callable[[DataspaceService, argparse.Namespace], Awaitable[int]]


def _common(parser: argparse.ArgumentParser) -> None:
    setting_option(parser, "--database", "database", "SQLite file or postgresql:// URL")
    parser.add_argument(
        "--allow-private-networks",
        action="store_true",
        default=None,
        help="let requests to partners go to private and loopback addresses (tests, one machine)",
    )


def _run(work: Work) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def run() -> int:
            settings = Settings.from_env(database=args.database)
            store = open_store(
                settings.database, query_timeout=settings.query_timeout, busy_timeout=settings.db_busy_timeout
            )
            await store.open()
            private = bool(args.allow_private_networks or settings.allow_private_networks)
            service = DataspaceService(store, lambda: StoreAudit(store), allow_private_networks=private)
            try:
                await service.refresh(force=True)
                return await work(service, args)
            finally:
                await service.close()
                await store.close()

        try:
            return asyncio.run(run())
        except NgsiLdError as exc:
            return fail(exc.detail or exc.title)
        except (RuntimeError, OSError, ValueError) as exc:
            return fail(f"cannot use {redact_uri(args.database)}: {exc}")

    return command


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- dataspace ------------------------------------------------------------------------------------
async def init(service: DataspaceService, args: argparse.Namespace) -> int:
    doc = await ensure_key(service.store, args.name, args.url, by=OPERATOR.id)
    _print({**identity_of(load_key(doc)), "url": doc.get("url")})
    return 0


async def show(service: DataspaceService, args: argparse.Namespace) -> int:
    doc = await ensure_key(service.store, by=OPERATOR.id)
    if args.public_key:
        print(doc["publicKey"])  # alone: `--public-key "$(cityos dataspace show --public-key)"`
        return 0
    _print({**identity_of(load_key(doc)), "url": doc.get("url")})
    return 0


# -- partners -------------------------------------------------------------------------------------
async def partners_add(service: DataspaceService, args: argparse.Namespace) -> int:
    document = {"name": args.name, "url": args.url, "publicKey": args.public_key}
    _print(await service.add_partner(document, by=OPERATOR.id))
    return 0


async def partners_list(service: DataspaceService, args: argparse.Namespace) -> int:
    _print(sorted(service.partners.values(), key=lambda p: p["name"]))
    return 0


async def partners_remove(service: DataspaceService, args: argparse.Namespace) -> int:
    await service.remove_partner(args.name, by=OPERATOR.id)
    return 0


# -- offers ---------------------------------------------------------------------------------------
async def offers_publish(service: DataspaceService, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    _print(await service.publish(json.loads(text), by=OPERATOR.id))
    return 0


async def offers_list(service: DataspaceService, args: argparse.Namespace) -> int:
    _print(sorted(service.offers.values(), key=lambda o: o["id"]))
    return 0


async def offers_withdraw(service: DataspaceService, args: argparse.Namespace) -> int:
    await service.withdraw(args.offer_id, by=OPERATOR.id)
    return 0


async def catalog(service: DataspaceService, args: argparse.Namespace) -> int:
    partner = service.partner(args.partner)
    answer = await service.client().send(args.partner, "GET", f"{partner['url']}/dsp/catalog")
    return _answer(answer.status, answer.json())


# -- agreements -----------------------------------------------------------------------------------
async def agreements_request(service: DataspaceService, args: argparse.Namespace) -> int:
    doc = await service.negotiate(args.partner, args.offer, args.purpose, by=OPERATOR.id)
    print(doc["id"])  # alone on stdout: scripts capture it
    return 0


async def agreements_list(service: DataspaceService, args: argparse.Namespace) -> int:
    _print([a.doc for a in sorted(service.agreements.values(), key=lambda a: a.id)])
    return 0


async def agreements_show(service: DataspaceService, args: argparse.Namespace) -> int:
    agreement = service.agreements.get(args.agreement_id)
    if agreement is None:
        return fail(f"agreement {args.agreement_id} does not exist")
    _print(agreement.doc)
    return 0


async def agreements_revoke(service: DataspaceService, args: argparse.Namespace) -> int:
    _print(await service.revoke(args.agreement_id, by=OPERATOR.id, reason=args.reason))
    return 0


def _provider(service: DataspaceService, agreement_id: str) -> tuple[str, str, str]:
    """(provider, its base URL, the agreement's purpose) of an agreement this city holds as consumer."""
    agreement = service.agreements.get(agreement_id)
    if agreement is None or agreement.doc.get("role") != "consumer":
        raise PartnerUnavailable(f"this city holds no agreement {agreement_id} as consumer")
    provider = agreement.doc["provider"]
    return provider, service.partner(provider)["url"], agreement.terms["purpose"]


async def agreements_get(service: DataspaceService, args: argparse.Namespace) -> int:
    provider, url, purpose = _provider(service, args.agreement_id)
    answer = await service.client().send(provider, "GET", url + args.path, agreement=args.agreement_id, purpose=purpose)
    return _answer(answer.status, answer.json())


async def agreements_subscribe(service: DataspaceService, args: argparse.Namespace) -> int:
    provider, url, purpose = _provider(service, args.agreement_id)
    if not service.base_url:
        return fail("this city has no URL: run `cityos dataspace init --url ...` first")
    subscription: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": args.type}],
        "notification": {"endpoint": {"uri": f"{service.base_url}{INBOX}{args.agreement_id}"}},
    }
    if args.attrs:
        subscription["notification"]["attributes"] = args.attrs.split(",")
    answer = await service.client().send(
        provider,
        "POST",
        f"{url}/ngsi-ld/v1/subscriptions",
        body=subscription,
        agreement=args.agreement_id,
        purpose=purpose,
    )
    location = answer.headers.get("location", "")
    if answer.status == 201:
        print(location.rsplit("/", 1)[-1])
        return 0
    return _answer(answer.status, answer.json())


async def agreements_source(service: DataspaceService, args: argparse.Namespace) -> int:
    _print(service.source_registration(args.agreement_id))
    return 0


def _answer(status: int, body: Any) -> int:
    _print(body)
    if status >= 400:
        print(f"cityos: the partner answered HTTP {status}", file=sys.stderr)
        return 1
    return 0


def _group(commands: Any, name: str, help_text: str, description: str, example: str) -> Any:
    parser = commands.add_parser(name, help=help_text, description=description, epilog=f"Example: {example}")
    return parser.add_subparsers(dest=f"{name}_verb", required=True)


def _verb(verbs: Any, name: str, help_text: str, example: str, work: Work) -> argparse.ArgumentParser:
    """One subcommand: its help ends with an example; --database and --allow-private-networks."""
    parser: argparse.ArgumentParser = verbs.add_parser(name, help=help_text, epilog=f"Example: {example}")
    _common(parser)
    parser.set_defaults(run=_run(work))
    return parser


def register(commands: Any) -> None:
    verbs = _group(
        commands,
        "dataspace",
        "This city's identity for the data channel between cities (its key pair).",
        "Create or show this city's Ed25519 key pair, its name and its URL (partners need all three).",
        "cityos dataspace init --name Chongqing --url https://data.chongqing.example",
    )
    made = _verb(verbs, "init", "create the key pair (or rename)", "cityos dataspace init --name Singapore", init)
    made.add_argument("--name", required=True, help="this city's name, as its partners will know it")
    made.add_argument("--url", help="the base URL partners reach this city at")
    shown = _verb(verbs, "show", "print the name, public key and URL", "cityos dataspace show --public-key", show)
    shown.add_argument("--public-key", action="store_true", help="print only the public key")

    verbs = _group(
        commands,
        "partners",
        "Trusted partner cities (name, URL, public key).",
        "Manage the partner cities whose signed requests this city accepts.",
        "cityos partners add Singapore --url https://data.singapore.example --public-key ed25519:...",
    )
    add = _verb(verbs, "add", "trust a partner (or change one)", "cityos partners add Singapore ...", partners_add)
    add.add_argument("name")
    add.add_argument("--url", required=True, help="the partner's base URL")
    add.add_argument("--public-key", required=True, help="the partner's key, as `cityos dataspace show` prints it")
    _verb(verbs, "list", "list partners", "cityos partners list", partners_list)
    removed = _verb(verbs, "remove", "stop trusting a partner", "cityos partners remove Singapore", partners_remove)
    removed.add_argument("name")
    browse = _verb(
        verbs, "catalog", "a partner's DCAT catalogue (signed)", "cityos partners catalog Chongqing", catalog
    )
    browse.add_argument("partner")

    verbs = _group(
        commands,
        "offers",
        "Datasets this city offers its partners, with usage terms (ODRL).",
        "Publish, list and withdraw offers (docs/federation.md describes the JSON).",
        "cityos offers publish traffic-offer.json",
    )
    publish = _verb(
        verbs,
        "publish",
        "publish (or replace) an offer from a JSON file (-: stdin)",
        "cityos offers publish offer.json",
        offers_publish,
    )
    publish.add_argument("file")
    _verb(verbs, "list", "list offers", "cityos offers list", offers_list)
    withdrawn = _verb(
        verbs,
        "withdraw",
        "withdraw an offer (agreements made stand)",
        "cityos offers withdraw traffic-flow",
        offers_withdraw,
    )
    withdrawn.add_argument("offer_id")

    verbs = _group(
        commands,
        "agreements",
        "Agreements with partner cities: request, list, revoke, and use them.",
        "Request a partner's offer (both cities sign the agreement), list and revoke agreements, and read"
        " a partner's data under one (signed requests).",
        "cityos agreements request --partner Chongqing --offer traffic-flow --purpose traffic-planning",
    )
    request = _verb(
        verbs,
        "request",
        "ask a partner for an offer; prints the agreement id",
        "cityos agreements request --partner Chongqing --offer traffic-flow --purpose traffic-planning",
        agreements_request,
    )
    request.add_argument("--partner", required=True)
    request.add_argument("--offer", required=True)
    request.add_argument("--purpose", required=True)
    _verb(verbs, "list", "list agreements (both roles)", "cityos agreements list", agreements_list)
    one = _verb(
        verbs, "show", "one agreement with both signatures", "cityos agreements show urn:uuid:...", agreements_show
    )
    one.add_argument("agreement_id")
    revoke = _verb(
        verbs,
        "revoke",
        "end an agreement now (the partner is told)",
        "cityos agreements revoke urn:uuid:...",
        agreements_revoke,
    )
    revoke.add_argument("agreement_id")
    revoke.add_argument("--reason", default="revoked by the operator")
    get = _verb(
        verbs,
        "get",
        "a signed GET of the partner's NGSI-LD API under the agreement",
        "cityos agreements get urn:uuid:... '/ngsi-ld/v1/entities?type=TrafficFlowObserved'",
        agreements_get,
    )
    get.add_argument("agreement_id")
    get.add_argument("path", help="path and query, from /ngsi-ld/v1/...")
    subscribe = _verb(
        verbs,
        "subscribe",
        "subscribe at the partner; it notifies this city's inbox, signed",
        "cityos agreements subscribe urn:uuid:... --type TrafficFlowObserved",
        agreements_subscribe,
    )
    subscribe.add_argument("agreement_id")
    subscribe.add_argument("--type", required=True)
    subscribe.add_argument("--attrs", help="comma-separated attributes to notify")
    source = _verb(
        verbs,
        "source",
        "print the context source registration that forwards this city's queries to the partner",
        "cityos agreements source urn:uuid:... > source.json  # then POST it to /ngsi-ld/v1/csourceRegistrations",
        agreements_source,
    )
    source.add_argument("agreement_id")
