"""Versioned schema migrations for the PostgreSQL back-end.

Each step runs once, in order, inside one transaction with every other pending step, and is
recorded in schema_version; `cityos db upgrade` applies them, and the server only checks (it never
changes a production schema by itself). Steps are append-only: never edit a released one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cityos.store.postgres.audit import AUDIT_SQL
from cityos.store.postgres.dataspace import DATASPACE_SQL, NONCES_SQL
from cityos.store.postgres.identity import IDENTITY_SQL
from cityos.store.postgres.import_runs import IMPORT_RUNS_SQL
from cityos.store.postgres.policies import POLICY_SQL
from cityos.store.postgres.schema_catalog import CATALOG_SQL
from cityos.store.postgres.schema_temporal import TEMPORAL_SQL
from cityos.store.postgres.snapshots import SNAPSHOT_SQL

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # a connection of its own, or one borrowed from the pool
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]


class SchemaNotCurrent(RuntimeError):
    """The database's schema is not the one this CityOS was built for."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


# Timestamps that are compared as text (normalized UTC, entities/expiry.py) use the "C" collation,
# so ordering is bytewise whatever the database's locale.
_V1 = """
DO $$ BEGIN
    -- PostGIS goes into public when the search_path has it, not into the first schema of the
    -- search_path: a deployment (or a test) in its own schema must not take PostGIS with it
    -- when that schema is dropped
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'postgis') THEN
        IF 'public' = ANY (current_schemas(false)) THEN
            CREATE EXTENSION postgis SCHEMA public;
        ELSE
            CREATE EXTENSION postgis;
        END IF;
    END IF;
END $$;
CREATE TABLE tenants (name text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE entities (
    pk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    doc json NOT NULL,              -- json, not jsonb: the document keeps its attribute order
    types text[] NOT NULL,          -- expanded types, for the GIN-indexed `types && $n`
    attrs text[] NOT NULL,          -- attribute names, for `attrs && $n` and q's exists
    modified_at text COLLATE "C" NOT NULL,
    expires_at text COLLATE "C",    -- the entity's own expiresAt, for exact visibility in SQL
    next_expiry text COLLATE "C",   -- the earliest expiresAt of the entity or any attribute (the sweeper)
    UNIQUE (tenant, id)
);
CREATE INDEX entities_types ON entities USING gin (types);
CREATE INDEX entities_attrs ON entities USING gin (attrs);
CREATE INDEX entities_expiry ON entities (next_expiry) WHERE next_expiry IS NOT NULL;
CREATE TABLE attr_values (          -- the values q compares, flattened as the evaluator sees them
    pk bigint NOT NULL REFERENCES entities ON DELETE CASCADE,
    attr text NOT NULL,
    num double precision,
    txt text
);
CREATE INDEX attr_values_num ON attr_values (attr, num) WHERE num IS NOT NULL;
CREATE INDEX attr_values_txt ON attr_values (attr, txt) WHERE txt IS NOT NULL;
CREATE INDEX attr_values_pk ON attr_values (pk);
CREATE TABLE entity_geo (           -- the bounding box of each GeoProperty instance
    pk bigint NOT NULL REFERENCES entities ON DELETE CASCADE,
    attr text NOT NULL,
    min_x double precision NOT NULL, max_x double precision NOT NULL,
    min_y double precision NOT NULL, max_y double precision NOT NULL,
    box geometry(Geometry, 4326) NOT NULL
);
CREATE INDEX entity_geo_box ON entity_geo USING gist (box);
CREATE INDEX entity_geo_pk ON entity_geo (pk);
CREATE TABLE jsonld_contexts (
    seq bigserial, tenant text NOT NULL, local_id text NOT NULL, kind text NOT NULL, doc json NOT NULL,
    created_at text NOT NULL, PRIMARY KEY (tenant, local_id)
);
"""

# bumped in the transaction that creates, changes or deletes a subscription; a write compares it with
# the version its worker has loaded and reloads first when another worker changed them (store.py)
_V4 = """
CREATE TABLE catalog_versions (name text PRIMARY KEY, version bigint NOT NULL);
INSERT INTO catalog_versions (name, version) VALUES ('subscriptions', 0);
ALTER TABLE subscriptions ADD COLUMN throttled_until timestamptz;  -- throttling decided across workers
"""

_V8 = "ALTER TABLE entity_maps ADD COLUMN owner text;  -- NULL: made with auth off\n"

