"""The policy engine: policies compiled into plain predicates, once per (principal, tenant, action)
and cached until the policies change (docs/performance.md, "Access policy engine", has the
measurement that chose this over Cedar and casbin).

Semantics (docs/security.md, "Access policies"): a rule applies to a request when its principals
match, its actions include the action, its tenants include the tenant and its conditions hold.
An entity is visible when an applicable allow rule's data matches it and no applicable deny rule
without an attribute list does; an attribute is readable when an allow rule that matches the
entity covers it and no matching deny rule covers it. Deny wins; nothing allowed is denied. The
admin role has an implicit allow of everything (deny rules still bind it).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from cityos.auth.errors import AccessDenied as AccessDenied  # the one 403, re-exported for the enforcement points
from cityos.auth.principal import Principal
from cityos.entities.model import Entity
from cityos.errors import ResourceNotFound
from cityos.policy.decision import ACTIONS, AccessPrefilter, Action, Target
from cityos.policy.model import Policy, Resources, scope_matches
from cityos.query.patterns import found

# the request's declared purpose (the Purpose header), for policies with a purpose condition
current_purpose: ContextVar[str | None] = ContextVar("cityos_purpose", default=None)
EntityTest = Callable[[Entity], bool]
CACHE_SIZE = 4096
MASKS = 1024  # attribute masks per view, and attributes remembered per mask (more: computed each time)
WRITE_ACTIONS: tuple[Action, ...] = ("create", "update", "delete")


class HiddenEntity(ResourceNotFound):
    """Answered exactly as a missing entity (the caller cannot tell it exists); a distinct class
    only so the enforcement point can audit the denial."""


class Rule:
    """One applicable policy, its entity test built once."""

    __slots__ = ("attribute_limited", "constrained", "extra", "policy", "resources", "test")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.resources = resources = policy.resources
        tests: list[EntityTest] = []
        if resources.types is not None:
            types = resources.types
            tests.append(lambda e: not types.isdisjoint(e["type"]))
        if resources.id_pattern is not None:
            pattern = resources.id_pattern
            tests.append(lambda e: found(pattern, e["id"]))
        extra = _extra_tests(resources)
        tests.extend(extra)
        self.constrained = bool(tests)
        self.extra = bool(extra)  # constraints the store cannot evaluate in SQL
        self.attribute_limited = resources.attribute_limited
        if not tests:
            self.test: EntityTest = lambda e: True
        elif len(tests) == 1:
            self.test = tests[0]
        else:
            self.test = lambda e: all(t(e) for t in tests)

    def covers(self, attr: str) -> bool:
        resources = self.resources
        return (resources.attrs is None or attr in resources.attrs) and attr not in resources.except_attrs


def _extra_tests(resources: Resources) -> list[EntityTest]:
    tests: list[EntityTest] = []
    if resources.scopes is not None:
        patterns = resources.scopes
        tests.append(lambda e: any(scope_matches(p, s) for p in patterns for s in e.get("scope") or ()))
    if resources.area is not None:
        from cityos.policy.geo import inside

        tests.append(inside(resources.area))
    if resources.window is not None:
        start, until = resources.window
        tests.append(
            lambda e: (
                (start is None or e.get("modifiedAt", "") >= start)
                and (until is None or e.get("modifiedAt", "") < until)
            )
        )
    return tests


class CompiledView:
    """A ReadView (policy/decision.py) made of the rules that apply to one principal, tenant and
    action. Besides the contract it says whether its prefilter is exact (then the store need not
    run visible() at all) and whether it can hide attributes (else project() is the identity)."""

    unrestricted = False
    # visible() and project() read the entity and nothing else (a policy's conditions, on the time
    # or the purpose, were settled when the view was chosen: another outcome is another view), so
    # their outcome may be cached by the entity's stored bytes (entities/render_cache.py); a policy
    # change makes new views, whose cache entries are new
    cacheable = True

    def __init__(
        self, allows: Sequence[Rule], denies: Sequence[Rule], personal: Personal, fingerprint: Hashable = None
    ) -> None:
        # the same fingerprint: the same rules, so the same entities and attributes seen (the
        # console's kept map layers are shared by it, console/layers.py); None: share with no one
        self.fingerprint = fingerprint
        # whether an entity's modifiedAt alone (a rule's time window) can change what is seen of it
        self.windowed = any(r.resources.window is not None for r in (*allows, *denies))
        self.allows = tuple(allows)
        self.entity_denies = tuple(d for d in denies if not d.attribute_limited)
        self.attr_denies = tuple(d for d in denies if d.attribute_limited)
        self.personal = personal
        self.nothing = not self.allows
        self.everything = any(not a.constrained for a in self.allows) and not self.entity_denies
        self.projects = any(a.attribute_limited for a in self.allows) or bool(self.attr_denies)
        self.audits_reads = bool(personal)  # else record_personal_reads has nothing to look for
        self._prefilter, self.prefilter_exact = self._pushdown()
        # which attributes an entity shows depends only on the rules that match it: decided once
        # per combination of matching rules, not once per entity
        self._masks: dict[tuple[Rule, ...], AttributeMask] = {}
        # the usual view, one allow rule and no attribute deny: its two masks made now
        self._only = self.allows[0] if len(self.allows) == 1 and not self.attr_denies else None
        self._only_masks = (AttributeMask(()), AttributeMask(self.allows[:1]))

    def _pushdown(self) -> tuple[AccessPrefilter | None, bool]:
        if self.nothing:
            return AccessPrefilter(types=()), True
        allows = self.allows
        types: list[str] | None = None
        if all(a.resources.types is not None for a in allows):
            types = sorted({t for a in allows for t in a.resources.types or ()})
        patterns: list[str] | None = None
        if all(a.resources.id_pattern is not None for a in allows):
            patterns = sorted({a.resources.id_pattern for a in allows if a.resources.id_pattern is not None})
        # the union of the rules equals (any of the types) AND (any of the patterns) only when the
        # rules differ in one of the two at most
        exact = (
            not self.entity_denies
            and not any(a.extra for a in allows)
            and (len({a.resources.types for a in allows}) == 1 or len({a.resources.id_pattern for a in allows}) == 1)
        )
        if types is None and patterns is None:
            return None, exact
        return AccessPrefilter(types=types, id_patterns=patterns), exact

    def prefilter(self) -> AccessPrefilter | None:
        return self._prefilter

    def shows_always(self, attrs: Iterable[str]) -> bool:
        """True when every entity this view lets through shows each of `attrs` it has: every allow
        covers them and no attribute deny hides them. A filter on such attributes judges the stored
        entity as it would judge the projected one, so it may stay in SQL (policy/enforce.py)."""
        if not self.projects:
            return True
        return all(
            all(allow.covers(attr) for allow in self.allows) and not any(deny.covers(attr) for deny in self.attr_denies)
            for attr in attrs
        )

    def visible(self, entity: Entity) -> bool:
        if self.everything:
            return True
        for deny in self.entity_denies:
            if deny.test(entity):
                return False
        for allow in self.allows:  # noqa: SIM110 (a loop, not any(): this runs for every entity a query reads)
            if allow.test(entity):
                return True
        return False

    def mask(self, entity: Entity) -> AttributeMask:
        """Which of the entity's attributes this view lets through (by the rules matching it)."""
        only = self._only
        if only is not None:
            return self._only_masks[1] if only.test(entity) else self._only_masks[0]
        matching = tuple([a for a in self.allows if a.test(entity)] + [d for d in self.attr_denies if d.test(entity)])
        mask = self._masks.get(matching)
        if mask is None:
            mask = AttributeMask(matching)
            if len(self._masks) < MASKS:
                self._masks[matching] = mask
        return mask

    def readable(self, entity: Entity) -> frozenset[str] | None:
        """The attributes of `entity` this view lets through; None: all of them."""
        mask = self.mask(entity)
        if mask.everything:
            return None
        keeps = mask.keeps
        return frozenset(attr for attr in entity["attrs"] if keeps(attr))

    def project(self, entity: Entity) -> Entity:
        """The entity itself when nothing in it is hidden (no copy), else a copy without what is."""
        if not self.projects:
            return entity
        mask = self.mask(entity)
        if mask.everything:
            return entity
        attrs = entity["attrs"]
        hidden = mask.hidden
        if hidden is not None:
            if hidden.isdisjoint(attrs):
                return entity
            return {**entity, "attrs": {k: v for k, v in attrs.items() if k not in hidden}}
        keeps = mask.keeps
        kept = {k: v for k, v in attrs.items() if keeps(k)}
        return entity if len(kept) == len(attrs) else {**entity, "attrs": kept}

    def personal_attrs(self, entity: Entity) -> list[str]:
        """The personal data in an entity as this view returns it (after project)."""
        return self.personal.found_in(entity)


