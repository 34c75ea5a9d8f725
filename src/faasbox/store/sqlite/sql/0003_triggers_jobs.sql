-- faasbox schema, version 3: cron triggers, sharded jobs, chains and traces.
ALTER TABLE tasks ADD COLUMN source TEXT NOT NULL DEFAULT 'async';
ALTER TABLE tasks ADD COLUMN job_id TEXT;
ALTER TABLE tasks ADD COLUMN shard_index INTEGER;
ALTER TABLE tasks ADD COLUMN shard_count INTEGER;
ALTER TABLE tasks ADD COLUMN trigger_name TEXT;
CREATE INDEX tasks_by_job ON tasks (job_id, status) WHERE job_id IS NOT NULL;
CREATE INDEX tasks_by_trace ON tasks (trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX invocations_by_trace ON invocations (trace_id, started_at)
    WHERE trace_id IS NOT NULL;

-- a cron schedule on a function; fire state is kept here so a restart resumes it
CREATE TABLE triggers (
    function       TEXT NOT NULL,
    name           TEXT NOT NULL,
    spec           TEXT NOT NULL,      -- TriggerSpec JSON
    next_fire_at   REAL,               -- the next fire not yet made (NULL: none/disabled)
    last_fire_at   REAL,
    last_run       TEXT,               -- task or job id of the latest fire
    pending_fires  INTEGER NOT NULL DEFAULT 0,  -- fires waiting (overlap = queue)
    fires          INTEGER NOT NULL DEFAULT 0,
    skipped        INTEGER NOT NULL DEFAULT 0,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    PRIMARY KEY (function, name)
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    function         TEXT NOT NULL,
    version          INTEGER,
    status           TEXT NOT NULL,     -- running | succeeded | failed | cancelled
    spec             TEXT NOT NULL,     -- JobSpec JSON, without the shard events
    shard_count      INTEGER NOT NULL,
    created_at       REAL NOT NULL,
    finished_at      REAL,
    reduce_task_id   TEXT,
    result           BLOB,
    error_code       TEXT,
    error_message    TEXT,
    trace_id         TEXT,
    idempotency_key  TEXT UNIQUE,
    trigger_name     TEXT
);
CREATE INDEX jobs_by_time ON jobs (created_at DESC);
CREATE INDEX jobs_running ON jobs (status) WHERE status = 'running';
