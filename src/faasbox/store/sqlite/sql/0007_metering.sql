-- faasbox schema, version 7: usage rolled up per function (qualified "<tenant>/<name>") and
-- hour (epoch seconds of the hour's start, UTC). Rows are upserted by the meter's flush
-- (metering/rollup.py): each column adds up, the peaks take the greater value.
CREATE TABLE usage_hours (
    function           TEXT NOT NULL,
    hour               INTEGER NOT NULL,
    invocations        INTEGER NOT NULL DEFAULT 0,
    billed_ms          INTEGER NOT NULL DEFAULT 0,
    gb_s               REAL NOT NULL DEFAULT 0,
    duration_ms        REAL NOT NULL DEFAULT 0,
    spot_invocations   INTEGER NOT NULL DEFAULT 0,
    spot_gb_s          REAL NOT NULL DEFAULT 0,
    cold_starts        INTEGER NOT NULL DEFAULT 0,
    cold_start_ms      REAL NOT NULL DEFAULT 0,
    throttles          INTEGER NOT NULL DEFAULT 0,
    memory_mb          INTEGER NOT NULL DEFAULT 0,
    peak_rss_mb        REAL NOT NULL DEFAULT 0,
    instances          INTEGER NOT NULL DEFAULT 0,
    loaded_s           REAL NOT NULL DEFAULT 0,
    busy_s             REAL NOT NULL DEFAULT 0,
    idle_s             REAL NOT NULL DEFAULT 0,
    held_s             REAL NOT NULL DEFAULT 0,
    loaded_mb_s        REAL NOT NULL DEFAULT 0,
    busy_mb_s          REAL NOT NULL DEFAULT 0,
    idle_mb_s          REAL NOT NULL DEFAULT 0,
    held_mb_s          REAL NOT NULL DEFAULT 0,
    cpu_s              REAL NOT NULL DEFAULT 0,
    instance_peak_rss_mb REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (function, hour)
);
CREATE INDEX usage_hours_by_hour ON usage_hours (hour);

-- invocations of a function-hour by trigger (sync, task, cron, shard, ...) and status
CREATE TABLE usage_calls (
    function  TEXT NOT NULL,
    hour      INTEGER NOT NULL,
    trigger   TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (function, hour, trigger, status)
);
CREATE INDEX usage_calls_by_hour ON usage_calls (hour);

-- histograms of a function-hour: kind "rss" (an invocation's peak RSS, buckets of 4 MB by
-- their upper edge) and "ms" (duration, buckets by their upper edge in ms)
CREATE TABLE usage_hist (
    function  TEXT NOT NULL,
    hour      INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    bucket    REAL NOT NULL,
    n         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (function, hour, kind, bucket)
);
CREATE INDEX usage_hist_by_hour ON usage_hist (hour);