class AttributeMask:
    """The attribute rule of one combination of matching rules (allows, then attribute denies): an
    attribute shows when a matching allow covers it and no matching deny does. `everything`: all
    show; `hidden`: when the combination is a plain deny-list (allows without an allow-list, denies
    with one), the attributes it hides, so an entity is checked with one set operation."""

    __slots__ = ("_known", "allows", "denies", "everything", "hidden")

    def __init__(self, matching: tuple[Rule, ...]) -> None:
        self.allows = tuple(r for r in matching if r.policy.effect == "allow")
        self.denies = tuple(r for r in matching if r.policy.effect != "allow")
        self.everything = not self.denies and any(not a.attribute_limited for a in self.allows)
        self.hidden: frozenset[str] | None = None
        plain_allows = all(a.resources.attrs is None for a in self.allows)
        if self.allows and plain_allows and all(d.resources.attrs is not None for d in self.denies):
            hidden = frozenset.intersection(*(a.resources.except_attrs for a in self.allows))
            for deny in self.denies:
                hidden |= (deny.resources.attrs or frozenset()) - deny.resources.except_attrs
            self.hidden = hidden
        self._known: dict[str, bool] = {}

    def keeps(self, attr: str) -> bool:
        known = self._known.get(attr)
        if known is None:
            known = any(a.covers(attr) for a in self.allows) and not any(d.covers(attr) for d in self.denies)
            if len(self._known) < MASKS:
                self._known[attr] = known
        return known


