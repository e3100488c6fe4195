"""IoT Agent provisioning: service groups and devices, in the FIWARE IoT Agent's JSON shapes.

A service group binds an API key to a tenant (the FIWARE `fiware-service`), a default entity type and
attribute mappings; a device binds a device id to an entity id and type, with its own mappings and
static attributes. Both are kept in the store (ingest records) and mirrored in memory, because every
measure needs them.

Tenant isolation: a measure names only an API key and a device id (MQTT topics and /iot/d carry no
tenant), so each API key belongs to exactly one tenant, the one whose group or device used it first;
the store keeps that claim (an `iot-apikey` record, unique in the deployment, taken in the same
transaction as the group or device). Another tenant can neither create a group nor provision a
device under a claimed key; it gets the answer any unusable key gets (400, "cannot be used"), which
never says that the key exists or whose it is. A measure is applied only to a device of the key's
owner (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cityos.entities.values import is_uri, require_uri
from cityos.errors import AlreadyExists, BadRequestData, NgsiLdError
from cityos.ingest.convert import value_kind
from cityos.ingest.iot_payloads import JSON, UL
from cityos.store.base import EntityStore, IngestRecord

GROUP = "iot-group"
DEVICE = "iot-device"
KEY = "iot-apikey"  # the claim of an API key by one tenant: tenant "", key = the API key
MAX_KEY = 256
RESOURCES = {"/iot/d": UL, "/iot/json": JSON}
PROTOCOLS = {
    "": "",
    "ul": UL,
    "ultralight": UL,
    "iota-ul": UL,
    "pdi-iota-ultralight": UL,
    "json": JSON,
    "iota-json": JSON,
    "pdi-iota-json": JSON,
}


@dataclass(frozen=True, slots=True)
class AttributeMapping:
    """A measure's object id (as the device sends it) -> an attribute name, value type and unit."""

    object_id: str
    name: str
    type: str = ""  # a value type of convert.py; "" converts automatically
    unit_code: str | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"object_id": self.object_id, "name": self.name, "type": self.type or "Property"}
        if self.unit_code:
            doc["metadata"] = {"unitCode": {"type": "Text", "value": self.unit_code}}
        return doc


@dataclass(frozen=True, slots=True)
class StaticAttribute:
    """An attribute written with every measure of a device, whatever it sends."""

    name: str
    type: str
    value: Any

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "value": self.value}


@dataclass(frozen=True, slots=True)
class ServiceGroup:
    apikey: str
    entity_type: str
    tenant: str = ""
    service_path: str = "/"
    resource: str = "/iot/d"
    protocol: str = ""  # ul, json, or "" to detect from each payload
    autoprovision: bool = True
    attributes: tuple[AttributeMapping, ...] = ()
    static_attributes: tuple[StaticAttribute, ...] = ()

    def document(self) -> dict[str, Any]:
        return {
            "apikey": self.apikey,
            "entity_type": self.entity_type,
            "resource": self.resource,
            "service": self.tenant,
            "subservice": self.service_path,
            "protocol": self.protocol,
            "autoprovision": self.autoprovision,
            "attributes": [a.document() for a in self.attributes],
            "static_attributes": [a.document() for a in self.static_attributes],
        }


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    apikey: str
    entity_id: str
    entity_type: str
    tenant: str = ""
    service_path: str = "/"
    protocol: str = ""
    transport: str = ""
    attributes: tuple[AttributeMapping, ...] = ()
    static_attributes: tuple[StaticAttribute, ...] = ()
    mappings: dict[str, AttributeMapping] = field(default_factory=dict, compare=False, repr=False)

    def mapping(self, object_id: str) -> AttributeMapping:
        """How a measure is named and typed: the device's mapping, else the object id as sent."""
        found = self.mappings.get(object_id)
        return found if found is not None else AttributeMapping(object_id, object_id)

    def document(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "apikey": self.apikey,
            "entity_name": self.entity_id,
            "entity_type": self.entity_type,
            "service": self.tenant,
            "subservice": self.service_path,
            "protocol": self.protocol,
            "transport": self.transport,
            "attributes": [a.document() for a in self.attributes],
            "static_attributes": [a.document() for a in self.static_attributes],
        }


def _text(raw: dict[str, Any], key: str, *, required: bool = False, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str) or (required and not value):
        raise BadRequestData(f"{key} must be a non-empty string" if required else f"{key} must be a string")
    return value