# The listings' version (store.py, offset anchors): bumped once per transaction that adds or removes
# an entity or changes its types or expiresAt, by a deferred trigger, i.e. at COMMIT, so the row's
# lock is held only while the transaction commits (creates do not queue behind each other's work).
_V9 = """
CREATE TABLE listing_version (id integer PRIMARY KEY CHECK (id = 0), version bigint NOT NULL);
INSERT INTO listing_version VALUES (0, 0);
CREATE FUNCTION listing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('cityos.listing_bumped', true) IS DISTINCT FROM txid_current()::text THEN
        UPDATE listing_version SET version = version + 1 WHERE id = 0;
        PERFORM set_config('cityos.listing_bumped', txid_current()::text, true);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER entities_listed AFTER INSERT OR DELETE ON entities
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION listing_changed();
CREATE CONSTRAINT TRIGGER entities_relisted AFTER UPDATE OF types, expires_at ON entities
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.types IS DISTINCT FROM NEW.types OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)
    EXECUTE FUNCTION listing_changed();
"""

# A box row is a `point` when its attribute's only boxed instance is a 2D Point (side_rows.py
# geo_boxes): min_x/min_y are then its coordinates and a near query tests its distance in SQL. Rows
# already stored are classified from their documents; the partial index finds the other rows fast.
_V10 = """
ALTER TABLE entity_geo ADD COLUMN point boolean NOT NULL DEFAULT false;
UPDATE entity_geo g SET point = true
FROM entities e
WHERE e.pk = g.pk AND g.min_x = g.max_x AND g.min_y = g.max_y
  AND (SELECT count(*) FROM entity_geo o WHERE o.pk = g.pk AND o.attr = g.attr) = 1
  AND EXISTS (
    SELECT 1 FROM json_array_elements(
        CASE WHEN json_typeof(e.doc -> 'attrs' -> g.attr) = 'array' THEN e.doc -> 'attrs' -> g.attr ELSE '[]' END
    ) i
    WHERE CASE WHEN i ->> 'type' = 'GeoProperty' AND json_typeof(i -> 'value') = 'object'
                AND i -> 'value' ->> 'type' = 'Point' AND json_typeof(i -> 'value' -> 'coordinates') = 'array'
          THEN CASE WHEN json_array_length(i -> 'value' -> 'coordinates') = 2
                     AND json_typeof(i -> 'value' -> 'coordinates' -> 0) = 'number'
                     AND json_typeof(i -> 'value' -> 'coordinates' -> 1) = 'number'
                THEN (i -> 'value' -> 'coordinates' ->> 0)::float8 = g.min_x
                     AND (i -> 'value' -> 'coordinates' ->> 1)::float8 = g.min_y
                ELSE false END
          ELSE false END
  );
CREATE INDEX entity_geo_shapes ON entity_geo USING gist (box) WHERE NOT point;
"""

# A write's stored rows, locked (FOR UPDATE), read by a query with a snapshot of its own: a VOLATILE
# function's queries see what committed after the calling statement began, so called after the
# write's advisory entity locks (writes.py _READ) it also sees the rows that writes it waited for
# created, which the statement's own snapshot misses (they were read again by one more statement).
_V11 = """
CREATE FUNCTION entities_for_update(wanted_tenant text, wanted text[])
RETURNS TABLE (pk bigint, id text, doc json) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY SELECT e.pk, e.id::text, e.doc FROM entities e
        WHERE e.tenant = wanted_tenant AND e.id = ANY(wanted) FOR UPDATE;
END $$;
"""

# An update of an entity (a new document, the same types, attributes and expiry) can be HOT only
# when its page has room for the new version: then none of the pk, (tenant, id) and two GIN indexes
# get new entries. At the default fillfactor of 100 no page has room and no update was HOT (a batch
# upsert of 1,000 stored ids added some 15 index entries per entity). 70 leaves room for one ~2 KB
# row version per page, which page pruning frees again. CLUSTER rewrites the stored rows with that
# room (in the upgrade's transaction; it holds the table's exclusive lock while it copies).
_V14 = """
ALTER TABLE entities SET (fillfactor = 70);
CLUSTER entities USING entities_pkey;
"""

