"""Which registrations take part in an operation, and how (spec 4.3.6.2, 4.3.6.3).

A registration takes part when it is not expired, its `operations` (groups expanded) name the
operation, and its information covers the entity ids / types / attributes the request touches.
Its `mode` then decides the local part: `redirect` sends everything away (nothing is done
locally), `exclusive` sends away only the registered attributes of the registered entities
(the rest stays local), `inclusive` does both, `auxiliary` only ever serves reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cityos.query import q
from cityos.registrations import expired, matches
from cityos.registrations.model import (
    MODES,
    OTHER_READ_OPERATIONS,
    SUBSCRIPTION_OPERATIONS,
    WRITE_OPERATIONS,
)

Doc = dict[str, Any]

LOCAL_ONLY_NAMES = ("localOnly", "https://uri.etsi.org/ngsi-ld/localOnly")  # as written, expanded

RETRIEVE_OPS = frozenset({"retrieveEntity", "queryEntity"})
OTHER_READS = OTHER_READ_OPERATIONS  # temporal and discovery: in both federationOps and redirectionOps
SUBSCRIPTION_OPS = SUBSCRIPTION_OPERATIONS
FEDERATION_OPS = RETRIEVE_OPS | OTHER_READS | SUBSCRIPTION_OPS | {"queryBatch"}
UPDATE_OPS = frozenset({"updateEntity", "updateAttrs", "replaceEntity", "replaceAttrs"})
# the writes Table 4.20-1 names (registrations/model.py validates them), without its group names, and
# the purge of entities by query, which redirectionOps forwards too
WRITES = UPDATE_OPS | (WRITE_OPERATIONS - {"updateOps", "redirectionOps"}) | {"purgeEntity"}
REDIRECTION_OPS = WRITES | RETRIEVE_OPS | OTHER_READS
GROUPS = {
    "federationOps": FEDERATION_OPS,
    "updateOps": UPDATE_OPS,
    "retrieveOps": RETRIEVE_OPS,
    "redirectionOps": REDIRECTION_OPS,
}


def operations(doc: Doc) -> frozenset[str]:
    """The operations a registration supports, groups expanded (absent: federationOps, 5.2.9)."""
    named = doc.get("operations") or ["federationOps"]
    out: set[str] = set()
    for name in named if isinstance(named, list) else []:
        if isinstance(name, str):
            out |= GROUPS.get(name, {name})
    return frozenset(out)


def mode(doc: Doc) -> str:
    value = doc.get("mode")
    return value if value in MODES else "inclusive"


@dataclass(frozen=True)
class Target:
    """One registration taking part: the attributes it holds (expanded IRIs; None: every one)
    and the entity ids it names (empty: it names none, it covers types or patterns)."""

    registration: Doc
    mode: str
    attrs: frozenset[str] | None
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    @property
    def operations(self) -> frozenset[str]:
        return operations(self.registration)

    @property
    def local_only(self) -> bool:
        """A localOnly registration: the source answers from its own data only (4.3.6.4). Said in
        its management (RegistrationManagementInfo, 5.2.34) or as a member of its own, which the
        registration keeps under the name the core @context expands it to."""
        doc = self.registration
        management = doc.get("management")
        if isinstance(management, dict) and management.get("localOnly") is True:
            return True
        return any(doc.get(name) is True for name in LOCAL_ONLY_NAMES)

    @property
    def id(self) -> str:
        return str(self.registration.get("id", ""))

    @property
    def endpoint(self) -> str:
        return str(self.registration["endpoint"]).rstrip("/")

    def holds(self, attr: str) -> bool:
        return self.attrs is None or attr in self.attrs


def _registered_attrs(doc: Doc, ids: Sequence[str] | None, types: Sequence[str] | None) -> frozenset[str] | None:
    names: set[str] = set()
    for item in doc.get("information") or []:
        if not matches({"information": [item]}, ids=ids, types=types):
            continue
        listed = [*item.get("propertyNames", []), *item.get("relationshipNames", [])]
        if not listed:
            return None
        names.update(listed)
    return frozenset(names)


def _registered_types(doc: Doc, ids: Sequence[str] | None, types: Sequence[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for item in doc.get("information") or []:
        if not matches({"information": [item]}, ids=ids, types=types):
            continue
        for selector in item.get("entities") or []:
            kind = selector.get("type")
            if isinstance(kind, str) and kind not in out and (types is None or kind in types):
                out.append(kind)
    return tuple(out)


def _registered_ids(doc: Doc, types: Sequence[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for item in doc.get("information") or []:
        for selector in item.get("entities") or []:
            if "id" in selector and (types is None or matches({"information": [item]}, types=types)):
                out.append(selector["id"])
    return tuple(out)


def targets(
    registrations: Iterable[Doc],
    operation: str,
    *,
    ids: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    attrs: Sequence[str] | None = None,
    csf: Callable[[Doc], bool] | None = None,
    now: datetime | None = None,
) -> list[Target]:
    """The registrations that take part in `operation` on what the request names (`csf`: the
    request's context source filter, when it has one)."""
    now = now or datetime.now(UTC)
    out: list[Target] = []
    for doc in registrations:
        if not isinstance(doc.get("endpoint"), str) or expired(doc, now):
            continue
        kind = mode(doc)
        if kind == "auxiliary" and operation in WRITES:
            continue  # auxiliary sources only ever serve reads (4.3.6.2)
        if operation not in operations(doc) or not matches(doc, ids=ids, types=types, attrs=attrs):
            continue
        if csf is not None and not csf(doc):
            continue
        held = _registered_attrs(doc, ids, types)
        if held is not None and attrs is not None:
            held = held & frozenset(attrs)
        out.append(Target(doc, kind, held, _registered_ids(doc, types), _registered_types(doc, ids, types)))
    return out


def conflicts(
    registrations: Iterable[Doc],
    operation: str,
    *,
    ids: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    attrs: Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[Target]:
    """Exclusive and redirect registrations that hold what a write touches but do not support
    the write: that part cannot be done anywhere (409 Conflict, spec 5.6.x.4); the rest still is."""
    now = now or datetime.now(UTC)
    out: list[Target] = []
    for doc in registrations:
        kind = mode(doc)
        if kind not in ("exclusive", "redirect") or operation not in WRITES or operation in operations(doc):
            continue
        if not isinstance(doc.get("endpoint"), str) or expired(doc, now):
            continue
        if matches(doc, ids=ids, types=types, attrs=attrs):
            held = _registered_attrs(doc, ids, types)
            out.append(Target(doc, kind, held, _registered_ids(doc, types)))
    return out


@dataclass
class Plan:
    """Where the parts of one request go: `local` false when a redirect registration takes the
    whole of it; `remote_only` the attributes an exclusive registration keeps from the local store."""

    targets: list[Target] = field(default_factory=list)
    local: bool = True
    remote_only: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.targets)


def plan(found: list[Target]) -> Plan:
    """How the local store and the sources share a request on one entity (or one query)."""
    redirect = [t for t in found if t.mode == "redirect"]
    exclusive = frozenset(a for t in found if t.mode == "exclusive" and t.attrs for a in t.attrs)
    return Plan(found, local=not redirect, remote_only=exclusive)


def _member(doc: Doc, name: str, expand: Callable[[str], str]) -> Any:
    """A registration member read by a csf term: as written, or by its expanded name."""
    for key in (name, expand(name)):
        if key in doc:
            value = doc[key]
            return value.get("value", value.get("object")) if isinstance(value, dict) else value
    return None


def csf_matches(doc: Doc, expr: q.QExpr, expand: Callable[[str], str]) -> bool:
    """Whether a registration passes a context source filter (csf, spec 4.9, 5.7.2.4): its
    members (extra properties, mode, ...) tested with the q grammar. Terms that compare by order
    or pattern are not evaluated here and let the registration through."""
    if isinstance(expr, q.And):
        return all(csf_matches(doc, term, expand) for term in expr.terms)
    if isinstance(expr, q.Or):
        return any(csf_matches(doc, term, expand) for term in expr.terms)
    if not isinstance(expr.path, q.AttrPath) or expr.path.segments or expr.path.keys:
        return True
    held = _member(doc, expr.path.name, expand)
    if isinstance(expr, q.Exists):
        return (held is not None) != expr.negated
    if isinstance(expr, q.Comparison) and expr.op in ("==", "!="):
        operand = expr.operand
        if isinstance(operand, q.Range):
            return True
        values = [v.value for v in operand.items] if isinstance(operand, q.ValueList) else [operand.value]
        found = held in values or (isinstance(held, list) and any(h in values for h in held))
        return found == (expr.op == "==")
    return True
