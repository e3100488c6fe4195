"""Migration 2: the catalogue tables (subscriptions and their outbox, worker liveness, context
source registrations, entity maps, ingestion records). Released steps are never edited.

Listings come back in creation order (the bigserial `pk`); the outbox is delivered in `id` order
per lane. A worker is alive while its `workers.heartbeat` is recent; an outbox row claimed by a
worker that is not alive (or no longer listed) may be claimed again."""

CATALOG_SQL = """
CREATE TABLE subscriptions (
    pk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    doc json NOT NULL,            -- the subscription as subscriptions/model.py stores it
    status json NOT NULL,         -- delivery bookkeeping (timesSent, ...)
    periodic_due timestamptz,     -- the next timeInterval report is owed at; claim_periodic moves it
    UNIQUE (tenant, id)
);
CREATE TABLE workers (              -- the processes serving this database, and when each last spoke
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outbox (               -- notifications owed, written in the transaction of their change
    id bigserial PRIMARY KEY,
    tenant text NOT NULL,
    subscription_id text NOT NULL,
    lane text NOT NULL,             -- rows of a lane are delivered in id order by one worker at a time
    payload json NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    claimed_by text                 -- the worker delivering it (workers.id); NULL: unclaimed
);
-- the claim (postgres/outbox.py): the oldest unclaimed rows; a lane's first row; a lane's first
-- unclaimed row, and its rows claimed by other workers
CREATE INDEX outbox_unclaimed ON outbox (id) WHERE claimed_by IS NULL;
CREATE INDEX outbox_lane ON outbox (lane, id);
CREATE INDEX outbox_lane_unclaimed ON outbox (lane, id) WHERE claimed_by IS NULL;
CREATE INDEX outbox_lane_claimed ON outbox (lane, claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX outbox_subscription ON outbox (tenant, subscription_id);
CREATE TABLE registrations (        -- context source registrations (spec 5.9)
    pk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    doc json NOT NULL,
    UNIQUE (tenant, id)
);
CREATE TABLE entity_maps (          -- spec 5.14
    tenant text NOT NULL,
    id text NOT NULL,
    expires_at text COLLATE "C" NOT NULL,  -- normalized UTC (entity_maps.expiry_key), compared by the sweeper
    entity_ids json NOT NULL,       -- an array, in the order the query returned them
    query text NOT NULL,            -- the query string that selected them
    PRIMARY KEY (tenant, id)
);
CREATE INDEX entity_maps_expiry ON entity_maps (expires_at);
CREATE TABLE ingest_records (       -- IoT Agent service groups and devices
    pk bigserial PRIMARY KEY,
    kind text NOT NULL,
    tenant text NOT NULL,
    key text NOT NULL,
    doc json NOT NULL,
    UNIQUE (kind, tenant, key)
);
CREATE INDEX ingest_records_kind ON ingest_records (kind, pk);
"""
