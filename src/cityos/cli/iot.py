"""`cityos iot`: provision IoT Agent service groups and devices on a running broker.

A thin client of the provisioning REST API (/iot/services, /iot/devices), so the serving process,
which keeps the registry in memory, always knows what was provisioned.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

from cityos.cli.common import DEFAULT_URL, auth_headers, fail


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="the running broker (default %(default)s)")
    parser.add_argument("--tenant", default="", help="the service (NGSI-LD tenant); default: the default tenant")
    parser.add_argument("--service-path", default="/", help="the FIWARE service path, kept with the record")


def _mapping_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="OBJECT_ID=NAME[:TYPE[:UNIT]]",
        help="map a measure to an attribute, e.g. t=temperature:Number:CEL (repeatable)",
    )
    parser.add_argument(
        "--static",
        action="append",
        default=[],
        metavar="NAME[:TYPE]=VALUE",
        help="an attribute written with every measure, e.g. refBuilding:Relationship=urn:ngsi-ld:Building:1",
    )
    parser.add_argument("--protocol", choices=("ul", "json"), help="payload format (default: detected)")


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "iot",
        help="Provision IoT Agent service groups and devices on a running broker.",
        description="Manage the IoT Agent's service groups (API keys) and devices through the broker's /iot API.",
        epilog="Example: cityos iot group add 4jggokgp --entity-type WeatherObserved --attr t=temperature:Number:CEL",
    )
    nouns = parser.add_subparsers(dest="iot_noun", required=True, metavar="{group,device,provision}")

    group = nouns.add_parser("group", help="service groups: an API key, a default entity type, mappings")
    group_verbs = group.add_subparsers(dest="verb", required=True, metavar="{add,list,delete}")
    add = group_verbs.add_parser(
        "add",
        help="create a service group",
        epilog="Example: cityos iot group add 4jggokgp --entity-type AirQualityObserved --attr n=no2:Number:GQ",
    )
    add.add_argument("apikey")
    add.add_argument("--entity-type", required=True, help="entity type of the group's devices")
    add.add_argument("--resource", default="/iot/d", help="HTTP resource (/iot/d for UltraLight, /iot/json)")
    add.add_argument("--no-autoprovision", action="store_true", help="refuse measures from unprovisioned devices")
    _mapping_options(add)
    _server_options(add)
    add.set_defaults(run=group_add)
    listing = group_verbs.add_parser("list", help="list service groups", epilog="Example: cityos iot group list")
    _server_options(listing)
    listing.set_defaults(run=lambda args: _show(_call(args, "GET", "/iot/services")))
    delete = group_verbs.add_parser(
        "delete", help="delete a service group", epilog="Example: cityos iot group delete K"
    )
    delete.add_argument("apikey")
    _server_options(delete)
    delete.set_defaults(
        run=lambda args: _show(_call(args, "DELETE", "/iot/services", params={"apikey": args.apikey}), "deleted")
    )

    device = nouns.add_parser("device", help="devices: a device id bound to an entity")
    device_verbs = device.add_subparsers(dest="verb", required=True, metavar="{add,list,show,delete}")
    add = device_verbs.add_parser(
        "add",
        help="provision a device",
        epilog="Example: cityos iot device add sensor-1 --apikey 4jggokgp --entity-id urn:ngsi-ld:WeatherObserved:s1",
    )
    add.add_argument("device_id")
    add.add_argument("--apikey", help="its service group's API key (default: the tenant's only group)")
    add.add_argument("--entity-id", help="the entity it updates (default urn:ngsi-ld:TYPE:DEVICE_ID)")
    add.add_argument("--entity-type", help="the entity's type (default: the group's)")
    add.add_argument("--transport", choices=("MQTT", "HTTP"), help="how it sends measures")
    _mapping_options(add)
    _server_options(add)
    add.set_defaults(run=device_add)
    listing = device_verbs.add_parser("list", help="list devices", epilog="Example: cityos iot device list")
    _server_options(listing)
    listing.set_defaults(run=lambda args: _show(_call(args, "GET", "/iot/devices")))
    for verb, method in (("show", "GET"), ("delete", "DELETE")):
        command = device_verbs.add_parser(
            verb, help=f"{verb} one device", epilog=f"Example: cityos iot device {verb} s1"
        )
        command.add_argument("device_id")
        _server_options(command)
        command.set_defaults(
            run=lambda args, m=method: _show(_call(args, m, f"/iot/devices/{args.device_id}"), "deleted")
        )

    provision = nouns.add_parser(
        "provision",
        help='send a FIWARE provisioning file ({"services": [...]} and/or {"devices": [...]})',
        epilog="Example: cityos iot provision devices.json",
    )
    provision.add_argument("file", type=Path)
    _server_options(provision)
    provision.set_defaults(run=provision_file)


def _mappings(values: list[str]) -> list[dict[str, Any]]:
    out = []
    for value in values:
        object_id, sep, rest = value.partition("=")
        if not sep or not object_id:
            raise ValueError(f"--attr {value!r}: write OBJECT_ID=NAME[:TYPE[:UNIT]]")
        name, _, kind_unit = rest.partition(":")
        kind, _, unit = kind_unit.partition(":")
        item: dict[str, Any] = {"object_id": object_id, "name": name or object_id, "type": kind or "Property"}
        if unit:
            item["metadata"] = {"unitCode": {"type": "Text", "value": unit}}
        out.append(item)
    return out


def _statics(values: list[str]) -> list[dict[str, Any]]:
    out = []
    for value in values:
        left, sep, raw = value.partition("=")
        if not sep or not left:
            raise ValueError(f"--static {value!r}: write NAME[:TYPE]=VALUE")
        name, _, kind = left.partition(":")
        out.append({"name": name, "type": kind or "Property", "value": raw})
    return out


def _common(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"attributes": _mappings(args.attr), "static_attributes": _statics(args.static)}
    if args.protocol:
        body["protocol"] = args.protocol
    return body


def group_add(args: argparse.Namespace) -> int:
    try:
        group = {"apikey": args.apikey, "entity_type": args.entity_type, "resource": args.resource, **_common(args)}
    except ValueError as exc:
        return fail(str(exc))
    group["autoprovision"] = not args.no_autoprovision
    return _show(
        _call(args, "POST", "/iot/services", body={"services": [group]}), f"service group {args.apikey} created"
    )


def device_add(args: argparse.Namespace) -> int:
    try:
        device: dict[str, Any] = {"device_id": args.device_id, **_common(args)}
    except ValueError as exc:
        return fail(str(exc))
    for key, value in (("apikey", args.apikey), ("entity_name", args.entity_id), ("entity_type", args.entity_type)):
        if value:
            device[key] = value
    if args.transport:
        device["transport"] = args.transport
    return _show(
        _call(args, "POST", "/iot/devices", body={"devices": [device]}), f"device {args.device_id} provisioned"
    )


def provision_file(args: argparse.Namespace) -> int:
    try:
        document = json.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return fail(f"cannot read {args.file}: {exc}")
    if not isinstance(document, dict) or not ({"services", "devices"} & document.keys()):
        return fail(f'{args.file} must hold {{"services": [...]}} and/or {{"devices": [...]}}')
    for key, path in (("services", "/iot/services"), ("devices", "/iot/devices")):
        if key in document:
            result = _show(_call(args, "POST", path, body={key: document[key]}), f"{len(document[key])} {key} created")
            if result:
                return result
    return 0


def _call(
    args: argparse.Namespace, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
) -> httpx.Response | str:
    headers = {"fiware-servicepath": args.service_path, **auth_headers()}
    if args.tenant:
        headers["fiware-service"] = args.tenant
    try:
        return httpx.request(method, args.url.rstrip("/") + path, json=body, params=params, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        return f"cannot reach {args.url} ({exc}); is `cityos serve` running?"


def _show(response: httpx.Response | str, done: str = "") -> int:
    if isinstance(response, str):
        return fail(response)
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail") or problem.get("title")
        except ValueError:
            detail = response.text
        return fail(f"HTTP {response.status_code}: {detail}")
    if response.content:
        print(json.dumps(response.json(), indent=2, ensure_ascii=False))
    elif done:
        print(done)
    return 0
