-- the servers that share this store, each with its heartbeat: a task leased by a server whose
-- heartbeat stopped is taken back (on SQLite, one server: a previous run's leases)
CREATE TABLE servers (
    id           TEXT PRIMARY KEY,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    url          TEXT,
    info         TEXT NOT NULL DEFAULT '{}'
);