# Each box's cell key (store/cell_key.py, the same formula in Python): the Morton code of the zoom-24
# Web Mercator tile of its centre, generated with the row, indexed with the box, so a map tile's
# cluster grid is one index range grouped by a shift (grid.py). The constants are cell_key._spread's.
_V16 = """
CREATE FUNCTION cityos_cell_key(min_x float8, max_x float8, min_y float8, max_y float8)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lat float8 := least(greatest((min_y + max_y) * 0.5, -85.0511287798066), 85.0511287798066);
    s float8 := sin(radians(lat));
    x bigint := least(greatest(floor(((min_x + max_x) * 0.5 + 180.0) / 360.0 * 16777216.0), 0), 16777215);
    y bigint := least(greatest(floor((0.5 - ln((1.0 + s) / (1.0 - s)) / (4.0 * pi())) * 16777216.0), 0), 16777215);
BEGIN
    x := (x | (x << 16)) & 281470681808895;
    x := (x | (x << 8)) & 71777214294589695;
    x := (x | (x << 4)) & 1085102592571150095;
    x := (x | (x << 2)) & 3689348814741910323;
    x := (x | (x << 1)) & 6148914691236517205;
    y := (y | (y << 16)) & 281470681808895;
    y := (y | (y << 8)) & 71777214294589695;
    y := (y | (y << 4)) & 1085102592571150095;
    y := (y | (y << 2)) & 3689348814741910323;
    y := (y | (y << 1)) & 6148914691236517205;
    RETURN x | (y << 1);
END $$;
ALTER TABLE entity_geo ADD COLUMN cell bigint GENERATED ALWAYS AS (cityos_cell_key(min_x, max_x, min_y, max_y)) STORED;
CREATE INDEX entity_geo_cell ON entity_geo (attr, cell) INCLUDE (pk, min_x, max_x, min_y, max_y);
"""

# Each box row carries its entity's first type (entities.types[1], kept by the write path,
# write_plan.py), and the cell index becomes two, by cell then type and by type then cell, so a map
# tile's grid filtered by type, or over a city of several types, is read from an index alone
# (grid.py). The UPDATE rewrites every row: VACUUM entity_geo afterwards, or index-only scans visit
# the heap until autovacuum has been (docs/performance.md).
_V17 = """
ALTER TABLE entity_geo ADD COLUMN type text COLLATE "C";
UPDATE entity_geo g SET type = e.types[1] FROM entities e WHERE e.pk = g.pk;
DROP INDEX entity_geo_cell;
CREATE INDEX entity_geo_cells ON entity_geo (attr, cell) INCLUDE (type, pk, min_x, max_x, min_y, max_y);
CREATE INDEX entity_geo_typed ON entity_geo (attr, type, cell) INCLUDE (min_x, max_x, min_y, max_y);
"""
# named marks of the history (store/temporal_downsample.py): 'downsampled' once a downsampling run
# has folded hours, from when aggregations weight instances by what they stand for
_V19 = "CREATE TABLE temporal_marks (mark text PRIMARY KEY);"
# The numeric q value index carries the entity key, so the entities meeting a q comparison of a
# number are read from the index alone (no heap visit per value, once the table is vacuumed): a map
# tile with a q matches its geo rows to them (grid.py). Same name and predicate, about the same
# size (30 MB for 100,000 parkings). Not the text index: an INCLUDE column turns off B-tree
# deduplication, which its repeated texts need (23 MB, 97 MB with the pk; docs/performance.md).
_V20 = """
DROP INDEX attr_values_num;
CREATE INDEX attr_values_num ON attr_values (attr, num) INCLUDE (pk) WHERE num IS NOT NULL;
"""

