-- faasbox schema, version 1: functions, versions, invocation records.
CREATE TABLE functions (
    name            TEXT PRIMARY KEY,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    latest_version  INTEGER NOT NULL
);

CREATE TABLE versions (
    function      TEXT NOT NULL,
    version       INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    code_sha      TEXT NOT NULL,
    packages_key  TEXT,
    spec          TEXT NOT NULL,
    PRIMARY KEY (function, version)
);

CREATE TABLE invocations (
    id             TEXT PRIMARY KEY,
    function       TEXT NOT NULL,
    version        INTEGER NOT NULL,
    trigger        TEXT NOT NULL,
    started_at     REAL NOT NULL,
    duration_ms    REAL NOT NULL,
    billed_ms      INTEGER NOT NULL,
    memory_mb      INTEGER NOT NULL,
    gb_s           REAL NOT NULL,
    cold_start     INTEGER NOT NULL,
    init_ms        REAL,
    status         TEXT NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    peak_rss_mb    REAL,
    logs           TEXT NOT NULL DEFAULT '',
    instance_id    TEXT,
    task_id        TEXT,
    trace_id       TEXT
);
CREATE INDEX invocations_by_function ON invocations (function, started_at DESC);
CREATE INDEX invocations_by_time ON invocations (started_at DESC);
