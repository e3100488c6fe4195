"""One declared settings object: every setting has a default, a type, help text and a CITYOS_* variable.

Precedence: CLI flag > environment variable > configuration file (TOML, --config or CITYOS_CONFIG)
> default. The CLI builds its options from this list, so `cityos serve --help`, the README table
and `cityos config show` can never miss a setting.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONFIG_VARIABLE = "CITYOS_CONFIG"  # the configuration file, when no --config is given


def _setting(default: Any, help: str, *, flag: str | None = None, secret: bool = False) -> Any:
    """`secret`: the value may hold credentials (a URL's password), masked by `cityos config show`."""
    return field(default=default, metadata={"help": help, "flag": flag, "secret": secret})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "Address to bind. Loopback by default; use 0.0.0.0 to serve a network.")
    port: int = _setting(1026, "TCP port of the NGSI-LD API.")
    database: str = _setting(
        "cityos.db",
        "SQLite file path, or a postgresql:// URL for PostgreSQL/PostGIS (docs/deployment.md).",
        secret=True,
    )
    workers: int = _setting(1, "Number of server worker processes; more than 1 needs PostgreSQL.")
    worker_timeout: float = _setting(
        10.0, "PostgreSQL: seconds without a heartbeat after which a worker counts as dead and its notifications move."
    )
    auth: str = _setting(
        "off",
        "Authentication and access policies: off (anyone who reaches the port may do anything; refused on a "
        "non-loopback --host without --insecure-open) or required (docs/security.md).",
    )
    insecure_open: bool = _setting(
        False, "Allow --auth off on a non-loopback --host (a deliberate open deployment, e.g. behind a gateway)."
    )
    policy_file: str = _setting(
        "",
        "With --auth required: a YAML or JSON file of access policies, brought into the database at start "
        "and on POST /cityos/v1/admin/policies/reload (docs/security.md).",
    )
    rate_limit: float = _setting(
        0.0,
        "With --auth required: requests per second each principal may make (anonymous callers: per address), "
        "per host (shared by the workers of one server); past it 429 with Retry-After. 0: no limit.",
    )
    rate_limit_burst: int = _setting(20, "Requests a principal may make at once above --rate-limit before 429.")
    user_token_lifetime: float = _setting(
        3600.0, "Seconds a token issued to a local user (POST /cityos/v1/auth/token) stays valid."
    )
    oidc_issuer: str = _setting(
        "",
        "OpenID Connect issuer URL whose bearer JWTs are accepted with --auth required (its JWKS is found through "
        "/.well-known/openid-configuration); empty: no OpenID Connect.",
    )
    oidc_audience: str = _setting("", "The `aud` a JWT must carry (required with --oidc-issuer).")
    oidc_algorithms: str = _setting(
        "RS256,ES256,EdDSA", "Signature algorithms accepted in JWTs (comma list; never none, never HS*)."
    )
    oidc_clock_skew: float = _setting(30.0, "Seconds of clock difference tolerated on exp, nbf and iat.")
    oidc_jwks_refresh: float = _setting(
        3600.0, "Seconds the issuer's JWKS is kept; an unknown kid refetches it sooner (at most every 5 s)."
    )
    oidc_tenant_claim: str = _setting(
        "tenant",
        "JWT claim (dotted path for nested claims) holding the tenant(s) of the caller; absent: the default "
        "tenant only; `*`: every tenant.",
    )
    oidc_roles_claim: str = _setting("roles", "JWT claim (dotted path, e.g. realm_access.roles) holding the roles.")
    oidc_groups_claim: str = _setting("groups", "JWT claim (dotted path) holding the groups.")
    audit: str = _setting(
        "on",
        "Audit trail of writes: on (every entity and temporal write gets a hash-chained record in its own "
        "transaction) or off (admin changes, denied requests and personal-data reads are recorded anyway).",
    )
    audit_key: str = _setting(
        "",
        "Path of the Ed25519 key signing audit checkpoints (made, mode 0600, on first start); empty: "
        "<database file>.audit-key, or ./cityos-audit.key with PostgreSQL (share one path across workers).",
    )
    audit_retention_days: int = _setting(
        0, "Remove audit records older than this many days (a signed truncation record replaces them); 0 keeps all."
    )
    audit_checkpoint_seconds: float = _setting(60.0, "Seconds between signed audit checkpoints (when records came).")
    audit_checkpoint_records: int = _setting(10000, "Sign an audit checkpoint sooner, once this many records came.")
    log_level: str = _setting("info", "Log level: debug, info, warning, error.")
    access_log: bool = _setting(
        False,
        "Log one line per HTTP request (request id, principal, tenant, method, path, route, status, duration) "
        "at INFO; on at --log-level debug anyway.",
    )
    log_format: str = _setting(
        "text",
        "Log format: text (one line per record) or json (one JSON object per line, with the request id of the "
        "request or notification it belongs to; docs/operations.md).",
    )
    metrics: bool = _setting(
        True,
        "Prometheus metrics at /metrics (admin only with --auth required), or on --metrics-port "
        "(docs/operations.md, Metrics).",
    )
    metrics_port: int = _setting(
        0,
        "Serve /metrics on this separate port instead (no authentication: bind it to loopback or a monitoring "
        "network with --metrics-host); 0: on the API port.",
    )
    metrics_host: str = _setting("127.0.0.1", "Address the separate --metrics-port listens on.")
    metrics_interval: float = _setting(
        5.0, "Seconds between samples of the sampled metrics (queue depths, backlogs, memory, event-loop lag)."
    )
    metrics_max_labels: int = _setting(
        50,
        "Distinct subscriptions (and federation partners) given their own metric series; the others are "
        "counted under `other` (bounded cardinality).",
    )
    otlp_endpoint: str = _setting(
        "",
        "OpenTelemetry: OTLP/HTTP endpoint (http://collector:4318/v1/traces) to export a trace span per "
        "request to; empty: no tracing (OpenTelemetry is then not even imported).",
        secret=True,
    )
    cors_origins: str = _setting(
        "",
        "Origins whose browser apps may call the API (comma list, or * for any): CORS headers and preflight "
        "OPTIONS answers; empty: no CORS headers.",
    )
    allow_private_networks: bool = _setting(
        False,
        "Let outgoing requests (remote @contexts, notifications) reach loopback and private addresses.",
    )
    context_preload: str = _setting(
        "",
        "Path of a JSON manifest mapping @context URLs to local files, served without any network access.",
    )
    context_fetch_timeout: float = _setting(5.0, "Seconds allowed to fetch a remote @context.")
    context_max_bytes: int = _setting(1_048_576, "Largest remote @context accepted, in bytes.")
    context_cache_size: int = _setting(256, "How many remote @contexts are kept in the cache.")
    context_failure_ttl: float = _setting(
        30.0, "Seconds a failed remote @context fetch is remembered and answered at once (504) before a new try."
    )
    context_request_budget: float = _setting(
        10.0, "Total seconds one request may spend fetching remote @contexts (504 past it)."
    )
    max_body_bytes: int = _setting(
        16_777_216, "Largest request body accepted, in bytes (413 past it); fits a batch of --max-batch-size entities."
    )
    max_batch_size: int = _setting(
        5000, "Largest number of entities in one batch operation (clients send 2,000-3,000 in one create)."
    )
    max_page_size: int = _setting(1000, "Largest `limit` accepted by a query (spec errors past it).")
    default_page_size: int = _setting(20, "Page size of a query that gives no `limit`.")
    allow_id_only_queries: bool = _setting(
        False,
        "Accept an entity or temporal query that gives only `id` or `idPattern` (clients written against "
        "Orion-LD list their entities that way); off by default: the spec (5.7.2) and ETSI 019_03_05 want a 400.",
    )
    query_timeout: float = _setting(10.0, "Seconds a query may run in the store before it is stopped (403).")
    header_timeout: float = _setting(
        10.0, "Seconds a client has to send a request head, from its connection or the previous answer (408, closed)."
    )
    body_timeout: float = _setting(
        60.0, "Seconds a client has to send a whole request body once its head is in (408, closed; nothing written)."
    )
    keep_alive_timeout: float = _setting(5.0, "Seconds an idle keep-alive connection is kept open.")
    keep_alive_max_requests: int = _setting(
        1000, "Most requests served on one connection; the last answer says Connection: close. 0: no limit."
    )
    max_connections: int = _setting(
        4096,
        "Most open client connections per server process; past it the one idle longest is closed, or, when all "
        "are busy, the newcomer gets a 503 with Retry-After (docs/security.md).",
    )
    db_busy_timeout: float = _setting(
        5.0,
        "Seconds a request waits for the database when another process or connection holds its lock "
        "(PostgreSQL: a row lock, or a pool connection); past it the answer is 503 with Retry-After.",
    )
    durability: str = _setting(
        "normal",
        "What an acknowledged write survives: normal (a killed process; SQLite synchronous=NORMAL, PostgreSQL as "
        "configured) or full (also a power loss; SQLite synchronous=FULL, PostgreSQL synchronous_commit=on).",
    )
    sqlite_writer_cache_mb: int = _setting(
        16,
        "SQLite: MiB of database pages the writer connection keeps (PRAGMA cache_size); its misses are read "
        "from the operating system's file cache (docs/performance.md, issue 15 fourth pass).",
    )
    sqlite_reader_cache_mb: int = _setting(
        4,
        "SQLite: MiB of database pages each reader connection keeps (4 reader threads, the event loop's own "
        "reader and the checkpointer: 6 connections); misses are read from the operating system's file cache.",
    )
    render_cache_mb: int = _setting(
        16,
        "MiB of rendered entities kept per process, for query pages and retrieve by id (keyed by the stored "
        "document, the rendering options and, under access policies, the caller's view, "
        "entities/render_cache.py); 0 renders every answer anew.",
    )
    client_query_share: int = _setting(
        2,
        "Most queries one client (remote address) runs in the store at once, its others wait their turn: "
        "one client cannot take every SQLite reader thread (4) or PostgreSQL connection (10); 0: no limit.",
    )
    max_pattern_length: int = _setting(
        1024, "Longest regular expression (idPattern, q ~=) accepted, in characters (400 past it)."
    )
    max_nesting_depth: int = _setting(
        64,
        "Deepest nesting of arrays and objects accepted in a JSON body (400 past it); orjson's own limit is 1024.",
    )
    core_context: str = _setting("v1.9", "Version of the ETSI core @context applied by default: v1.9 or v1.8.")
    notification_timeout: float = _setting(
        10.0,
        "Seconds allowed for one notification (connect, send, answer), and for one request forwarded"
        " to a context source.",
    )
    notification_max_bytes: int = _setting(
        4_194_304,
        "Largest notification sent, in bytes; a larger one is dropped. Also the largest answer taken"
        " from a context source.",
    )
    notification_max_attempts: int = _setting(
        10, "Delivery attempts per notification before it is given up (the first try included)."
    )
    notification_retry_delay: float = _setting(1.0, "Seconds before the first retry of a failed notification.")
    notification_retry_max_delay: float = _setting(
        300.0, "Cap, in seconds, of the exponential backoff between notification retries."
    )
    entity_map_lifetime: float = _setting(
        3600.0, "Seconds an EntityMap lives when the request gives no entityMapLifetime."
    )
    entity_map_max_lifetime: float = _setting(
        86400.0, "Longest EntityMap lifetime in seconds; longer requested lifetimes and later expiresAt are cut to it."
    )
    snapshot_max_count: int = _setting(
        20,
        "Snapshots (spec 5.16) a tenant may hold at once; a create or clone beyond it evicts the one of lowest"
        " snapshotPriority if lower than its own, else is refused (409).",
    )
    snapshot_max_entities: int = _setting(
        10000,
        "Entities one snapshot may freeze: a create whose query alone selects more locally is refused (403"
        " TooManyResults); a fill whose union (with the context sources) has more ends as failure, keeping nothing.",
    )
    snapshot_max_lifetime: float = _setting(
        0.0,
        "Longest a snapshot lives unused, in seconds (its snapshotLifetime is cut to it, and it is the lifetime of"
        " snapshots that give none); expired snapshots are removed with their data. 0: no server limit.",
    )
    snapshot_fill_beat: float = _setting(
        10.0,
        "Seconds between a running snapshot fill's heartbeats; a snapshot still preparing without one for three"
        " beats (its process stopped) becomes failure and its partial copy is removed. Also how often expired"
        " snapshots are swept.",
    )
    iot_http: bool = _setting(
        True, "Serve the IoT Agent under /iot: service group and device provisioning, HTTP measures (UltraLight, JSON)."
    )
    iot_mqtt_url: str = _setting(
        "",
        "MQTT broker the IoT Agent subscribes to for device measures (mqtt://host:1883); empty: no MQTT.",
        secret=True,
    )
    iot_mqtt_share_group: str = _setting(
        "auto",
        "MQTT shared-subscription group ($share/GROUP/...) in which the workers of this deployment split the"
        " measures. auto: derived from the database (cityos-HASH), so another deployment on the same broker still"
        " receives every measure; none: plain topics; any other name: that group (only for workers of one database).",
    )
    demo_on_empty: bool = _setting(
        False,
        "Load the demo city (`cityos demo`) at start-up when the database has no entities (`make run` sets it),"
        " and its alert rules (docs/indicators.md).",
    )
    indicators_dir: str = _setting(
        "", "Directory of extra indicator files (*.toml, docs/indicators.md) loaded at start beside the shipped set."
    )
    forecasters_dir: str = _setting(
        "",
        "Directory of extra forecaster files (*.toml, docs/indicators.md) loaded at start beside the shipped set.",
    )
    city_profile: str = _setting(
        "",
        "City profile file (TOML: population, area in km², source) that indicators per population or area"
        " divide by (docs/indicators.md); with --demo-on-empty and none given, the demo city's.",
    )
    indicators_interval: float = _setting(
        0.0, "Seconds between scheduled computations of every indicator (docs/indicators.md); 0: on demand only."
    )
    rules_dir: str = _setting(
        "", 'Directory of alert rule files (*.toml, docs/indicators.md "Alert rules") loaded at start.'
    )
    alerts_max_tracked: int = _setting(
        100_000, "At most this many (rule, entity) states and timers kept by the alert rules (memory bound)."
    )
    anomaly_attrs: str = _setting(
        "",
        "Attributes whose numeric readings the anomaly detector watches (comma list of core @context terms or"
        " IRIs; `*`: every numeric Property; empty: off). An anomalous reading gets an `anomaly` sub-property"
        " (docs/indicators.md, Anomaly detection).",
    )
    anomaly_threshold: float = _setting(
        16.0, "Anomaly detector: robust z-score of a reading's step above which the reading is a spike."
    )
    anomaly_stuck_run: int = _setting(
        6,
        "Anomaly detector: identical readings in a row, at least, before a sensor counts as stuck (and more than"
        " twice the series' own longest recent run).",
    )
    anomaly_drift_threshold: float = _setting(
        250.0, "Anomaly detector: CUSUM of the level residual (robust standard deviations) past which a series drifts."
    )
    anomaly_warmup: int = _setting(72, "Anomaly detector: readings of a series before it judges any.")
    anomaly_max_series: int = _setting(
        10000,
        "Anomaly detector: series (entity, attribute, datasetId) kept in memory, 6 KB of doubles each; the least"
        " recently fed is forgotten beyond it.",
    )
    open311_services: str = _setting(
        "",
        "Open311: the services file (TOML: jurisdiction, bounds, services and their attributes, docs/citizens.md);"
        " empty: the demo city's.",
    )
    open311_bounds: str = _setting(
        "",
        "Open311: min lon,min lat,max lon,max lat (WGS84) a report's location must be inside; empty: the services"
        " file's bounds.",
    )
    open311_api_key: str = _setting(
        "required",
        "Open311: required (a report's api_key must be an API key of `cityos keys create`) or optional.",
    )
    open311_rate_limit: float = _setting(
        1.0, "Open311: reports per second one api_key may post (past it 429 in the spec's error shape); 0: no limit."
    )
    open311_rate_limit_burst: int = _setting(30, "Open311: reports one api_key may post at once above the rate.")
    open311_media_dir: str = _setting(
        "",
        "Open311: directory of the reports' photos (share one path across workers); empty: <database file>"
        ".open311-media, or ./cityos-open311-media with PostgreSQL.",
    )
    open311_max_media_bytes: int = _setting(
        5_242_880, "Open311: largest photo accepted with a report, in bytes (413 past it)."
    )
    open311_duplicate_distance: float = _setting(
        25.0,
        "Open311: metres within which an open report of the same service counts as the same problem (linked, counted,"
        " the citizen told); 0: no duplicate detection.",
    )
    open311_duplicate_window: float = _setting(
        604800.0, "Open311: seconds back in which an earlier report can be the same problem (default 7 days)."
    )
    open311_asset_distance: float = _setting(
        50.0,
        "Open311: metres within which a report is linked to the nearest asset of its service's types (refAsset);"
        " 0: no link.",
    )
    tile_max_features: int = _setting(
        500,
        "Map tiles (GET /tiles/{z}/{x}/{y}.mvt): most entities drawn one by one in a tile; a tile holding more"
        " gets the `clusters` layer instead (docs/map-data.md).",
    )
    tile_cluster_cells: int = _setting(
        16, "Map tiles: the clusters layer's grid is this many cells across and down each tile (one point per cell)."
    )
    tile_attrs: str = _setting(
        "availableSpotNumber,totalSpotNumber,pm25,pm10,NO2,height,floorsAboveGround,fillingLevel,temperature,intensity,"
        "status,occupancy,speed",
        "Map tiles: attributes whose values (numbers, booleans, short strings) go into each feature's properties"
        " (comma list of core @context terms or IRIs).",
    )
    tile_max_age: int = _setting(5, "Map tiles: seconds a browser may reuse a tile (Cache-Control: private, max-age).")
    tile_cache_mb: int = _setting(
        64,
        "Map tiles: MiB of rendered tiles kept per worker for callers who may read everything, each dropped when"
        " an entity change touches it (docs/map-data.md). 0: no cache.",
    )
    tile_cache_seconds: float = _setting(
        30.0, "Map tiles: seconds a cached tile is served at most, changed or not (a bound on a missed change)."
    )
    tile_q_views: int = _setting(
        16,
        "Map tiles: q-filtered cluster counts kept per worker (one per tenant, type and q, for tiles of zooms 0-14"
        " and callers who may read everything), read once and followed from each change (docs/map-data.md). 0: off.",
    )
    changes_max_clients: int = _setting(
        100,
        "Change stream (GET /cityos/v1/changes): most clients connected at once per worker; past it 503 with"
        " Retry-After. 0: the stream is off.",
    )
    changes_queue: int = _setting(
        1000,
        "Change stream: events waiting for one client; a client that falls this far behind is dropped with a"
        " last event saying so (writers never wait for a client).",
    )
    changes_keepalive: float = _setting(
        15.0, "Change stream: seconds without an event after which a keep-alive comment is sent."
    )
    catalog_file: str = _setting(
        "",
        "Open-data catalogue file (TOML: the datasets the city publishes, docs/open-data.md) loaded at start;"
        " empty: the demo city's catalogue with --demo-on-empty, else no dataset.",
    )
    open_data_k: int = _setting(
        5, "Published counts (GET /catalog/datasets/{id}/counts) hide every group of fewer than this many entities."
    )
    export_max_rows: int = _setting(
        1_000_000,
        "Most entities one open-data download or `cityos export` may hold; a larger dataset is refused at once"
        " (403 TooManyResults), never cut short.",
    )
    temporal_disabled_tenants: str = _setting(
        "",
        "Tenants whose changes are not recorded as history (comma list; `@default` is the default tenant, `*` all).",
    )
    temporal_retention_days: int = _setting(
        0, "Drop history instances older than this many days (by observedAt, else their system times); 0 keeps all."
    )
    temporal_retention_types: str = _setting(
        "",
        "Per-type history retention, TYPE=DAYS comma list (a bare name is a core @context term, else give the"
        " type's IRI), e.g. WeatherObserved=90; --temporal-retention-days still bounds every type.",
    )
    temporal_downsample: str = _setting(
        "",
        "History downsampling per type, TYPE=DAYS[:hour] comma list (types as in --temporal-retention-types),"
        " e.g. WeatherObserved=90: numeric readings older than DAYS become one hourly mean (with its sample count).",
    )
    temporal_page_size: int = _setting(
        8784,
        "Most attribute instances in one temporal answer, all attributes and entities together (8784: a year "
        "of hourly values of one attribute); past it the answer is 206 with a Content-Range. The ETSI suite's "
        "pagination cases need 21-39 (docs/conformance.md).",
    )
    health_timeout: float = _setting(
        2.0, "Seconds each check of GET /health/ready may take (database, writer) before it counts as failed."
    )
    health_outbox_stuck: float = _setting(
        30.0, "GET /health/ready fails when the notification outbox was not read for this many seconds."
    )
    console: bool = _setting(True, "Serve the web console at / and under /console/ (docs/console.md).")
    console_basemap_url: str = _setting(
        "",
        "Raster basemap tile URL template for the console's map ({z}/{x}/{y}, e.g. an OpenStreetMap tile server you"
        " may use); empty: no request leaves the machine, the map draws the city's own layers on a plain background.",
    )
    console_oidc_client_id: str = _setting(
        "",
        "Client id of the console at the --oidc-issuer (authorization code with PKCE; redirect URI "
        '<console URL>/console/oidc/callback); set: the sign-in page offers "Sign in with" the provider.',
    )
    console_oidc_client_secret: str = _setting(
        "",
        "The console client's secret, for a confidential client (sent with HTTP Basic to the token endpoint, never"
        " logged); empty: a public client, PKCE alone.",
        secret=True,
    )
    console_oidc_name: str = _setting(
        "OpenID Connect", 'The provider\'s name on the sign-in button ("Sign in with ...").'
    )
    console_oidc_scopes: str = _setting(
        "openid",
        "Scopes the console asks for (space separated, openid among them): those that get an access token for"
        " --oidc-audience at your provider.",
    )
    citizen_open311_key: str = _setting(
        "",
        "The API key (cityos keys create) with which the citizens' page (/city/) posts its reports to Open311;"
        " empty: reports carry none, accepted only with --open311-api-key optional (with --demo-on-empty and"
        " --open311-api-key required, the start-up makes one: docs/citizens.md).",
        secret=True,
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, config: str | None = None, **overrides: Any
    ) -> Settings:
        """Settings from the configuration file (`config`, else $CITYOS_CONFIG), then CITYOS_*
        variables, then explicit overrides (e.g. parsed CLI flags)."""
        values = {name: value for name, (value, _source) in resolve(environ, config, overrides).items()}
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.workers > 1 and not self.database.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "workers above 1 need a PostgreSQL database (postgresql://...): a SQLite file is served by one process"
            )
        if self.worker_timeout <= 0:
            raise ValueError("worker_timeout must be positive")
        if any(c in self.iot_mqtt_share_group for c in "/+#"):
            raise ValueError("iot_mqtt_share_group must not contain /, + or #")
        if self.core_context not in ("v1.9", "v1.8"):
            raise ValueError("core_context must be v1.9 or v1.8")
        if self.tile_q_views < 0:
            raise ValueError("tile_q_views must not be negative")
        if self.tile_max_features < 1 or not 1 <= self.tile_cluster_cells <= 256:
            raise ValueError("tile_max_features must be positive and tile_cluster_cells 1-256")
        if self.changes_max_clients < 0 or self.changes_queue < 1 or self.changes_keepalive <= 0:
            raise ValueError("changes_max_clients must not be negative, changes_queue and changes_keepalive positive")
        if self.query_timeout <= 0:
            raise ValueError("query_timeout must be positive")
        if self.db_busy_timeout <= 0:
            raise ValueError("db_busy_timeout must be positive")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1 or self.keep_alive_max_requests < 0:
            raise ValueError("max_connections must be positive and keep_alive_max_requests not negative")
        if self.auth not in ("off", "required"):
            raise ValueError("auth must be off or required")
        if self.rate_limit < 0 or self.rate_limit_burst < 1 or self.user_token_lifetime <= 0:
            raise ValueError("rate_limit must not be negative, rate_limit_burst and user_token_lifetime positive")
        if self.oidc_issuer:
            from cityos.auth.oidc import allowed_algorithms

            allowed_algorithms(self.oidc_algorithms)
            if not self.oidc_issuer.startswith(("https://", "http://")):
                raise ValueError("oidc_issuer must be an http(s) URL")
            if not self.oidc_audience:
                raise ValueError("oidc_issuer needs oidc_audience (the aud your tokens carry for CityOS)")
        if self.console_oidc_client_id and not self.oidc_issuer:
            raise ValueError("console_oidc_client_id needs oidc_issuer (the provider the console signs in with)")
        if self.console_oidc_client_id and "openid" not in self.console_oidc_scopes.split():
            raise ValueError("console_oidc_scopes must include openid")
        if self.oidc_clock_skew < 0 or self.oidc_jwks_refresh <= 0:
            raise ValueError("oidc_clock_skew must not be negative, oidc_jwks_refresh must be positive")
        if self.audit not in ("on", "off"):
            raise ValueError("audit must be on or off")
        if self.audit_retention_days < 0:
            raise ValueError("audit_retention_days must not be negative")
        if self.temporal_retention_types:
            from cityos.temporal.retention import parse_types

            parse_types(self.temporal_retention_types)
        if self.temporal_downsample:
            from cityos.temporal.retention import parse_downsample

            parse_downsample(self.temporal_downsample)
        if self.audit_checkpoint_seconds <= 0 or self.audit_checkpoint_records < 1:
            raise ValueError("audit_checkpoint_seconds and audit_checkpoint_records must be positive")
        if self.durability not in ("normal", "full"):
            raise ValueError("durability must be normal or full")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if not 0 <= self.metrics_port < 65536 or (self.metrics_port and self.metrics_port == self.port):
            raise ValueError("metrics_port must be 0 or a port (1-65535) other than port")
        if self.metrics_interval <= 0 or self.metrics_max_labels < 1:
            raise ValueError("metrics_interval and metrics_max_labels must be positive")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be one of debug, info, warning, error")
        for name in (
            "max_body_bytes",
            "max_batch_size",
            "max_page_size",
            "default_page_size",
            "context_max_bytes",
            "context_cache_size",
            "temporal_page_size",
            "max_pattern_length",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        for name in ("context_fetch_timeout", "context_request_budget", "health_timeout", "health_outbox_stuck"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.sqlite_writer_cache_mb < 1 or self.sqlite_reader_cache_mb < 1:
            raise ValueError("sqlite_writer_cache_mb and sqlite_reader_cache_mb must be at least 1")
        if self.render_cache_mb < 0:
            raise ValueError("render_cache_mb must not be negative")
        if self.client_query_share < 0:
            raise ValueError("client_query_share must not be negative")
        if self.context_failure_ttl < 0:
            raise ValueError("context_failure_ttl must not be negative")
        for name in ("notification_timeout", "notification_retry_delay", "notification_retry_max_delay"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.notification_max_bytes < 1 or self.notification_max_attempts < 1:
            raise ValueError("notification_max_bytes and notification_max_attempts must be positive")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size cannot be larger than max_page_size")
        if self.open_data_k < 1 or self.export_max_rows < 1:
            raise ValueError("open_data_k and export_max_rows must be positive")
        if self.temporal_retention_days < 0:
            raise ValueError("temporal_retention_days must not be negative")
        if not 0 < self.entity_map_lifetime <= self.entity_map_max_lifetime:
            raise ValueError("entity_map_lifetime must be positive and at most entity_map_max_lifetime")
        if self.snapshot_max_count < 0 or self.snapshot_max_entities < 1:
            raise ValueError("snapshot_max_count must not be negative and snapshot_max_entities must be positive")
        if self.open311_api_key not in ("required", "optional"):
            raise ValueError("open311_api_key must be required or optional")
        if self.open311_rate_limit < 0 or self.open311_rate_limit_burst < 1 or self.open311_max_media_bytes < 1:
            raise ValueError("open311_rate_limit must not be negative, its burst and open311_max_media_bytes positive")
        for name in ("open311_duplicate_distance", "open311_duplicate_window", "open311_asset_distance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.snapshot_max_lifetime < 0 or self.snapshot_fill_beat <= 0:
            raise ValueError("snapshot_max_lifetime must not be negative and snapshot_fill_beat must be positive")


def resolve(
    environ: Mapping[str, str] | None = None, config: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, tuple[Any, str]]:
    """Every setting's value and where it came from: flag, env, file (its path) or default."""
    environ = os.environ if environ is None else environ
    path = config if config else environ.get(CONFIG_VARIABLE, "")
    from_file = read_config(path) if path else {}
    found: dict[str, tuple[Any, str]] = {}
    for f in dataclasses.fields(Settings):
        given = (overrides or {}).get(f.name)
        raw = environ.get(env_name(f.name))
        if given is not None:
            found[f.name] = (given, "flag")
        elif raw is not None:
            found[f.name] = (parse_value(f, raw), "env " + env_name(f.name))
        elif f.name in from_file:
            found[f.name] = (from_file[f.name], "file " + path)
        else:
            found[f.name] = (f.default, "default")
    return found


def read_config(path: str) -> dict[str, Any]:
    """The settings of a TOML configuration file: top-level keys named as the settings (snake_case,
    or as their flags without the dashes: max-body-bytes), values of the settings' types."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the configuration file {path} is not valid TOML: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in document.items():
        name = key.replace("-", "_")
        f = fields.get(name)
        if f is None:
            raise ValueError(f"{path}: unknown setting {key!r} (`cityos config show` lists them)")
        kind: type[Any] = type(f.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ValueError(f"{path}: {key} must be a {kind.__name__}, got {type(value).__name__} {value!r}")
        values[name] = value
    return values


def is_secret(name: str) -> bool:
    return bool(Settings.__dataclass_fields__[name].metadata.get("secret"))


def env_name(name: str) -> str:
    return "CITYOS_" + name.upper()


def parse_value(f: dataclasses.Field[Any], raw: str) -> Any:
    kind: type[Any] = type(f.default)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{env_name(f.name)}: expected a boolean, got {raw!r}")
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name(f.name)}: expected {kind.__name__}, got {raw!r}") from exc


def describe() -> list[tuple[str, str, str, Any, str]]:
    """(field, flag, env var, default, help) for every setting: the source of --help and the docs."""
    rows = []
    for f in dataclasses.fields(Settings):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        rows.append((f.name, flag, env_name(f.name), f.default, f.metadata["help"]))
    return rows
