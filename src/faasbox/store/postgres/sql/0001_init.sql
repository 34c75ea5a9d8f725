-- faasbox PostgreSQL schema, version 1: the schema SQLite has after its migrations 0001-0007
-- (src/faasbox/store/sql/), in one script, plus the tables of multi-server work.
-- Same tables, columns (in SQLite's final order: ALTER TABLE ADD COLUMN appends), primary keys,
-- unique constraints and index names. Types: REAL -> DOUBLE PRECISION, INTEGER -> BIGINT (0/1
-- flags stay integers so one SQL text works on both), BLOB -> BYTEA. Times are epoch seconds.
-- schema_migrations is made by the code that applies this script.

CREATE TABLE functions (
    name            TEXT PRIMARY KEY,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    latest_version  BIGINT NOT NULL
);

CREATE TABLE versions (
    function      TEXT NOT NULL,
    version       BIGINT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    code_sha      TEXT NOT NULL,
    packages_key  TEXT,
    spec          TEXT NOT NULL,
    PRIMARY KEY (function, version)
);

CREATE TABLE invocations (
    id             TEXT PRIMARY KEY,
    function       TEXT NOT NULL,
    version        BIGINT NOT NULL,
    trigger        TEXT NOT NULL,
    started_at     DOUBLE PRECISION NOT NULL,
    duration_ms    DOUBLE PRECISION NOT NULL,
    billed_ms      BIGINT NOT NULL,
    memory_mb      BIGINT NOT NULL,
    gb_s           DOUBLE PRECISION NOT NULL,
    cold_start     BIGINT NOT NULL,
    init_ms        DOUBLE PRECISION,
    status         TEXT NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    peak_rss_mb    DOUBLE PRECISION,
    logs           TEXT NOT NULL DEFAULT '',
    instance_id    TEXT,
    task_id        TEXT,
    trace_id       TEXT
);
CREATE INDEX invocations_by_function ON invocations (function, started_at DESC);
CREATE INDEX invocations_by_time ON invocations (started_at DESC);
CREATE INDEX invocations_by_trace ON invocations (trace_id, started_at)
    WHERE trace_id IS NOT NULL;

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    function         TEXT NOT NULL,
    version          BIGINT,
    status           TEXT NOT NULL,
    event            BYTEA NOT NULL,
    idempotency_key  TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    run_at           DOUBLE PRECISION NOT NULL,
    expires_at       DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION,
    lease_until      DOUBLE PRECISION,
    lease_owner      TEXT,
    result           BYTEA,
    error_code       TEXT,
    error_message    TEXT,
    invocation_ids   TEXT NOT NULL DEFAULT '[]',
    trace_id         TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    -- SQLite 0003
    source           TEXT NOT NULL DEFAULT 'async',
    job_id           TEXT,
    shard_index      BIGINT,
    shard_count      BIGINT,
    trigger_name     TEXT,
    -- SQLite 0006
    priority         BIGINT NOT NULL DEFAULT 0,
    redrive_of       TEXT,
    redriven_to      TEXT,
    workflow_id      TEXT,
    workflow_step    BIGINT
);
-- dedup: one task per (function, key); an old key is released by clearing it
CREATE UNIQUE INDEX tasks_idempotency ON tasks (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- the hot set: only runnable tasks are in this index
CREATE INDEX tasks_runnable ON tasks (function, run_at)
    WHERE status IN ('queued', 'retry_wait');
CREATE INDEX tasks_running ON tasks (lease_until) WHERE status = 'running';
CREATE INDEX tasks_by_function ON tasks (function, created_at DESC);
CREATE INDEX tasks_by_time ON tasks (created_at DESC);
CREATE INDEX tasks_by_job ON tasks (job_id, status) WHERE job_id IS NOT NULL;
CREATE INDEX tasks_by_trace ON tasks (trace_id) WHERE trace_id IS NOT NULL;
-- leasing takes the highest priority first, then the oldest run_at
CREATE INDEX tasks_runnable_priority ON tasks (function, priority DESC, run_at)
    WHERE status IN ('queued', 'retry_wait');
CREATE INDEX tasks_by_workflow ON tasks (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;
CREATE INDEX tasks_by_status ON tasks (status, finished_at);

CREATE TABLE task_policies (
    function   TEXT PRIMARY KEY,
    policy     TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- a cron schedule on a function; fire state is kept here so a restart resumes it
CREATE TABLE triggers (
    function       TEXT NOT NULL,
    name           TEXT NOT NULL,
    spec           TEXT NOT NULL,              -- TriggerSpec JSON
    next_fire_at   DOUBLE PRECISION,           -- the next fire not yet made (NULL: none/disabled)
    last_fire_at   DOUBLE PRECISION,
    last_run       TEXT,                       -- task or job id of the latest fire
    pending_fires  BIGINT NOT NULL DEFAULT 0,  -- fires waiting (overlap = queue)
    fires          BIGINT NOT NULL DEFAULT 0,
    skipped        BIGINT NOT NULL DEFAULT 0,
    created_at     DOUBLE PRECISION NOT NULL,
    updated_at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (function, name)
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    function         TEXT NOT NULL,
    version          BIGINT,
    status           TEXT NOT NULL,     -- running | succeeded | failed | cancelled
    spec             TEXT NOT NULL,     -- JobSpec JSON, without the shard events
    shard_count      BIGINT NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    finished_at      DOUBLE PRECISION,
    reduce_task_id   TEXT,
    result           BYTEA,
    error_code       TEXT,
    error_message    TEXT,
    trace_id         TEXT,
    idempotency_key  TEXT UNIQUE,
    trigger_name     TEXT
);
CREATE INDEX jobs_by_time ON jobs (created_at DESC);
CREATE INDEX jobs_running ON jobs (status) WHERE status = 'running';

-- tenants; every function is named "<tenant>/<name>"
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    weight      DOUBLE PRECISION NOT NULL DEFAULT 1,
    limits      TEXT NOT NULL DEFAULT '{}',
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
-- SQLite's 0004 inserts the default tenant; so does this script
INSERT INTO tenants (name, weight, limits, created_at, updated_at)
    VALUES ('default', 1, '{}', EXTRACT(EPOCH FROM now()), EXTRACT(EPOCH FROM now()));

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    scope        TEXT NOT NULL,
    functions    TEXT,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    revoked_at   DOUBLE PRECISION
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant);

CREATE TABLE audit (
    id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at        DOUBLE PRECISION NOT NULL,
    tenant    TEXT NOT NULL,
    key_id    TEXT,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_tenant ON audit (tenant, at DESC);

-- service groups, named pools of dedicated capacity of a tenant
CREATE TABLE service_groups (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- one row per destination of a finished task (webhook: worked by the delivery loop;
-- function and topic: done when the row is written, kept for GET /v1/tasks/{id}/deliveries)
CREATE TABLE deliveries (
    id           TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    condition    TEXT NOT NULL,      -- success | failure
    position     BIGINT NOT NULL,    -- index in the policy's list for the condition
    kind         TEXT NOT NULL,      -- webhook | function | topic
    target       TEXT NOT NULL,      -- url, function or topic (qualified)
    destination  TEXT NOT NULL,      -- the destination JSON as configured
    body         BYTEA NOT NULL,     -- the record delivered
    status       TEXT NOT NULL,      -- pending | delivered | failed
    attempts     BIGINT NOT NULL DEFAULT 0,
    due_at       DOUBLE PRECISION NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL,
    finished_at  DOUBLE PRECISION,
    last_error   TEXT,
    outcome      TEXT,               -- JSON: what the delivery made (task ids)
    UNIQUE (task_id, condition, position)
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';

CREATE TABLE delivery_attempts (
    delivery_id  TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    at           DOUBLE PRECISION NOT NULL,
    status_code  BIGINT,
    duration_ms  DOUBLE PRECISION NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE webhook_secrets (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE queue_state (
    function    TEXT PRIMARY KEY,
    paused      BIGINT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE topics (
    name        TEXT PRIMARY KEY,    -- <tenant>/<topic>
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE subscriptions (
    topic       TEXT NOT NULL,
    function    TEXT NOT NULL,       -- qualified
    filter      TEXT NOT NULL DEFAULT '{}',
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (topic, function)
);

CREATE TABLE workflow_definitions (
    name        TEXT PRIMARY KEY,    -- <tenant>/<name>
    spec        TEXT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE workflows (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    name          TEXT,
    spec          TEXT NOT NULL,     -- the stages, input excluded
    status        TEXT NOT NULL,     -- running | succeeded | failed | cancelled
    stage         BIGINT NOT NULL DEFAULT 0,
    stage_input   BYTEA NOT NULL,    -- the input of the current stage
    created_at    DOUBLE PRECISION NOT NULL,
    finished_at   DOUBLE PRECISION,
    result        BYTEA,
    error_code    TEXT,
    error_message TEXT,
    trace_id      TEXT,
    failure_task  TEXT,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX workflows_by_tenant ON workflows (tenant, created_at DESC);
CREATE INDEX workflows_running ON workflows (status) WHERE status = 'running';

-- usage rolled up per function (qualified "<tenant>/<name>") and hour (epoch seconds of the
-- hour's start, UTC); upserted by the meter's flush: each column adds up, the peaks take the
-- greater value
CREATE TABLE usage_hours (
    function           TEXT NOT NULL,
    hour               BIGINT NOT NULL,
    invocations        BIGINT NOT NULL DEFAULT 0,
    billed_ms          BIGINT NOT NULL DEFAULT 0,
    gb_s               DOUBLE PRECISION NOT NULL DEFAULT 0,
    duration_ms        DOUBLE PRECISION NOT NULL DEFAULT 0,
    spot_invocations   BIGINT NOT NULL DEFAULT 0,
    spot_gb_s          DOUBLE PRECISION NOT NULL DEFAULT 0,
    cold_starts        BIGINT NOT NULL DEFAULT 0,
    cold_start_ms      DOUBLE PRECISION NOT NULL DEFAULT 0,
    throttles          BIGINT NOT NULL DEFAULT 0,
    memory_mb          BIGINT NOT NULL DEFAULT 0,
    peak_rss_mb        DOUBLE PRECISION NOT NULL DEFAULT 0,
    instances          BIGINT NOT NULL DEFAULT 0,
    loaded_s           DOUBLE PRECISION NOT NULL DEFAULT 0,
    busy_s             DOUBLE PRECISION NOT NULL DEFAULT 0,
    idle_s             DOUBLE PRECISION NOT NULL DEFAULT 0,
    held_s             DOUBLE PRECISION NOT NULL DEFAULT 0,
    loaded_mb_s        DOUBLE PRECISION NOT NULL DEFAULT 0,
    busy_mb_s          DOUBLE PRECISION NOT NULL DEFAULT 0,
    idle_mb_s          DOUBLE PRECISION NOT NULL DEFAULT 0,
    held_mb_s          DOUBLE PRECISION NOT NULL DEFAULT 0,
    cpu_s              DOUBLE PRECISION NOT NULL DEFAULT 0,
    instance_peak_rss_mb DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (function, hour)
);
CREATE INDEX usage_hours_by_hour ON usage_hours (hour);

-- invocations of a function-hour by trigger (sync, task, cron, shard, ...) and status
CREATE TABLE usage_calls (
    function  TEXT NOT NULL,
    hour      BIGINT NOT NULL,
    trigger   TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (function, hour, trigger, status)
);
CREATE INDEX usage_calls_by_hour ON usage_calls (hour);

-- histograms of a function-hour: kind "rss" (an invocation's peak RSS, buckets of 4 MB by
-- their upper edge) and "ms" (duration, buckets by their upper edge in ms)
CREATE TABLE usage_hist (
    function  TEXT NOT NULL,
    hour      BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    bucket    DOUBLE PRECISION NOT NULL,
    n         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (function, hour, kind, bucket)
);
CREATE INDEX usage_hist_by_hour ON usage_hist (hour);

-- multi-server: the servers sharing this database, each heartbeating its row
CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    started_at    DOUBLE PRECISION NOT NULL,
    heartbeat_at  DOUBLE PRECISION NOT NULL,
    url           TEXT,
    info          TEXT NOT NULL DEFAULT '{}'
);

-- code packages by content (sha256 of the zip), shared by every server
CREATE TABLE code_blobs (
    sha         TEXT PRIMARY KEY,
    data        BYTEA NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);
