"""Policy management: the stored, versioned policy set, the --policy-file, and the Authorizer they feed.

Every change (admin API or file) is a new version in the store (store/policy_base.py) and an audit
record; the worker that made it reloads at once, the others when the store's StoreEvent ("policy")
reaches them, so every worker enforces the new set within a round trip of PostgreSQL's NOTIFY.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from cityos.audit.events import AuditEvent, AuditSink, NullAudit
from cityos.auth.principal import current_request_id
from cityos.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.policy.compiled import PolicyAuthorizer
from cityos.policy.model import Policy, parse_policy
from cityos.store.base import StoreEvent
from cityos.store.policy_base import PolicyChange, PolicyRow, PolicyStore

if TYPE_CHECKING:
    from cityos.ngsild.common import Services
    from cityos.settings import Settings

log = logging.getLogger("cityos.policy")
FILE_SOURCE = "file"


def read_policy_file(path: str) -> list[dict[str, Any]]:
    """The policy documents of a YAML or JSON file: a list, or {"policies": [...]}."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        loaded = orjson.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from exc
    if isinstance(loaded, dict) and "policies" in loaded:
        loaded = loaded["policies"]
    if loaded is None:
        return []
    if not isinstance(loaded, list):
        raise ValueError(f"{path}: expected a list of policies (or an object with `policies`)")
    return loaded


class PolicyService:
    """Owns the Authorizer of a server with --auth required."""

    def __init__(
        self,
        store: PolicyStore,
        expand: Callable[[str], str],
        *,
        audit: AuditSink | None = None,
        policy_file: str = "",
    ) -> None:
        self.store = store
        self.expand = expand
        self.audit: AuditSink = audit or NullAudit()
        self.policy_file = policy_file
        self.authorizer = PolicyAuthorizer()
        self._reloading: asyncio.Task[None] | None = None
        self._again = False
        # documents of policies kept elsewhere (dataspace/: agreements compiled into policies),
        # parsed and enforced with the stored set on every reload
        self.extra: Callable[[], list[dict[str, Any]]] = list

    def parse(self, document: Any) -> Policy:
        return parse_policy(document, self.expand)

    async def start(self) -> None:
        """Bring the file's policies into the store (if a file is set), then load the set."""
        if self.policy_file:
            await self.sync_file()
        await self.reload()

    async def reload(self) -> None:
        version, rows = await self.store.load_policies()
        policies = []
        for row in rows:
            try:
                policies.append(self.parse(row.document))
            except BadRequestData as exc:  # stored under other rules: skipped, never half-applied
                log.error("stored policy %s is not valid any more and is ignored: %s", row.id, exc.detail)
        for document in self.extra():
            try:
                policies.append(self.parse(document))
            except BadRequestData as exc:
                log.error("policy %s is not valid and is ignored: %s", document.get("id"), exc.detail)
        self.authorizer.replace(policies, version)

    def follow(self, listener: Callable[[StoreEvent], None]) -> Callable[[StoreEvent], None]:
        """`listener` that also reloads the policies when another worker changed them."""

        def on_event(event: StoreEvent) -> None:
            self.on_event(event.kind)
            listener(event)

        return on_event

    def on_event(self, kind: str) -> None:
        """Another worker changed the policies ("policy"), or events may have been lost ("resync")."""
        if kind not in ("policy", "resync"):
            return
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.create_task(self._reload_until_quiet())

    async def _reload_until_quiet(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # the next event (or a resync) tries again
                log.exception("reloading the access policies failed")
            if not self._again:
                return

    async def change(self, change: PolicyChange, policy_id: str, document: Any, *, by: str) -> PolicyRow:
        """Create, replace or delete one policy (validated first), audit it and apply it here."""
        if document is not None:
            policy = self.parse(document)
            if policy.id != policy_id:
                raise BadRequestData(f"the policy id {policy.id!r} is not the one in the path ({policy_id!r})")
        row = await self.store.change_policy(change, policy_id, document, by=by)
        if row is None:
            raise ResourceNotFound(f"policy {policy_id} does not exist")
        await self._audit(row, change, by)
        await self.reload()
        return row

    async def _audit(self, row: PolicyRow, change: PolicyChange, by: str) -> None:
        operation = {"create": "policy.create", "replace": "policy.update", "delete": "policy.delete"}[change]
        await self.audit.record(
            [
                AuditEvent(
                    principal=by,
                    operation=operation,
                    tenant="",
                    targets=[row.id],
                    request_id=current_request_id.get(),
                    detail={"version": row.version, "source": row.source},
                )
            ]
        )

    async def sync_file(self) -> list[PolicyRow]:
        """Make the stored policies that came from the file match it: new ones created, changed ones
        replaced, removed ones deleted; unchanged ones keep their version. The whole file is checked
        first: one bad policy changes nothing (ValueError names it)."""
        path = self.policy_file
        documents = read_policy_file(path)
        wanted: dict[str, dict[str, Any]] = {}
        for number, document in enumerate(documents, 1):
            try:
                policy = self.parse(document)
            except BadRequestData as exc:
                raise ValueError(f"{path}: policy {number}: {exc.detail}") from exc
            if policy.id in wanted:
                raise ValueError(f"{path}: policy id {policy.id} appears twice")
            wanted[policy.id] = document
        _, rows = await self.store.load_policies()
        current = {row.id: row for row in rows}
        by = f"file:{path}"
        changed: list[PolicyRow] = []
        for policy_id, document in wanted.items():
            row = current.get(policy_id)
            if row is not None and row.document == document:
                continue
            kind: PolicyChange = "create" if row is None else "replace"
            try:
                saved = await self.store.change_policy(kind, policy_id, document, by=by, source=FILE_SOURCE)
            except AlreadyExists:  # another worker synced the same file first
                continue
            if saved is not None:
                await self._audit(saved, kind, by)
                changed.append(saved)
        for row in rows:
            if row.source == FILE_SOURCE and row.id not in wanted:
                saved = await self.store.change_policy("delete", row.id, None, by=by, source=FILE_SOURCE)
                if saved is not None:
                    await self._audit(saved, "delete", by)
                    changed.append(saved)
        return changed


def access_policies(settings: Settings, services: Services) -> PolicyService | None:
    """With --auth required: the policy service, its Authorizer installed in `services`."""
    if settings.auth != "required":
        return None
    expand = services.contexts.core_terms().expand
    service = PolicyService(services.store, expand, audit=services.audit, policy_file=settings.policy_file)
    services.authorizer = service.authorizer
    return service