def _mappings(raw: Any, where: str) -> tuple[AttributeMapping, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequestData(f"{where}.attributes must be an array")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequestData(f"{where}.attributes holds a non-object")
        object_id = _text(item, "object_id") or _text(item, "name", required=True)
        name = _text(item, "name") or object_id
        kind = _text(item, "type")
        try:
            value_kind(kind)
        except ValueError as exc:
            raise BadRequestData(f"{where}: attribute {name}: {exc}") from exc
        unit = item.get("unitCode")
        metadata = item.get("metadata")
        if unit is None and isinstance(metadata, dict) and isinstance(metadata.get("unitCode"), dict):
            unit = metadata["unitCode"].get("value")
        if unit is not None and not isinstance(unit, str):
            raise BadRequestData(f"{where}: the unitCode of {name} must be a string")
        out.append(AttributeMapping(object_id, name, kind, unit))
    return tuple(out)


def _statics(raw: Any, where: str) -> tuple[StaticAttribute, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequestData(f"{where}.static_attributes must be an array")
    out = []
    for item in raw:
        if not isinstance(item, dict) or "value" not in item:
            raise BadRequestData(f"{where}.static_attributes items need a name and a value")
        out.append(StaticAttribute(_text(item, "name", required=True), _text(item, "type"), item["value"]))
    return tuple(out)


def _protocol(raw: dict[str, Any]) -> str:
    name = _text(raw, "protocol").strip().lower()
    if name not in PROTOCOLS:
        raise BadRequestData(f"unknown protocol {name!r}: use ul (UltraLight 2.0) or json")
    return PROTOCOLS[name]


def parse_group(raw: Any, tenant: str, service_path: str) -> ServiceGroup:
    """A service group from its FIWARE JSON form; tenant and path come from the request headers."""
    if not isinstance(raw, dict):
        raise BadRequestData("a service group must be a JSON object")
    resource = _text(raw, "resource", default="/iot/d") or "/iot/d"
    if not resource.startswith("/"):
        raise BadRequestData("resource must be a path such as /iot/d")
    protocol = _protocol(raw) or RESOURCES.get(resource, "")
    autoprovision = raw.get("autoprovision", True)
    if not isinstance(autoprovision, bool):
        raise BadRequestData("autoprovision must be true or false")
    return ServiceGroup(
        apikey=check_apikey(_text(raw, "apikey", required=True)),
        entity_type=_text(raw, "entity_type", required=True),
        tenant=tenant,
        service_path=service_path,
        resource=resource,
        protocol=protocol,
        autoprovision=autoprovision,
        attributes=_mappings(raw.get("attributes"), "service"),
        static_attributes=_statics(raw.get("static_attributes"), "service"),
    )


def topic_level(text: str) -> bool:
    """Can `text` be one MQTT topic level (and appear in a log line as it is)?"""
    return 0 < len(text) <= MAX_KEY and not any(c in "/#+" or not c.isprintable() for c in text)


def unusable_key(apikey: str) -> BadRequestData:
    """One answer for every key a tenant cannot use, whether it is malformed or another tenant's:
    nothing tells that a key exists elsewhere."""
    return BadRequestData(f"apikey {apikey!r} cannot be used; choose another key")


def check_apikey(apikey: str) -> str:
    if not topic_level(apikey):
        raise unusable_key(apikey)
    return apikey


def entity_id_for(entity_type: str, device_id: str) -> str:
    """The entity a device updates when provisioning names none."""
    return f"urn:ngsi-ld:{entity_type}:{device_id}"


def parse_device(raw: Any, tenant: str, service_path: str, group: ServiceGroup | None) -> Device:
    """A device from its FIWARE JSON form; what it leaves out comes from its service group."""
    if not isinstance(raw, dict):
        raise BadRequestData("a device must be a JSON object")
    device_id = _text(raw, "device_id", required=True)
    if not topic_level(device_id):
        raise BadRequestData("device_id must not contain /, #, + or control characters (it is an MQTT topic level)")
    apikey = _text(raw, "apikey") or (group.apikey if group else "")
    if not apikey:
        raise BadRequestData(f"device {device_id}: give an apikey (no single service group to take it from)")
    check_apikey(apikey)
    entity_type = _text(raw, "entity_type") or (group.entity_type if group else "")
    if not entity_type:
        raise BadRequestData(f"device {device_id}: give an entity_type")
    entity_id = _text(raw, "entity_name") or entity_id_for(entity_type, device_id)
    if not is_uri(entity_id):
        entity_id = "urn:ngsi-ld:" + entity_id
    require_uri(entity_id, "entity_name")
    transport = _text(raw, "transport").upper()
    if transport not in ("", "MQTT", "HTTP"):
        raise BadRequestData("transport must be MQTT or HTTP")
    return with_group(
        Device(
            device_id=device_id,
            apikey=apikey,
            entity_id=entity_id,
            entity_type=entity_type,
            tenant=tenant,
            service_path=service_path,
            protocol=_protocol(raw),
            transport=transport,
            attributes=_mappings(raw.get("attributes"), f"device {device_id}"),
            static_attributes=_statics(raw.get("static_attributes"), f"device {device_id}"),
        ),
        group,
    )


def with_group(device: Device, group: ServiceGroup | None) -> Device:
    """The device with its lookup table built: the group's mappings, overridden by the device's."""
    attributes = (group.attributes if group else ()) + device.attributes
    mappings = {m.object_id: m for m in attributes}
    statics = {s.name: s for s in (group.static_attributes if group else ()) + device.static_attributes}
    protocol = device.protocol or (group.protocol if group else "")
    return replace(device, protocol=protocol, mappings=mappings, static_attributes=tuple(statics.values()))


def device_from_document(doc: dict[str, Any], group: ServiceGroup | None) -> Device:
    return parse_device(doc, doc.get("service", ""), doc.get("subservice", "/"), group)


class Registry:
    """Service groups and devices in memory, written through to the store."""

    def __init__(self, store: EntityStore) -> None:
        self.store = store
        self._groups: dict[str, ServiceGroup] = {}  # by apikey (API keys are unique)
        self._devices: dict[tuple[str, str], Device] = {}  # by (apikey, device_id)
        self._owners: dict[str, str] = {}  # apikey -> the tenant that claimed it

    async def load(self) -> None:
        """(Re)load every group and device from the store: at startup, and after another worker
        changed them. The new maps replace the old whole, so a lookup never sees half of each.
        A group or device under a key another tenant owns (written before keys were claimed) is
        left out: it could route measures across tenants."""
        owners = {r.key: str(r.document.get("tenant", "")) for r in await self.store.load_ingest_records(KEY)}
        groups: dict[str, ServiceGroup] = {}
        for record in await self.store.load_ingest_records(GROUP):
            doc = record.document
            group = parse_group(doc, doc.get("service", ""), doc.get("subservice", "/"))
            if owners.setdefault(group.apikey, group.tenant) == group.tenant:
                groups[group.apikey] = group
        devices: dict[tuple[str, str], Device] = {}
        for record in await self.store.load_ingest_records(DEVICE):
            device = device_from_document(record.document, groups.get(record.document.get("apikey", "")))
            if owners.setdefault(device.apikey, device.tenant) == device.tenant:
                devices[(device.apikey, device.device_id)] = device
        self._groups, self._devices, self._owners = groups, devices, owners

    def _claims(self, tenant: str, keys: list[str]) -> list[IngestRecord]:
        """The claim records to write for the keys `tenant` uses first; refuses another's key."""
        claims: dict[str, IngestRecord] = {}
        for key in keys:
            owner = self._owners.get(key)
            if owner is None:
                claims[key] = IngestRecord(KEY, "", key, {"tenant": tenant})
            elif owner != tenant:
                raise unusable_key(key)
        return list(claims.values())

    async def _write(self, tenant: str, records: list[IngestRecord], keys: list[str]) -> None:
        claims = self._claims(tenant, keys)
        try:
            await self.store.add_ingest_records(claims + records)
        except AlreadyExists:
            if any(claim.key not in self._owners for claim in claims):
                await self.load()  # another worker may have claimed a key meanwhile
                self._claims(tenant, keys)
            raise
        for claim in claims:
            self._owners[claim.key] = tenant

    async def _release(self, tenant: str, apikey: str) -> None:
        """Give up the claim of a key its tenant no longer uses."""
        if apikey in self._groups or any(key == apikey for key, _ in self._devices):
            return
        if self._owners.get(apikey) == tenant:
            await self.store.delete_ingest_record(KEY, "", apikey)
            del self._owners[apikey]

    # -- service groups ------------------------------------------------------------------------
    def groups(self, tenant: str) -> list[ServiceGroup]:
        return [g for g in self._groups.values() if g.tenant == tenant]

    def group(self, tenant: str, apikey: str) -> ServiceGroup | None:
        group = self._groups.get(apikey)
        return group if group is not None and group.tenant == tenant else None

    async def add_groups(self, groups: list[ServiceGroup]) -> None:
        for tenant in {g.tenant for g in groups}:
            keys = [g.apikey for g in groups if g.tenant == tenant]
            self._claims(tenant, keys)
            taken = [key for key in keys if key in self._groups]
            if taken or len(set(keys)) != len(keys):
                raise AlreadyExists(f"a service group with apikey {(taken or keys)[0]} already exists")
        for tenant in {g.tenant for g in groups}:
            mine = [g for g in groups if g.tenant == tenant]
            records = [IngestRecord(GROUP, g.tenant, g.apikey, g.document()) for g in mine]
            await self._write(tenant, records, [g.apikey for g in mine])
            for group in mine:
                self._groups[group.apikey] = group

    async def remove_group(self, tenant: str, apikey: str) -> bool:
        if self.group(tenant, apikey) is None:
            return False
        await self.store.delete_ingest_record(GROUP, tenant, apikey)
        del self._groups[apikey]
        await self._release(tenant, apikey)
        return True

    # -- devices ---------------------------------------------------------------------------------
    def devices(self, tenant: str) -> list[Device]:
        return [d for d in self._devices.values() if d.tenant == tenant]

    def device(self, tenant: str, device_id: str) -> Device | None:
        return next((d for d in self._devices.values() if d.tenant == tenant and d.device_id == device_id), None)

    def default_group(self, tenant: str) -> ServiceGroup | None:
        """The group a device provisioned without an apikey joins: the tenant's only one."""
        groups = self.groups(tenant)
        return groups[0] if len(groups) == 1 else None

    async def add_devices(self, devices: list[Device]) -> None:
        keys = [(d.apikey, d.device_id) for d in devices]
        for tenant in {d.tenant for d in devices}:
            self._claims(tenant, [d.apikey for d in devices if d.tenant == tenant])
        for device in devices:
            if (device.apikey, device.device_id) in self._devices or self.device(device.tenant, device.device_id):
                raise AlreadyExists(f"device {device.device_id} already exists")
        if len(set(keys)) != len(keys):
            raise AlreadyExists("the request provisions the same device twice")
        for tenant in {d.tenant for d in devices}:
            mine = [d for d in devices if d.tenant == tenant]
            records = [IngestRecord(DEVICE, d.tenant, d.device_id, d.document()) for d in mine]
            await self._write(tenant, records, [d.apikey for d in mine])
            for device in mine:
                self._devices[(device.apikey, device.device_id)] = device

    async def remove_device(self, tenant: str, device_id: str) -> bool:
        device = self.device(tenant, device_id)
        if device is None:
            return False
        await self.store.delete_ingest_record(DEVICE, tenant, device_id)
        del self._devices[(device.apikey, device.device_id)]
        await self._release(tenant, device.apikey)
        return True

    def owner(self, apikey: str) -> str | None:
        """The tenant that claimed an API key; None if none did."""
        return self._owners.get(apikey)

    def provisioned(self, apikey: str, device_id: str) -> Device | None:
        """resolve's answer for a provisioned device of the key's owner, without a coroutine (every
        measure asks); None: ask resolve."""
        device = self._devices.get((apikey, device_id))
        return device if device is not None and device.tenant == self._owners.get(apikey) else None

    async def resolve(self, apikey: str, device_id: str) -> Device | None:
        """The device a measure comes from, always one of the key owner's; an unknown device of an
        autoprovisioning group is provisioned on its first measure (as the FIWARE agents do)."""
        owner = self._owners.get(apikey)
        device = self._devices.get((apikey, device_id))
        if device is not None:
            return device if device.tenant == owner else None
        group = self._groups.get(apikey)
        if group is None or not group.autoprovision or group.tenant != owner:
            return None
        try:
            device = parse_device({"device_id": device_id}, group.tenant, group.service_path, group)
        except BadRequestData:
            return None
        if (apikey, device_id) not in self._devices:  # a concurrent measure may have provisioned it
            try:
                await self.add_devices([device])
            except NgsiLdError:  # the tenant has a device of that id under another key
                return None
        return self._devices.get((apikey, device_id))
