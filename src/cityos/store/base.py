"""The storage contract every back-end implements, and the types it speaks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from cityos.audit.chain import AuditRow
from cityos.entities.model import Entity
from cityos.entities.update import Mutator, Outcome
from cityos.errors import NgsiLdError
from cityos.policy.decision import AccessPrefilter
from cityos.query.entity_maps import EntityMap
from cityos.query.pushdown import ValueFilter
from cityos.store.audit_base import AuditStore
from cityos.store.cell_key import KEY_ZOOM
from cityos.store.dataspace_base import DataspaceStore
from cityos.store.identity_base import IdentityStore
from cityos.store.import_runs_base import ImportRunStore
from cityos.store.policy_base import PolicyStore
from cityos.store.snapshot_base import SnapshotStore
from cityos.store.temporal_base import TemporalStore

if TYPE_CHECKING:
    from cityos.query.geo import GeoQuery  # imported lazily: shapely loads only when a geo-query comes


@dataclass(frozen=True, slots=True)
class EntityChange:
    """One committed change, emitted once for subscriptions, history and federation to consume.
    `annotation`: the mutator said the write only annotates what is stored (Outcome.annotation):
    the history records nothing for it; every other listener sees it as any change. Its documents
    are read-only: listeners share them."""

    tenant: str
    entity_id: str
    before: Entity | None
    after: Entity | None
    annotation: bool = False
    # the attributes whose instance lists the write replaced (Outcome.relisted), when every other
    # attribute of `after` is the very list of `before`: the comparisons look at these alone; None: any
    relisted: tuple[str, ...] | None = None


@dataclass(slots=True)
class EntityQuery:
    """What to select. Fields left None do not filter. `predicate` runs on the narrowed candidates
    for the parts of a query that are not pushed into the back-end."""

    types: Sequence[str] | None = None  # any of these expanded types
    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    attrs: Sequence[str] | None = None  # entities having at least one of these attributes
    value_filters: Sequence[ValueFilter] = ()  # sound prefilters taken from q (query/pushdown.py)
    geo_box: tuple[str, tuple[float, float, float, float]] | None = None  # (attr, min_x, max_x, min_y, max_y)
    geo: GeoQuery | None = None  # the geo-query whose box geo_box is, for a back-end that tests it exactly in SQL
    predicate: Callable[[Entity], bool] | None = None
    # `predicate` itself while it is exactly value_filters (query/pushdown.py) and `geo`: a back-end
    # that evaluates every value filter and the geo-query in SQL, over side rows of visible instances
    # only, may page and count there without it. Whoever replaces the predicate (access policies)
    # breaks the identity.
    predicate_in_sql: Callable[[Entity], bool] | None = None
    access: AccessPrefilter | None = None  # the caller's access policy, pushed into SQL (policy/decision.py)
    sort: Callable[[list[Entity]], list[Entity]] | None = None  # orderBy: sorts every match before paging
    limit: int | None = None
    offset: int = 0
    count: bool = False
    # the caller renders through entities/render_cache.py: a back-end may answer with the page's
    # documents in their stored form (QueryResult.stored) instead of decoding them
    stored_form: bool = False


@dataclass(slots=True)
class QueryResult:
    entities: list[Entity]
    total: int | None = None
    has_more: bool = False  # more matches follow this page
    # With EntityQuery.stored_form, a back-end may leave `entities` empty and give the page here, in
    # order: each item the stored bytes of a document that reads as it is (nothing in it expired;
    # `decode` makes a new entity of them each call, which the renderer changes in place, and equal
    # bytes always decode to the same entity), or an
    # entity already decoded (one whose expired parts were removed).
    stored: list[bytes | Entity] | None = None
    decode: Callable[[bytes], Entity] | None = None


@dataclass(frozen=True, slots=True)
class GeoGrid:
    """A box (lon/lat) cut into cols x rows equal cells, for counting the entities whose GeoProperty
    `attr` has its centre in each cell (map clusters, mapdata/tiles.py). With `tile` (z, x, y) set
    and cols = rows = 2^level, z + level <= cell_key.KEY_ZOOM, the box is that Web Mercator tile
    and its cells are the tiles of zoom z + level in it (counted over the rows' cell keys,
    store/cell_key.py); else the cells are equal in degrees."""

    attr: str  # expanded GeoProperty name
    min_x: float
    min_y: float
    max_x: float
    max_y: float
    cols: int
    rows: int
    tile: tuple[int, int, int] | None = None

    def key_level(self) -> int | None:
        """The level of a grid counted by cell keys, or None (cells equal in degrees)."""
        level = self.cols.bit_length() - 1
        if self.tile is None or self.cols != self.rows or self.cols != 1 << level or self.tile[0] + level > KEY_ZOOM:
            return None
        return level


@dataclass(frozen=True, slots=True)
class GridCell:
    """One non-empty cell of a GeoGrid: how many entities, their mean centre and their types."""

    col: int
    row: int  # 0 at min_y
    count: int
    x: float
    y: float
    types: tuple[str, ...]  # expanded, sorted


@dataclass(slots=True)
class StoredContextRow:
    tenant: str
    local_id: str
    kind: str
    document: dict[str, Any]
    created_at: str


@dataclass(slots=True)
class OutboxRow:
    """A notification owed to a subscriber, written in the same transaction as the change that
    caused it, so an acknowledged change is notified even if the process dies right after.
    `lane` orders delivery: rows of one lane are delivered one after another, in id order."""

    tenant: str
    subscription_id: str
    lane: str
    payload: dict[str, Any]
    id: int = 0  # assigned by the store
    attempts: int = 0  # failed delivery attempts so far
    throttling: float = 0.0  # the subscription's throttling, for a store that throttles (throttles_in_store)


@dataclass(slots=True)
class HistoryRow:
    """An attribute instance to append to the temporal store (spec 4.5.7), written in the same
    transaction as the change that caused it; temporal/history.py decides which instances a change makes."""

    tenant: str
    entity_id: str
    types: list[str]  # expanded; unioned into the temporal entity's types
    attr: str  # expanded attribute name (the scope's history is kept under the ngsi-ld:scope IRI)
    instance: dict[str, Any]  # internal instance form, with createdAt/modifiedAt/observedAt/deletedAt


# Called by the store inside its write transaction (on the writer thread) for every change, with a
# lookup of the change's tenant's entities as that transaction sees them (for q paths that follow
# relationships); the rows it returns (notifications owed, history to append) are inserted in the
# same transaction (audit rows are sealed into the chain before the commit). It must be fast.
# Several consumers each install their own, under their own name.
EntityLookup = Callable[[str], Entity | None]
# A StoreEvent returned is sent to the other workers when the write commits (a back-end shared by
# several workers; one that serves a single process ignores it); an AfterCommit is called once the
# write has committed, never when it is rolled back (or its operation undone).
ChangeListener = Callable[
    [EntityChange, EntityLookup], Sequence["OutboxRow | HistoryRow | AuditRow | StoreEvent | AfterCommit"]
]


class SnapshotHook(Protocol):
    """geo_grid's `fixed`: lets its caller tell which committed changes the read's snapshot holds
    (mapdata/kept_cells.py). A back-end whose read runs in a thread of its own takes the snapshot
    inside `hold` (`establish`: the read transaction's first read); one whose snapshot a server
    takes calls `before()` just before sending the statement that takes it and `after(mark)` once
    that statement has answered, then counts in the same snapshot. `hold` and `after` say whether
    the caller could tell: if not, the back-end may take a new snapshot (SNAPSHOT_TRIES in all,
    SNAPSHOT_PAUSE x the try's number apart: a write was committing)."""

    def hold(self, establish: Callable[[], object]) -> bool: ...

    def before(self) -> object: ...

    def after(self, mark: object) -> bool: ...


SNAPSHOT_TRIES = 4
SNAPSHOT_PAUSE = 0.002  # seconds


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """What a change listener wants done once the change is committed (a reader sees it), on the
    thread that committed it: it must be fast and must not raise (the map's kept layer counts,
    mapdata/changes.py, follow committed changes only)."""

    call: Callable[[], None]


@dataclass(slots=True)
class SubscriptionRow:
    tenant: str
    id: str
    document: dict[str, Any]  # the subscription as subscriptions/model.py stores it
    status: dict[str, Any] = field(default_factory=dict)  # delivery bookkeeping (timesSent, ...)


@dataclass(slots=True)
class RegistrationRow:
    tenant: str
    id: str
    document: dict[str, Any]  # the ContextSourceRegistration as registrations.py stores it


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A change another worker made to something workers cache (subscriptions, @contexts, IoT
    provisioning), so each can refresh its copy. Kinds: "subscription" (created, replaced or
    deleted: reload it), "subscription-status" (delivery bookkeeping, in `data`), "context",
    "ingest". A back-end that serves one process only (SQLite) never emits any."""

    kind: str
    tenant: str
    key: str
    data: dict[str, Any] | None = None


EventListener = Callable[[StoreEvent], None]


@dataclass(slots=True)
class MutationResult:
    entity_id: str
    outcome: Outcome | None = None
    error: NgsiLdError | None = None
    change: EntityChange | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EntityTypeStats:
    """What discovery reports about one entity type of a tenant (spec 5.7.7), in expanded IRIs."""

    type: str
    entity_count: int
    attribute_types: dict[str, list[str]]  # attribute IRI -> its attribute types ("Property", ...)


@dataclass(frozen=True, slots=True)
class AttributeStats:
    """What discovery reports about one attribute name of a tenant (spec 5.7.10), in expanded IRIs."""

    attr: str
    instance_count: int  # attribute instances (one per datasetId) carrying this name
    attribute_types: list[str]
    type_names: list[str]


@dataclass(slots=True)
class IngestRecord:
    """A piece of ingestion configuration (an IoT Agent service group or device), kept as a JSON
    document under a key unique per (kind, tenant)."""

    kind: str
    tenant: str
    key: str
    document: dict[str, Any]


class EntityStore(
    TemporalStore, IdentityStore, PolicyStore, AuditStore, SnapshotStore, DataspaceStore, ImportRunStore, Protocol
):
    """Current state, subscriptions, maps and discovery; the temporal methods come from TemporalStore,
    the credentials' from IdentityStore, the policies' from PolicyStore, the audit trail's from AuditStore,
    the snapshots' from SnapshotStore, the data channel's from DataspaceStore, the import runs' from
    ImportRunStore."""

    # True when several workers share the store: the subscription throttling is then decided by the
    # store, in the write transaction (an outbox row with `throttling` is dropped within the period),
    # since no worker sees the others' notifications; False: the matcher throttles in memory
    throttles_in_store: bool

    async def open(self) -> None:
        """Create or migrate the schema and start the connections."""

    async def close(self) -> None: ...

    async def health(self, timeout: float) -> dict[str, bool | str]:
        """The readiness checks of the database (ops/health.py): "database" (reachable within
        `timeout` seconds, schema at this version) and "writer" (what writes go through is alive);
        each True, or why not."""
        ...

    async def tenant_exists(self, tenant: str) -> bool: ...

    def exclusive(self, tenant: str, name: str) -> AbstractAsyncContextManager[None]:
        """A named lock, held while the block runs by one caller at a time in every process that
        shares the database: for a read whose answer decides a write (Open311's duplicate
        detection), so that two callers cannot both decide on the same state. Waiting longer than
        the busy timeout raises DatabaseBusy."""
        ...

    async def refresh_statistics(self) -> None:
        """After a bulk load: bring the query planner's statistics up to date, so the indexes are
        used at once instead of after the next automatic analysis."""

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None: ...

    async def get_stored(self, tenant: str, entity_id: str) -> bytes | Entity | None:
        """get_entity for a caller that renders through entities/render_cache.py: the document's
        stored bytes when nothing in it has expired (`decode_stored` reads them; equal bytes always
        decode to the same entity), else the entity with its expired parts removed."""

    def decode_stored(self, stored: bytes) -> Entity:
        """The entity of a document's stored bytes (get_stored, QueryResult.stored): a new object
        each call, which the caller may change (entities/render.py render_owned renders it in place)."""

    async def mutate(
        self, tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool
    ) -> list[MutationResult]:
        """Apply mutators in one transaction. atomic=True: the first error aborts all and is raised;
        atomic=False: each operation stands alone and failures are returned in its result."""

    async def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult: ...

    async def geo_grid(
        self, tenant: str, query: EntityQuery, grid: GeoGrid, fixed: SnapshotHook | None = None
    ) -> list[GridCell] | None:
        """The entities `query` selects counted per cell of `grid` (an entity whose box meets the
        grid's box counts in the cell of its centre, clamped to the grid), in SQL: never a document
        decoded. None when the query is not exact in SQL (paging.exact_in_sql; a part expired and
        not swept yet counts too): the caller then counts from query_entities. `fixed`: the read's
        snapshot taken as SnapshotHook says, and the counts read in it."""

    def lookup_in_query(self, tenant: str, entity_id: str) -> Entity | None:
        """A synchronous read for predicates that follow relationships (q `rel{attr}`); it is
        only called from inside query_entities, on the store's own reader thread."""

    async def purge_expired(self, now: str) -> list[EntityChange]:
        """Delete entities whose expiresAt has passed (transient entities), and expired entity maps."""

    async def save_context(self, row: StoredContextRow) -> None: ...

    async def delete_context(self, tenant: str, local_id: str) -> None: ...

    async def load_contexts(self) -> list[StoredContextRow]: ...

    # -- subscriptions and their outbox --------------------------------------------------------
    def set_change_listener(
        self, listener: ChangeListener | None, wake: Callable[[], None] | None, *, name: str = "subscriptions"
    ) -> None:
        """Install (None: remove) the listener `name`, called for each change inside the write
        transaction; every installed listener sees every change. `wake` is called (from the writer
        thread) after a commit in which this listener inserted outbox rows."""

    def set_catalog_refresher(self, refresher: Callable[[list[SubscriptionRow]], Awaitable[None]] | None) -> None:
        """Install (None: remove) what takes a fresh list of every subscription. A back-end shared
        by several workers reads the list and awaits the refresher inside a write, before the
        change listeners run, whenever another worker changed the subscriptions since the last
        time: a change is matched against every subscription committed before it, whichever
        worker made either."""

    def set_event_listener(self, listener: EventListener | None) -> None:
        """Install (None: remove) the callback for StoreEvents made by other workers; it is called
        on the event loop. Events are sent when the transaction that caused them commits."""

    async def publish(self, event: StoreEvent) -> None:
        """Tell the other workers of this database (their event listeners hear it; this worker's
        does not): state a feature keeps in each worker's memory, such as the alert rules'. A
        back-end that serves one process only (SQLite) has nobody to tell."""

    async def claim_periodic(self, tenant: str, subscription_id: str, interval: float) -> bool:
        """True if this worker is the one to send the periodic (timeInterval) notification now:
        at most one worker wins per interval, whichever asks first."""

    async def save_subscription(self, row: SubscriptionRow, *, create: bool) -> None:
        """Insert (create=True: AlreadyExists if the id is taken; the tenant is created) or replace."""

    async def get_subscription(self, tenant: str, subscription_id: str) -> SubscriptionRow | None:
        """One stored subscription; None if there is none."""

    async def save_subscription_status(self, row: SubscriptionRow) -> None:
        """Persist only `row.status` (delivery bookkeeping), leaving the stored document as it is."""

    async def delete_subscription(self, tenant: str, subscription_id: str) -> bool:
        """Delete a subscription and its undelivered notifications; False if it did not exist."""

    async def load_subscriptions(self) -> list[SubscriptionRow]:
        """Every subscription of every tenant, in creation order."""

    async def release_outbox(self) -> None:
        """Make every undelivered row claimable again (at startup: their claimant has gone)."""

    async def release_claims(self, ids: Sequence[int]) -> None:
        """Make these rows, claimed by this process and not finished, claimable again (a command
        that stops delivering leaves them to a server)."""

    async def claim_outbox(self, limit: int) -> list[OutboxRow]:
        """Up to `limit` unclaimed rows, oldest first, marked claimed."""

    async def finish_outbox(self, row: OutboxRow, *, done: bool, status: SubscriptionRow | None = None) -> None:
        """done=True deletes the row (delivered, or given up); otherwise its failed attempt count
        (`row.attempts`) is recorded and it stays claimed. `status` persists the subscription's
        delivery bookkeeping in the same transaction."""

    # -- context source registrations (spec 5.9/5.10): per tenant, keyed by id; expiry is the caller's rule --
    async def save_registration(self, row: RegistrationRow, *, create: bool) -> None:
        """Insert (create=True: AlreadyExists if the id is taken; the tenant is created) or replace."""

    async def get_registration(self, tenant: str, registration_id: str) -> RegistrationRow | None:
        """The stored registration, expired or not; None if there is none."""

    async def delete_registration(self, tenant: str, registration_id: str) -> bool:
        """Remove a registration; False if there was none."""

    async def list_registrations(self, tenant: str) -> list[RegistrationRow]:
        """A tenant's registrations, in creation order."""

    def registrations_none(self, tenant: str) -> bool:
        """True when the tenant is known (from memory, without I/O) to have no registration; False
        when it has some or it is not known yet (then list_registrations says)."""

    # -- entity maps (spec 5.14): per tenant, keyed by map id; expired maps are removed by purge_expired --
    async def save_entity_map(self, tenant: str, entity_map: EntityMap) -> None:
        """Store a new map (or replace one with the same id)."""

    async def get_entity_map(self, tenant: str, map_id: str) -> EntityMap | None:
        """The stored map, expired or not (liveness is the caller's rule); None if there is none."""

    async def update_entity_map(
        self, tenant: str, map_id: str, *, expires_at: datetime | None = None, entity_ids: Sequence[str] | None = None
    ) -> bool:
        """Change only the given fields, so a prune and an expiry update cannot undo each other;
        False if there is no map."""

    async def delete_entity_map(self, tenant: str, map_id: str) -> bool:
        """Remove a map; False if there was none."""

    # -- discovery (spec 5.7.5-5.7.10): aggregates over the tenant's current, visible entities --
    async def entity_types(self, tenant: str) -> list[str]:
        """The distinct expanded types of the tenant's entities, sorted."""

    async def entity_type_attributes(self, tenant: str) -> dict[str, list[str]]:
        """Each type -> the sorted attribute names its entities carry (empty list if none)."""

    async def entity_type_stats(self, tenant: str, entity_type: str) -> EntityTypeStats | None:
        """One type's entity count and attribute types; None if no entity has the type."""

    async def attribute_names(self, tenant: str) -> list[str]:
        """The distinct attribute names (top level only) of the tenant's entities, sorted."""

    async def attribute_type_names(self, tenant: str) -> dict[str, list[str]]:
        """Each attribute name -> the sorted types of the entities carrying it."""

    async def attribute_stats(self, tenant: str, attr: str) -> AttributeStats | None:
        """One attribute's instance count, attribute types and entity types; None if unused."""

    # -- ingestion configuration (IoT Agent service groups and devices) --
    async def add_ingest_records(self, rows: Sequence[IngestRecord]) -> None:
        """Insert every row or none: AlreadyExists if one's (kind, tenant, key) is taken."""

    async def delete_ingest_record(self, kind: str, tenant: str, key: str) -> bool:
        """Remove one record; False if there was none."""

    async def load_ingest_records(self, kind: str) -> list[IngestRecord]:
        """Every record of a kind, of every tenant, in insertion order."""
