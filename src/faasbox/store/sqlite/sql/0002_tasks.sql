-- faasbox schema, version 2: durable async tasks and per-function task policies.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    function         TEXT NOT NULL,
    version          INTEGER,
    status           TEXT NOT NULL,
    event            BLOB NOT NULL,
    idempotency_key  TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    created_at       REAL NOT NULL,
    run_at           REAL NOT NULL,
    expires_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    lease_until      REAL,
    lease_owner      TEXT,
    result           BLOB,
    error_code       TEXT,
    error_message    TEXT,
    invocation_ids   TEXT NOT NULL DEFAULT '[]',
    trace_id         TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
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

CREATE TABLE task_policies (
    function  TEXT PRIMARY KEY,
    policy    TEXT NOT NULL,
    updated_at REAL NOT NULL
);