class Personal:
    """The personal-data markers: reads of these types or attributes are audited."""

    __slots__ = ("attrs", "types")

    def __init__(self, types: Iterable[str] = (), attrs: Iterable[str] = ()) -> None:
        self.types = frozenset(types)
        self.attrs = frozenset(attrs)

    def __bool__(self) -> bool:
        return bool(self.types or self.attrs)

    def found_in(self, entity: Entity) -> list[str]:
        if not self.types and not self.attrs:
            return []
        if not self.types.isdisjoint(entity["type"]):
            return sorted(entity["attrs"])
        return sorted(a for a in entity["attrs"] if a in self.attrs)


class WriteGuard:
    """Checks one write (create, update or delete of one entity) against the write rules, given the
    entity before and after: raises HiddenEntity (404) if the caller cannot read the entity,
    AccessDenied (403) if it can but may not make this change."""

    def __init__(self, read: CompiledView, write: dict[Action, CompiledView]) -> None:
        self.read = read
        self.write = write

    def reveal(self, entity_id: str, before: Entity) -> None:
        if not self.read.visible(before):
            raise HiddenEntity(f"entity {entity_id} does not exist")

    def check(self, entity_id: str, before: Entity | None, after: Entity | None, *, revealed: bool = False) -> None:
        """`revealed`: reveal(before) has been called already (guarded() does, before the change)."""
        if before is not None and not revealed:
            self.reveal(entity_id, before)
        if before is None and after is None:
            return
        action: Action = "create" if before is None else "delete" if after is None else "update"
        view = self.write[action]
        if after is not None and not view.visible(after):
            raise AccessDenied(f"not allowed to {action} entity {entity_id}")
        if before is not None and view is not self.read and not view.visible(before):
            raise AccessDenied(f"not allowed to {action} entity {entity_id}")
        if not view.projects:
            return
        old = before["attrs"] if before is not None else {}
        new = after["attrs"] if after is not None else {}
        # an attribute may change when the rules let it through in the entity before or after; the
        # values are compared only for the attributes they let through in neither
        old_mask = view.mask(before) if before is not None else None
        new_mask = view.mask(after) if after is not None else None
        if (old_mask is not None and old_mask.everything) or (new_mask is not None and new_mask.everything):
            return
        denied = sorted(
            attr
            for attr in old.keys() | new.keys()
            if not (old_mask is not None and attr in old and old_mask.keeps(attr))
            and not (new_mask is not None and attr in new and new_mask.keeps(attr))
            and old.get(attr) != new.get(attr)
        )
        if denied:
            raise AccessDenied(f"not allowed to {action} attribute {denied[0]} of entity {entity_id}")


