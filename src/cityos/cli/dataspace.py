"""`cityos dataspace|partners|offers|agreements ...`: the data channel between cities, managed in
the database (--database, as `cityos serve` uses it; a running server sees changes within a second),
and the signed requests one city makes to a partner (an agreement's negotiation, queries and
subscriptions under it). docs/federation.md has the two-city walkthrough.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cityos.audit.service import StoreAudit
from cityos.cli.common import fail
from cityos.cli.identity import OPERATOR
from cityos.dataspace.client import PartnerUnavailable
from cityos.dataspace.service import INBOX, DataspaceService, ensure_key, identity_of, load_key
from cityos.errors import NgsiLdError
from cityos.redact import redact_uri
from cityos.settings import Settings, env_name
from cityos.store import open_store

Work = Callable[[DataspaceService, argparse.Namespace], Awaitable[int]]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=os.environ.get(env_name("database"), Settings().database),
        help=f"SQLite file or postgresql:// URL [env {env_name('database')}, default %(default)s]",
    )
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


def _answer(status: int, body: Any) -> int:
    _print(body)
    if status >= 400:
        print(f"cityos: the partner answered HTTP {status}", file=sys.stderr)
        return 1
    return 0


def register(commands: Any) -> None:
    dataspace = commands.add_parser(
        "dataspace",
        help="This city's identity for the data channel between cities (its key pair).",
        description="Create or show this city's Ed25519 key pair, its name and its URL (partners need all three).",
        epilog="Example: cityos dataspace init --name Chongqing --url https://data.chongqing.example",
    )
    verbs = dataspace.add_subparsers(dest="dataspace_verb", required=True, metavar="{init,show}")
    made = verbs.add_parser(
        "init",
        help="create the key pair (or rename)",
        epilog="Example: cityos dataspace init --name Singapore --url http://127.0.0.1:7711",
    )
    made.add_argument("--name", required=True, help="this city's name, as its partners will know it")
    made.add_argument("--url", help="the base URL partners reach this city at")
    _common(made)
    made.set_defaults(run=_run(init))
    shown = verbs.add_parser("show", help="print the name, public key and URL", epilog="Example: cityos dataspace show")
    shown.add_argument("--public-key", action="store_true", help="print only the public key")
    _common(shown)
    shown.set_defaults(run=_run(show))

    partners = commands.add_parser(
        "partners",
        help="Trusted partner cities (name, URL, public key).",
        description="Manage the partner cities whose signed requests this city accepts.",
        epilog="Example: cityos partners add Singapore --url https://data.singapore.example --public-key ed25519:...",
    )
    verbs = partners.add_subparsers(dest="partners_verb", required=True, metavar="{add,list,remove,catalog}")
    add = verbs.add_parser(
        "add",
        help="trust a partner (or change one)",
        epilog="Example: cityos partners add Singapore --url http://127.0.0.1:7711 --public-key ed25519:...",
    )
    add.add_argument("name")
    add.add_argument("--url", required=True, help="the partner's base URL")
    add.add_argument("--public-key", required=True, help="the partner's key, as its `cityos dataspace show` prints it")
    _common(add)
    add.set_defaults(run=_run(partners_add))
    listing = verbs.add_parser("list", help="list partners", epilog="Example: cityos partners list")
    _common(listing)
    listing.set_defaults(run=_run(partners_list))
    remove = verbs.add_parser(
        "remove", help="stop trusting a partner", epilog="Example: cityos partners remove Singapore"
    )
    remove.add_argument("name")
    _common(remove)
    remove.set_defaults(run=_run(partners_remove))
    browse = verbs.add_parser(
        "catalog",
        help="browse a partner's catalogue (DCAT, signed request)",
        epilog="Example: cityos partners catalog Chongqing",
    )
    browse.add_argument("partner")
    _common(browse)
    browse.set_defaults(run=_run(catalog))

    offers = commands.add_parser(
        "offers",
        help="Datasets this city offers its partners, with usage terms (ODRL).",
        description="Publish, list and withdraw offers (docs/federation.md describes the JSON).",
        epilog="Example: cityos offers publish traffic-offer.json",
    )
    verbs = offers.add_subparsers(dest="offers_verb", required=True, metavar="{publish,list,withdraw}")
    publish = verbs.add_parser(
        "publish",
        help="publish (or replace) an offer from a JSON file (- : stdin)",
        epilog="Example: cityos offers publish offer.json",
    )
    publish.add_argument("file")
    _common(publish)
    publish.set_defaults(run=_run(offers_publish))
    listing = verbs.add_parser("list", help="list offers", epilog="Example: cityos offers list")
    _common(listing)
    listing.set_defaults(run=_run(offers_list))
    withdraw = verbs.add_parser(
        "withdraw",
        help="withdraw an offer (agreements made stand)",
        epilog="Example: cityos offers withdraw traffic-flow",
    )
    withdraw.add_argument("offer_id")
    _common(withdraw)
    withdraw.set_defaults(run=_run(offers_withdraw))

    agreements = commands.add_parser(
        "agreements",
        help="Agreements with partner cities: request, list, revoke, and use them.",
        description="Request a partner's offer (both cities sign the agreement), list and revoke agreements,"
        " and read a partner's data under one (signed requests).",
        epilog="Example: cityos agreements request --partner Chongqing --offer traffic-flow --purpose traffic-planning",
    )
    verbs = agreements.add_subparsers(
        dest="agreements_verb", required=True, metavar="{request,list,show,revoke,get,subscribe}"
    )
    request = verbs.add_parser(
        "request",
        help="ask a partner for one of its offers; prints the agreement id",
        epilog="Example: cityos agreements request --partner Chongqing --offer traffic-flow --purpose traffic-planning",
    )
    request.add_argument("--partner", required=True)
    request.add_argument("--offer", required=True)
    request.add_argument("--purpose", required=True)
    _common(request)
    request.set_defaults(run=_run(agreements_request))
    listing = verbs.add_parser("list", help="list agreements (both roles)", epilog="Example: cityos agreements list")
    _common(listing)
    listing.set_defaults(run=_run(agreements_list))
    shown = verbs.add_parser(
        "show", help="show one agreement with both signatures", epilog="Example: cityos agreements show urn:uuid:..."
    )
    shown.add_argument("agreement_id")
    _common(shown)
    shown.set_defaults(run=_run(agreements_show))
    revoke = verbs.add_parser(
        "revoke",
        help="end an agreement now (the partner is told)",
        epilog="Example: cityos agreements revoke urn:uuid:...",
    )
    revoke.add_argument("agreement_id")
    revoke.add_argument("--reason", default="revoked by the operator")
    _common(revoke)
    revoke.set_defaults(run=_run(agreements_revoke))
    get = verbs.add_parser(
        "get",
        help="a signed GET of the partner's NGSI-LD API under the agreement",
        epilog="Example: cityos agreements get urn:uuid:... '/ngsi-ld/v1/entities?type=TrafficFlowObserved'",
    )
    get.add_argument("agreement_id")
    get.add_argument("path", help="path and query, from /ngsi-ld/v1/...")
    _common(get)
    get.set_defaults(run=_run(agreements_get))
    subscribe = verbs.add_parser(
        "subscribe",
        help="subscribe at the partner; it notifies this city's inbox (signed)",
        epilog="Example: cityos agreements subscribe urn:uuid:... --type TrafficFlowObserved",
    )
    subscribe.add_argument("agreement_id")
    subscribe.add_argument("--type", required=True)
    subscribe.add_argument("--attrs", help="comma-separated attributes to notify")
    _common(subscribe)
    subscribe.set_defaults(run=_run(agreements_subscribe))