# A one-entity write's first statement (writes.py _READ_ONE), cheaper than migration 11's and 3's
# functions, which stay for batches and for the history's own statements:
# - entity_for_update: one id (text, not text[]), so the function's cached generic plan is the
#   unique index probe its custom plan is (PL/pgSQL re-planned entities_for_update's `id = ANY($2)`
#   on every call: its generic estimate is 10 rows). enable_seqscan is off inside it: a plan made
#   while `entities` was empty (a fresh database) would be a sequential scan, and PL/pgSQL keeps a
#   generic plan until the table's statistics change, so the first writes of a bulk load would
#   scan a growing table (the ninth pass saw it with plan_cache_mode = force_generic_plan). With the
#   stored row it reads the entity's temporal pk and types, after the entity lock (which every
#   writer of the temporal entity holds, and which temporal retention respects), so the write's
#   history needs no upsert of its temporal entity (temporal.py history_ctes).
# - temporal_partitions_missing: the retention lock (shared) and the missing partitions, in one
#   catalogue query with a snapshot taken after the locks, without locking each partition by a
#   dynamic LOCK TABLE (parsed on every call). That lock made the backend read the invalidations of
#   a partition attached after the transaction first used temporal_instances; a write's first
#   statement has not used it, and the write statement's first lock of temporal_instances reads them.
_V21 = """
CREATE FUNCTION entity_for_update(wanted_tenant text, wanted text)
RETURNS TABLE (pk bigint, id text, doc json, temporal_pk bigint, temporal_types text[])
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
BEGIN
    RETURN QUERY SELECT e.pk, e.id::text, e.doc, t.pk, t.types FROM entities e
        LEFT JOIN temporal_entities t ON t.tenant = wanted_tenant AND t.id = wanted
        WHERE e.tenant = wanted_tenant AND e.id = wanted FOR UPDATE OF e;
END $$;
CREATE FUNCTION temporal_partitions_missing(names text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    part text;
    found oid;
    missing text[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock_shared(('temporal_instances'::regclass)::oid::bigint + 1099511627776);
    FOREACH part IN ARRAY names LOOP
        SELECT c.oid INTO found FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
        WHERE h.inhparent = 'temporal_instances'::regclass AND c.relname = part;
        IF found IS NULL THEN
            missing := missing || part;
        END IF;
    END LOOP;
    RETURN missing;
END $$;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "entities, their side tables and hosted @contexts", _V1),
    Migration(2, "subscriptions, outbox, workers, registrations, entity maps, ingestion records", CATALOG_SQL),
    Migration(3, "the temporal store, partitioned by time", TEMPORAL_SQL),
    Migration(4, "catalogue versions, and throttling shared by the workers", _V4),
    Migration(5, "credentials: API keys, local users and their sessions", IDENTITY_SQL),
    Migration(6, "access policies, versioned", POLICY_SQL),
    Migration(7, "the audit trail: hash-chained records, their queue, head and signed checkpoints", AUDIT_SQL),
    Migration(8, "entity maps belong to the principal that made them", _V8),
    Migration(9, "the listings' version, which the offset anchors of type listings follow", _V9),
    Migration(10, "geo boxes say whether they are one Point, so near queries are exact in SQL", _V10),
    Migration(11, "a write reads its locked rows in a snapshot taken after its entity locks", _V11),
    Migration(12, "snapshots (spec 5.16): their documents; their entities live in hidden tenants", SNAPSHOT_SQL),
    Migration(13, "the data channel between cities: key, partners, offers, agreements, versioned", DATASPACE_SQL),
    Migration(14, "entities leave room on each page, so an update of a document is HOT", _V14),
    Migration(15, "partners' signed requests: nonces seen and rate buckets, shared by the workers", NONCES_SQL),
    Migration(16, "map cell keys of the geo boxes, generated and indexed (entity_geo.cell)", _V16),
    Migration(17, "map cells by type: the entity's first type in each geo box row, indexed", _V17),
    Migration(18, "import runs with their counts and first rejects (ingest/runs.py)", IMPORT_RUNS_SQL),
    Migration(19, "marks of the history: 'downsampled' once hours are folded (aggregations weight them)", _V19),
    Migration(20, "the numeric q value index includes the entity key (a map tile's q read from it alone)", _V20),
    Migration(21, "a one-entity write's lock and read without re-planning, its temporal pk with it", _V21),
)
LATEST = MIGRATIONS[-1].version
_LOCK = 0x63697479  # pg_advisory_xact_lock key: one upgrader at a time ("city")


def redact(dsn: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def schema_version(connection: Connection) -> int:
    """The applied version (0: a database CityOS has never upgraded), in the search_path's schema."""
    if not await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
        return 0
    version: int = await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    return version


async def upgrade(connection: Connection) -> list[Migration]:
    """Apply the pending steps in one transaction (all or none); returns those applied."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await schema_version(connection)
        if current > LATEST:
            raise SchemaNotCurrent(f"the database has schema version {current}, newer than this CityOS ({LATEST})")
        pending = [m for m in MIGRATIONS if m.version > current]
        for migration in pending:
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
    return pending


async def require_current(connection: Connection, dsn: str) -> None:
    """Refuse to serve a database whose schema is not exactly LATEST, saying what to do."""
    current = await schema_version(connection)
    if current == LATEST:
        return
    if current > LATEST:
        raise SchemaNotCurrent(
            f"{redact(dsn)} has schema version {current}, newer than this CityOS understands ({LATEST}); "
            "upgrade CityOS."
        )
    raise SchemaNotCurrent(
        f"{redact(dsn)} has schema version {current}; this CityOS needs version {LATEST}. "
        f"Run `cityos db upgrade --database {redact(dsn)}` first."
    )
