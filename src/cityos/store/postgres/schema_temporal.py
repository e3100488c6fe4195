"""Migration 3: the temporal store (attribute instances in a time-partitioned table). Released
steps are never edited.

temporal_instances is partitioned BY RANGE on `retained_us`, the instance's retention time in
integer microseconds (observedAt, else modifiedAt, createdAt, deletedAt: the order in which
temporal_purge judges an instance's age), so retention drops whole months. Monthly partitions are
created on demand by temporal.py (CREATE TABLE + ATTACH PARTITION, see there why not PARTITION OF);
there is no DEFAULT partition, which would have to be scanned, or split, whenever a month is added.
An instance with no time at all (it never expires from the store, as on SQLite) goes to
temporal_instances_timeless, keyed at 2**62 (sqlite_temporal.FOREVER) and beyond.

Texts that are ordered or compared (ids, attribute names, datasetIds, kinds, values as JSON text)
use the "C" collation, so ORDER BY, MIN and MAX agree bytewise with SQLite's BINARY collation.
"""

TEMPORAL_SQL = """
CREATE TABLE temporal_entities (
    pk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text COLLATE "C" NOT NULL,
    types text[] NOT NULL,              -- expanded, in the order they were first seen
    UNIQUE (tenant, id)
);
CREATE INDEX temporal_entities_types ON temporal_entities USING gin (types);

CREATE SEQUENCE temporal_instance_pk AS bigint;
CREATE TABLE temporal_instances (
    pk bigint NOT NULL DEFAULT nextval('temporal_instance_pk'),  -- insertion order: ties and "latest"
    epk bigint NOT NULL,                -- temporal_entities.pk: the tenant and entity
    attr text COLLATE "C" NOT NULL,
    dataset text COLLATE "C" NOT NULL DEFAULT '',  -- '' is the default instance
    instance_id text NOT NULL,
    kind text COLLATE "C" NOT NULL,     -- Property, Relationship, ...
    retained_us bigint NOT NULL,        -- the partition key: coalesce(observed, modified, created, deleted)
    observed_us bigint, created_us bigint, modified_us bigint, deleted_us bigint, expires_us bigint,
    num double precision,               -- the value when it is a number
    vtext text COLLATE "C",             -- the value as JSON text
    doc json NOT NULL                   -- the instance without its instanceId, key order kept
) PARTITION BY RANGE (retained_us);
ALTER SEQUENCE temporal_instance_pk OWNED BY temporal_instances.pk;
CREATE INDEX temporal_observed ON temporal_instances (epk, attr, observed_us) WHERE observed_us IS NOT NULL;
CREATE INDEX temporal_created ON temporal_instances (epk, attr, created_us) WHERE created_us IS NOT NULL;
CREATE INDEX temporal_modified ON temporal_instances (epk, attr, modified_us) WHERE modified_us IS NOT NULL;
CREATE INDEX temporal_deleted ON temporal_instances (epk, attr, deleted_us) WHERE deleted_us IS NOT NULL;
CREATE INDEX temporal_series ON temporal_instances (epk, attr, dataset);
CREATE INDEX temporal_instance_ids ON temporal_instances (instance_id);
CREATE TABLE temporal_instances_timeless PARTITION OF temporal_instances
    FOR VALUES FROM (4611686018427387904) TO (MAXVALUE);

-- Called by every writer before it inserts (or moves) instances, with the partitions they go to:
-- holds the retention lock shared until the writer commits (temporal_purge takes it exclusively
-- before dropping a partition, so none goes between this check and the insert) and locks each
-- attached one ROW EXCLUSIVE. Taking that lock makes the backend read the catalogue invalidations
-- it has pending, so a partition attached by another session after this transaction first used
-- temporal_instances is seen by its partition routing (a transaction that already holds its lock
-- on the parent would otherwise route with the old partition list). Returns those not attached.
CREATE FUNCTION temporal_lock_partitions(names text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    part text;
    found oid;
    missing text[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock_shared(('temporal_instances'::regclass)::oid::bigint + 1099511627776);
    FOREACH part IN ARRAY names LOOP
        -- a catalogue query (a fresh snapshot), not to_regclass: that takes no lock, so reads no
        -- invalidations, and may still hold "no such table" from before the partition was made
        SELECT c.oid INTO found FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
        WHERE h.inhparent = 'temporal_instances'::regclass AND c.relname = part;
        IF found IS NULL THEN
            missing := missing || part;
        ELSE
            EXECUTE format('LOCK TABLE %s IN ROW EXCLUSIVE MODE', found::regclass);
        END IF;
    END LOOP;
    RETURN missing;
END
$$;
"""