class PolicyAuthorizer:
    """The Authorizer (policy/decision.py) of --auth required. `replace` swaps the policy set (on a
    change through the API, a file reload or another worker's change) and drops every compiled view."""

    def __init__(self, policies: Sequence[Policy] = (), *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self.version = 0
        self.replace(policies)

    def replace(self, policies: Sequence[Policy], version: int | None = None) -> None:
        rules = [p for p in policies if p.effect != "personal"]
        self._personal = Personal(
            (t for p in policies for t in p.personal_types), (a for p in policies for a in p.personal_attrs)
        )
        # does any policy grant the public something? (auth/middleware.py: if not, no credentials is a 401)
        self.serves_anonymous = any(p.effect == "allow" and p.who.anonymous for p in rules)
        self._unconditional = tuple(p for p in rules if not p.conditions.any)
        self._conditional = tuple(p for p in rules if p.conditions.any)
        self._cache: dict[tuple[Any, ...], tuple[tuple[Policy, ...], tuple[Policy, ...]]] = {}
        self._views: dict[tuple[Any, ...], CompiledView] = {}
        # the view of a (principal id, tenant, action) whose policies have no conditions, and the
        # principal it was made for: a request of the same (cached) principal object takes it with
        # one lookup
        self._ready: dict[tuple[str, str, Action], tuple[Principal, CompiledView]] = {}
        self._guards: dict[tuple[str, str], tuple[Principal, WriteGuard]] = {}
        self.version = version if version is not None else self.version + 1

    @property
    def personal(self) -> Personal:
        return self._personal

    def _applicable(self, principal: Principal, tenant: str, action: Action) -> tuple[tuple[Policy, ...], bool]:
        """The policies that apply now, and whether that can change without a policy change (False:
        some have conditions, on the time of day or the request's purpose)."""
        key = (principal.id, principal.roles, principal.groups, principal.client, principal.tenants, tenant, action)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
                self._views.clear()
                self._ready.clear()
                self._guards.clear()
            base = tuple(p for p in self._unconditional if _applies(p, principal, tenant, action))
            conditional = tuple(p for p in self._conditional if _applies(p, principal, tenant, action))
            cached = self._cache[key] = (base, conditional)
        base, conditional = cached
        if conditional:
            now, purpose = self._clock(), current_purpose.get()
            return base + tuple(p for p in conditional if p.conditions.hold(now, purpose)), False
        return base, True

    def _view(self, principal: Principal, tenant: str, action: Action) -> CompiledView:
        ready = self._ready.get((principal.id, tenant, action))
        if ready is not None and ready[0] is principal:
            return ready[1]
        allowed = principal.may_use_tenant(tenant)
        if not allowed:
            policies: tuple[Policy, ...] = ()
            stable = True
        else:
            policies, stable = self._applicable(principal, tenant, action)
        # the admin's implicit allow holds only in its tenants: the key says whether the view has
        # it (an admin kept out of a tenant must never share the view of one let in)
        admin = principal.is_admin and allowed
        key = (admin, policies)
        view = self._views.get(key)
        if view is None:
            allows = [Rule(p) for p in policies if p.effect == "allow"]
            if admin:
                allows.append(_EVERYTHING_RULE)
            denies = [Rule(p) for p in policies if p.effect == "deny"]
            view = self._views[key] = CompiledView(allows, denies, self._personal, (self.version, key))
        if stable:
            if len(self._ready) >= CACHE_SIZE:
                self._ready.clear()
            self._ready[(principal.id, tenant, action)] = (principal, view)
        return view

    def read_view(self, principal: Principal, tenant: str, action: Action = "read") -> CompiledView:
        return self._view(principal, tenant, action)

    def write_guard(self, principal: Principal, tenant: str) -> WriteGuard:
        ready = self._guards.get((principal.id, tenant))
        if ready is not None and ready[0] is principal:
            return ready[1]
        guard = WriteGuard(
            self._view(principal, tenant, "read"), {a: self._view(principal, tenant, a) for a in WRITE_ACTIONS}
        )
        if not self._conditional:  # no policy has conditions: the guard holds until the policies change
            if len(self._guards) >= CACHE_SIZE:
                self._guards.clear()
            self._guards[(principal.id, tenant)] = (principal, guard)
        return guard

    def allows(self, principal: Principal, action: Action, target: Target) -> bool:
        """A target naming no entity and no type (a tenant-wide resource: "subscription",
        "registration", ...) needs an applicable allow without data constraints and no such deny;
        otherwise the target is judged by its id and types (and, if given, the attributes), as an
        entity with those would be (no location: an area rule does not match)."""
        view = self._view(principal, target.tenant, action)
        if view.nothing:
            return False
        if target.entity_id is None and not target.types:
            unconstrained = any(not a.constrained for a in view.allows)
            return unconstrained and not any(not d.constrained for d in view.entity_denies)
        probe: Entity = {
            "id": target.entity_id or "",
            "type": list(target.types),
            "attrs": {attr: [] for attr in target.attrs},
        }
        if not view.visible(probe):
            return False
        if not target.attrs or not view.projects:
            return True
        keep = view.readable(probe)
        return keep is None or set(target.attrs) <= keep


def _applies(policy: Policy, principal: Principal, tenant: str, action: Action) -> bool:
    if action not in policy.actions:
        return False
    tenants = policy.resources.tenants
    if tenants is not None and tenant not in tenants:
        return False
    return who_matches(policy, principal)


def who_matches(policy: Policy, principal: Principal) -> bool:
    who = policy.who
    if principal.kind == "anonymous":
        return who.anonymous
    if who.authenticated or principal.id in who.ids:
        return True
    if not who.roles.isdisjoint(principal.roles) or not who.groups.isdisjoint(principal.groups):
        return True
    if principal.client is not None and principal.client in who.clients:
        return True
    return bool(who.tenants) and (principal.tenants is None or not who.tenants.isdisjoint(principal.tenants))


def _everything() -> Rule:
    from cityos.policy.model import Conditions, Who

    policy = Policy("(admin)", "allow", Who(), frozenset(ACTIONS), Resources(), Conditions(), {})
    return Rule(policy)


_EVERYTHING_RULE = _everything()
