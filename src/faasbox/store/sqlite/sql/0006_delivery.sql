-- faasbox schema, version 6: delivery. Result destinations (webhook deliveries and their
-- attempts), per-tenant webhook secrets, topics and subscriptions, workflows, paused queues,
-- and on tasks: a priority, redrive links and the workflow a task belongs to.
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN redrive_of TEXT;
ALTER TABLE tasks ADD COLUMN redriven_to TEXT;
ALTER TABLE tasks ADD COLUMN workflow_id TEXT;
ALTER TABLE tasks ADD COLUMN workflow_step INTEGER;
-- leasing takes the highest priority first, then the oldest run_at
CREATE INDEX tasks_runnable_priority ON tasks (function, priority DESC, run_at)
    WHERE status IN ('queued', 'retry_wait');
CREATE INDEX tasks_by_workflow ON tasks (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;
CREATE INDEX tasks_by_status ON tasks (status, finished_at);

-- one row per destination of a finished task (webhook: worked by the delivery loop;
-- function and topic: done when the row is written, kept for GET /v1/tasks/{id}/deliveries)
CREATE TABLE deliveries (
    id           TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    condition    TEXT NOT NULL,      -- success | failure
    position     INTEGER NOT NULL,   -- index in the policy's list for the condition
    kind         TEXT NOT NULL,      -- webhook | function | topic
    target       TEXT NOT NULL,      -- url, function or topic (qualified)
    destination  TEXT NOT NULL,      -- the destination JSON as configured
    body         BLOB NOT NULL,      -- the record delivered
    status       TEXT NOT NULL,      -- pending | delivered | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       REAL NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    finished_at  REAL,
    last_error   TEXT,
    outcome      TEXT,               -- JSON: what the delivery made (task ids)
    UNIQUE (task_id, condition, position)
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';

CREATE TABLE delivery_attempts (
    delivery_id  TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    at           REAL NOT NULL,
    status_code  INTEGER,
    duration_ms  REAL NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE webhook_secrets (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE queue_state (
    function    TEXT PRIMARY KEY,
    paused      INTEGER NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE topics (
    name        TEXT PRIMARY KEY,    -- <tenant>/<topic>
    created_at  REAL NOT NULL
);
CREATE TABLE subscriptions (
    topic       TEXT NOT NULL,
    function    TEXT NOT NULL,       -- qualified
    filter      TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    PRIMARY KEY (topic, function)
);

CREATE TABLE workflow_definitions (
    name        TEXT PRIMARY KEY,    -- <tenant>/<name>
    spec        TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE workflows (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    name          TEXT,
    spec          TEXT NOT NULL,     -- the stages, input excluded
    status        TEXT NOT NULL,     -- running | succeeded | failed | cancelled
    stage         INTEGER NOT NULL DEFAULT 0,
    stage_input   BLOB NOT NULL,     -- the input of the current stage
    created_at    REAL NOT NULL,
    finished_at   REAL,
    result        BLOB,
    error_code    TEXT,
    error_message TEXT,
    trace_id      TEXT,
    failure_task  TEXT,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX workflows_by_tenant ON workflows (tenant, created_at DESC);
CREATE INDEX workflows_running ON workflows (status) WHERE status = 'running';
